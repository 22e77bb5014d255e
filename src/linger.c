/*
 * linger.c - lingering close for the HTTP server's connections.
 *
 * evhttp answers some requests before it has read their body: a 413 decided
 * from Content-Length, a 400 for a broken head. It then closes the socket,
 * and closing a TCP socket with unread data makes the kernel send a reset:
 * a client still sending its body gets "connection reset" instead of the
 * answer waiting for it. So when evhttp closes a connection whose client
 * has not closed its side, the socket is kept open: evhttp has already
 * shut down the writing side (the client sees the answer, then end of
 * file), and what still arrives is read and discarded until the client
 * closes, or `ms` have passed, or `max_bytes` were discarded. Then it is
 * closed. At most max_socks sockets linger at once; beyond that a socket
 * closes at once, as without lingering.
 *
 * libevent 2.1.12's own EVHTTP_SERVER_LINGERING_CLOSE does not serve: it
 * reads and discards the whole declared body before it answers at all, so
 * a client that waits for the answer before sending (Expect-like clients,
 * the hostile test's "head only" row) never gets one, and the amount it
 * reads is bounded by nothing but the declared length and idle_timeout.
 *
 * The hook: evhttp tells about a close only through
 * evhttp_connection_set_closecb, called while the socket is still open;
 * http.c sets that callback on every connection (it counts them for the
 * connection cap) and calls linger_closed from it. linger_new checks once,
 * on a probe connection, that evhttp builds its connections the way http.c
 * relies on (the connection is its bufferevent's callback argument); if
 * not, lingering stays off. linger_closed duplicates the socket: evhttp's
 * close of its descriptor then leaves the socket open for the drain.
 */
#include "linger.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define LINGER_READ_BYTES 65536

struct sock {
        struct linger_pool *l;
        evutil_socket_t fd; /* our duplicate of evhttp's descriptor */
        struct event *ev;
        uint64_t start_us;
        size_t drained;
        struct sock *prev, *next;
};

struct linger_pool {
        struct event_base *base;
        unsigned ms, max_socks;
        size_t max_bytes;
        bufferevent_event_cb evhttp_eventcb; /* NULL: lingering is off */
        struct sock *socks;
        unsigned nsocks;
        unsigned long refused;
};

/* The event callback evhttp puts on its connections' bufferevents, with the
 * connection as argument; NULL when this libevent does it otherwise. */
static bufferevent_event_cb
evhttp_eventcb_probe(struct event_base *base)
{
        struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
        struct evhttp_connection *c = NULL;
        bufferevent_event_cb ecb = NULL;
        void *arg = NULL;

        if (bev != NULL)
                c = evhttp_connection_base_bufferevent_new(base, NULL, bev, "127.0.0.1", 9);
        if (c == NULL) {
                if (bev != NULL)
                        bufferevent_free(bev);
                return NULL;
        }
        bufferevent_getcb(bev, NULL, NULL, &ecb, &arg);
        evhttp_connection_free(c); /* frees bev */
        return arg == c ? ecb : NULL;
}

static void
sock_close(struct sock *s)
{
        struct linger_pool *l = s->l;

        if (s->prev)
                s->prev->next = s->next;
        else
                l->socks = s->next;
        if (s->next)
                s->next->prev = s->prev;
        l->nsocks--;
        event_free(s->ev);
        evutil_closesocket(s->fd);
        free(s);
}

/* Waits for the next bytes until the time bound; false once it has passed. */
static bool
sock_arm(struct sock *s)
{
        uint64_t end = s->start_us + (uint64_t)s->l->ms * 1000u, now = clock_mono_us();

        if (now >= end)
                return false;
        struct timeval tv = { (time_t)((end - now) / 1000000u),
                              (suseconds_t)((end - now) % 1000000u) };
        return event_add(s->ev, &tv) == 0;
}

static void
sock_cut(struct sock *s, const char *why)
{
        log_info("http", "lingering close: client still sending after %zu bytes (%s): closed",
                 s->drained, why);
        sock_close(s);
}

/* Reads and discards; ends at the client's end of file or error, or at a bound. */
static void
sock_drain_cb(evutil_socket_t fd, short what, void *arg)
{
        struct sock *s = arg;
        static char sink[LINGER_READ_BYTES];

        if (what & EV_TIMEOUT) {
                sock_cut(s, "time bound");
                return;
        }
        ssize_t r = recv(fd, sink, sizeof(sink), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                sock_close(s);
                return;
        }
        if (r > 0)
                s->drained += (size_t)r;
        if (s->drained >= s->l->max_bytes)
                sock_cut(s, "size bound");
        else if (!sock_arm(s))
                sock_cut(s, "time bound");
}

/* True while the client may still send: it has neither closed nor reset. */
static bool
peer_open(evutil_socket_t fd)
{
        char c;
        ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

        return r > 0 || (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

static void
sock_start(struct linger_pool *l, evutil_socket_t fd)
{
        struct sock *s;
        int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);

        if (dup < 0)
                return;
        s = xcalloc(1, sizeof(*s));
        s->l = l;
        s->fd = dup;
        s->start_us = clock_mono_us();
        s->ev = event_new(l->base, dup, EV_READ, sock_drain_cb, s);
        if (s->ev == NULL) {
                evutil_closesocket(dup);
                free(s);
                return;
        }
        s->next = l->socks;
        if (l->socks)
                l->socks->prev = s;
        l->socks = s;
        l->nsocks++;
        if (!sock_arm(s))
                sock_close(s);
}

void
linger_closed(struct linger_pool *l, struct evhttp_connection *evcon)
{
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

        if (l->evhttp_eventcb == NULL || fd < 0 || !peer_open(fd))
                return;
        if (l->nsocks >= l->max_socks) {
                l->refused++;
                if ((l->refused & (l->refused - 1)) == 0) /* 1, 2, 4, ...: no flood */
                        log_warn("http", "lingering close: %u sockets already draining; %lu "
                                         "closed at once so far", l->nsocks, l->refused);
                return;
        }
        sock_start(l, fd);
}

struct linger_pool *
linger_new(struct event_base *base, unsigned ms, size_t max_bytes, unsigned max_socks)
{
        struct linger_pool *l = xcalloc(1, sizeof(*l));

        l->base = base;
        l->ms = ms;
        l->max_bytes = max_bytes;
        l->max_socks = max_socks;
        l->evhttp_eventcb = evhttp_eventcb_probe(base);
        if (l->evhttp_eventcb == NULL) {
                log_warn("http", "lingering close unavailable with this libevent: a client "
                                 "still sending when answered early may see a reset");
                l->evhttp_eventcb = NULL;
        }
        return l;
}

unsigned
linger_count(const struct linger_pool *l)
{
        return l->nsocks;
}

void
linger_free(struct linger_pool *l)
{
        if (l == NULL)
                return;
        while (l->socks)
                sock_close(l->socks);
        free(l);
}
