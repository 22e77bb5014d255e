/*
 * linger.h - lingering close for the HTTP server's connections: a client
 * still sending when the server closes (an early answer such as a 413 from
 * Content-Length) reads that answer instead of a reset.
 */
#ifndef EPS_LINGER_H
#define EPS_LINGER_H

#include <event2/event.h>
#include <event2/http.h>
#include <stddef.h>

struct linger_pool;

/* Closed sockets are drained for at most ms milliseconds and max_bytes bytes;
 * at most max_socks at once (beyond that a socket closes at once). Never NULL;
 * when this libevent does not allow the hook, lingering is off (logged). */
struct linger_pool *linger_new(struct event_base *base, unsigned ms, size_t max_bytes,
                          unsigned max_socks);
/* Closes every lingering socket. Call after the evhttp servers are freed. */
void linger_free(struct linger_pool *l);
/* From evhttp's close callback (the socket is still open): lingers on the
 * socket if its client has not closed its side. */
void linger_closed(struct linger_pool *l, struct evhttp_connection *evcon);
/* Sockets lingering now. */
unsigned linger_count(const struct linger_pool *l);

#endif
