/*
 * http.h - the evhttp server: listeners, limits, routing, and the reply
 * helpers every handler uses (JSON error bodies, Retry-After, metrics).
 */
#ifndef EPS_HTTP_H
#define EPS_HTTP_H

#include <event2/http.h>
#include <stdbool.h>

#include "metrics.h"
#include "util.h"

struct app;
struct http;

MUST_CHECK struct http *http_new(struct app *a, struct err *e);
void http_free(struct http *h);
/* Stops accepting new connections (drain). */
void http_stop_accepting(struct http *h);
/* Port actually bound for the webhook listener (useful with port 0). */
unsigned http_port(const struct http *h);
/* How often max_connections paused the listeners. */
unsigned long http_pauses(const struct http *h);

/* evhttp routes on the percent-decoded path, so "/healthz%00x" reaches the
 * /healthz handler: handlers check the raw path with this. */
bool http_path_exact(struct evhttp_request *req, const char *path);

/* Sends body (may be NULL) as application/json with status code. */
void http_reply_json(struct evhttp_request *req, enum metrics_endpoint ep, int code,
                     const char *json);
/* {"error": msg}; 503 also gets Retry-After. msg must be plain ASCII without quotes. */
void http_reply_error(struct evhttp_request *req, enum metrics_endpoint ep, int code,
                      const char *msg);

#endif
