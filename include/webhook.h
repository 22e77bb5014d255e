/*
 * webhook.h - POST <webhook_path>: checks in the documented order (405, 413
 * by evhttp, 415, 401, 400, 503), then hands the event to ingest and replies
 * only when its transaction has committed (or 503 when it cannot).
 */
#ifndef EPS_WEBHOOK_H
#define EPS_WEBHOOK_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>

#include "metrics.h"
#include "sig.h"

struct ingest;
struct uuid7_gen;
struct webhook;

/* What the handler needs of the configuration; strings are copied, keys borrowed until the next reload. */
struct webhook_settings {
        const char *path;                 /* webhook_path */
        long request_timeout;             /* seconds an event may wait for its commit */
        const char *basic_auth_user;      /* "" = no basic auth */
        const char *basic_auth_password;
        const struct sig_keyset *keys;    /* the webhook secrets */
};

/* Counters for /metrics and system_metrics. */
struct webhook_stats {
        uint64_t rejected_sig, rejected_parse, rejected_auth;
        uint64_t sig_matches[SIG_MAX_KEYS];
        struct latency_hist ack;        /* receipt to answer, whole run */
        struct latency_hist ack_window; /* since webhook_take_ack_window */
};

/* The handler; ingest and uuid are borrowed. */
struct webhook *webhook_new(struct event_base *base, struct ingest *ingest, struct uuid7_gen *uuid,
                            const struct webhook_settings *st);
/* New settings (SIGHUP). */
void webhook_reload(struct webhook *w, const struct webhook_settings *st);
/* Draining: new events get 503 "shutting down". */
void webhook_stop(struct webhook *w);
/* Frees; after ingest has answered every item (ingest_close). */
void webhook_free(struct webhook *w);
/* The evhttp handler; arg = the webhook. */
void webhook_cb(struct evhttp_request *req, void *arg);
/* Fills the counters. */
void webhook_snapshot(const struct webhook *w, struct webhook_stats *out);
/* Moves the ack latencies seen since the last call into out. */
void webhook_take_ack_window(struct webhook *w, struct latency_hist *out);
/* Appends the ack latency, signature and rejection metrics to b. */
void webhook_render_metrics(const struct webhook *w, struct strbuf *b);

#endif
