/*
 * httpc.h - HTTP client on the event loop: libcurl's multi interface driven
 * by libevent (curl's hiperfifo pattern). No thread, no blocking call.
 * Connections are kept alive and reused by the multi handle.
 */
#ifndef EPS_HTTPC_H
#define EPS_HTTPC_H

#include <curl/curl.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "util.h"

#define HTTPC_MAX_BODY (16u << 20)

struct httpc_resp {
        CURLcode rc;             /* CURLE_OK, a transport error, or CURLE_ABORTED_BY_CALLBACK at shutdown */
        long status;             /* HTTP status, 0 without a response */
        const char *body;        /* NUL-terminated, borrowed for the callback */
        size_t len;
        long retry_after_s;      /* Retry-After in seconds, -1 if absent */
        const char *request_id;  /* x-ep-request-uuid, "" if absent */
        const char *error;       /* curl's message when rc != CURLE_OK */
        uint64_t answered_us;    /* CLOCK_MONOTONIC when the answer's first line was read, 0 if none */
};

/* Called once per request from a loop callback, never from inside curl. */
typedef void (*httpc_done_fn)(const struct httpc_resp *r, void *arg);

struct httpc;

struct httpc *httpc_new(struct event_base *base, const char *user_agent);
/* Cancels what is in flight (their callbacks run with CURLE_ABORTED_BY_CALLBACK). */
void httpc_free(struct httpc *h);
/* GET url with HTTP Basic auth (user, empty password) when user is not NULL.
 * Copies every string. -1 if the request could not be started (fn not called). */
MUST_CHECK int httpc_get(struct httpc *h, const char *url, const char *user, long connect_ms,
                         long total_ms, httpc_done_fn fn, void *arg);
/* The same with another method ("PATCH", ...) and an optional JSON body
 * (sent with Content-Type: application/json and its Content-Length). */
MUST_CHECK int httpc_request(struct httpc *h, const char *method, const char *url, const char *json,
                             const char *user, long connect_ms, long total_ms, httpc_done_fn fn,
                             void *arg);
unsigned httpc_active(const struct httpc *h);

#define HTTPC_RETRY_AFTER_MAX 86400L /* a longer Retry-After is read as this */
/* A Retry-After header value: delay-seconds or an HTTP-date (then the seconds
 * from now, 0 if past). Never more than HTTPC_RETRY_AFTER_MAX; -1 when it is
 * neither (absent, negative, garbage). */
long httpc_retry_after(const char *value, time_t now);

#endif
