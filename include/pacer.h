/*
 * pacer.h - every EasyPost API request goes through one pacer over httpc:
 * at most `concurrency` in flight and `rate` per second, a 429 pauses every
 * request for its Retry-After (capped at max_retry_after), and a 401/403
 * stops all requests until the key changes (pacer_reload).
 */
#ifndef EPS_PACER_H
#define EPS_PACER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

#include "httpc.h"

struct pacer;
struct strbuf;

/* What the pacer needs of the configuration; strings are copied. */
struct pacer_settings {
        const char *api_url;  /* base, e.g. https://api.easypost.com/v2 */
        const char *api_key;  /* "" = no API access: pacer_enabled() is false */
        long rate;            /* requests per second, >= 1 */
        long concurrency;     /* requests in flight, >= 1 */
        long timeout_s;       /* whole request */
        long max_retry_after; /* cap on any Retry-After, seconds */
};

/* Counters and gauges for /metrics and system_metrics. */
struct pacer_stats {
        uint64_t requests_by_class[6]; /* [0] transport errors, [2] 2xx .. [5] 5xx */
        unsigned in_flight, queued;
        bool enabled, auth_failed;
};

/* The owner's answer: exactly once per pacer_get. r->rc is CURLE_ABORTED_BY_CALLBACK when
 * the request was not answered (dropped after a 401/403, or cancelled at pacer_free);
 * r->retry_after_s is already capped at max_retry_after. */
typedef void (*pacer_fn)(const struct httpc_resp *r, void *arg);

/* A pacer with its own httpc on base. */
struct pacer *pacer_new(struct event_base *base, const struct pacer_settings *st);
/* Cancels queued and in-flight requests (their callbacks run), then frees. */
void pacer_free(struct pacer *p);
/* New settings (SIGHUP); a key rejected before gets one more try. */
void pacer_reload(struct pacer *p, const struct pacer_settings *st);
/* Stops sending (drain); what is queued waits for pacer_free. */
void pacer_stop(struct pacer *p);
/* Queues GET url (taken over) for fn; never calls fn before it returns. */
void pacer_get(struct pacer *p, char *url, pacer_fn fn, void *arg);
/* The same with method "GET" or "PATCH" and an optional JSON body (copied). */
void pacer_request(struct pacer *p, const char *method, char *url, const char *json, pacer_fn fn,
                   void *arg);
/* api_url + fmt with a1, a2 (URL-escaped) in its two %s; caller frees. */
char *pacer_url(const struct pacer *p, const char *fmt, const char *a1, const char *a2);
/* An API key is configured. */
bool pacer_enabled(const struct pacer *p);
/* True after a 401/403 from the API, until pacer_reload. */
bool pacer_auth_failed(const struct pacer *p);
/* Fills the counters. */
void pacer_snapshot(const struct pacer *p, struct pacer_stats *out);
/* Appends the API request metrics to b. */
void pacer_render_metrics(const struct pacer *p, struct strbuf *b);

#endif
