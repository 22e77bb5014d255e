/*
 * http.h - the evhttp server: listeners, limits, the connection cap, the
 * routes its owner registers, and the reply helpers every handler uses
 * (JSON error bodies, Retry-After, the answer counters).
 */
#ifndef EPS_HTTP_H
#define EPS_HTTP_H

#include <event2/http.h>
#include <stdbool.h>

#include "cfg.h"
#include "metrics.h"
#include "util.h"

struct http;

/* The webhook listener, or the ops one (metrics_listen; the webhook one when it is not set). */
enum http_server { HTTP_MAIN, HTTP_OPS };

/* Counters for /metrics and system_metrics. */
struct http_stats {
        uint64_t requests[EP_COUNT][6]; /* answers by status class: [1] = 1xx .. [5] = 5xx */
        unsigned long pauses;           /* times max_connections paused accepting */
        unsigned connections;           /* client connections open now */
};

typedef void (*http_handler_fn)(struct evhttp_request *req, void *arg);

/* Listens as c says (listen, metrics_listen, TLS, limits); c is not kept. */
MUST_CHECK struct http *http_new(struct event_base *base, const struct cfg *c, struct err *e);
/* Closes the listeners and every connection (their close callbacks run), then frees. */
void http_free(struct http *h);
/* Routes path on a server to fn; -1 if the path is taken. */
int http_route(struct http *h, enum http_server which, const char *path, http_handler_fn fn, void *arg);
/* Stops accepting new connections (drain). */
void http_stop_accepting(struct http *h);
/* Port actually bound for the webhook listener (useful with port 0). */
unsigned http_port(const struct http *h);
/* Fills the counters (h may be NULL: the answer counters only). */
void http_snapshot(const struct http *h, struct http_stats *out);
/* Appends the HTTP metrics to b. */
void http_render_metrics(const struct http *h, struct strbuf *b);

/* evhttp routes on the percent-decoded path, so "/healthz%00x" reaches the
 * /healthz handler: handlers check the raw path with this. */
bool http_path_exact(struct evhttp_request *req, const char *path);

/* Sends body (may be NULL) as application/json with status code. */
void http_reply_json(struct evhttp_request *req, enum metrics_endpoint ep, int code,
                     const char *json);
/* Sends a 200 with data as content_type. */
void http_reply_text(struct evhttp_request *req, enum metrics_endpoint ep, const char *content_type,
                     const char *data, size_t len);
/* Counts an answer given without the helpers above. */
void http_count(enum metrics_endpoint ep, int code);
/* {"error": msg}; 503 also gets Retry-After. msg must be plain ASCII without quotes. */
void http_reply_error(struct evhttp_request *req, enum metrics_endpoint ep, int code,
                      const char *msg);

#endif
