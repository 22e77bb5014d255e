/*
 * sync.h - the sync worker: fetches shipments and trackers named by
 * sync_jobs from the EasyPost API, and backfills events that webhooks missed.
 * Runs only with an API key. Every API request goes through one pacer:
 * at most api_concurrency in flight and api_rate started per second.
 */
#ifndef EPS_SYNC_H
#define EPS_SYNC_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct app;
struct sync;
struct httpc_resp;

struct sync_stats {
        uint64_t requests_by_class[6]; /* [0] transport errors, [2] 2xx .. [5] 5xx */
        uint64_t jobs_done, jobs_retried, jobs_failed;
        uint64_t backfill_runs, backfill_events, backfill_recovered;
        uint64_t backfill_unusable; /* bodies that did not parse or named another event */
};

struct sync *sync_new(struct app *a);
void sync_start(struct sync *s);
/* Stops timers and new requests (drain); requests in flight finish or are cancelled at free. */
void sync_stop(struct sync *s);
void sync_free(struct sync *s);
/* New API key, rates or intervals (SIGHUP): a rejected key is tried again. */
void sync_reload(struct sync *s);
/* The jobs connection came up: claim due jobs now. */
void sync_conn_ready(struct sync *s);

/* An API request of another module through the same pacer (rate, concurrency,
 * a 401/403 stops every API request): method "GET" or "PATCH", path below
 * api_url (escaped), json the body or NULL. fn runs once, from the loop, also
 * with rc CURLE_ABORTED_BY_CALLBACK when the request is dropped at a stop.
 * -1 (fn not called) when the API is off: no key, stopping or key rejected. */
typedef void (*sync_api_fn)(const struct httpc_resp *r, void *arg);
MUST_CHECK int sync_api_request(struct sync *s, const char *method, const char *path,
                                const char *json, sync_api_fn fn, void *arg);
/* Starts a backfill run now (after the one in progress, if any), whatever
 * backfill_interval says. */
void sync_backfill_now(struct sync *s);

unsigned sync_in_flight(const struct sync *s);
bool sync_enabled(const struct sync *s);
/* True after a 401/403 from the API, until the key changes. */
bool sync_auth_failed(const struct sync *s);
const struct sync_stats *sync_stats(const struct sync *s);

#endif
