/*
 * http.c - evhttp setup and reply helpers.
 *
 * One evhttp serves the webhook path and, unless metrics_listen is set, the
 * ops endpoints; with metrics_listen a second evhttp serves only those.
 * Every method is let through to the handlers so a wrong one gets our JSON
 * 405 instead of libevent's page. Oversized bodies are refused by evhttp
 * itself from Content-Length, before a byte of the body is read; the
 * socket then lingers (linger.c) so that a client still sending reads the
 * answer instead of a reset.
 *
 * Routes are the owner's (http_route); what is not routed gets a JSON 404.
 * Connections: see conn_bev for the cap; TLS (1.2 at least) is OpenSSL
 * through bufferevent_openssl when tls_cert and tls_key are set.
 */
#include "http.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "linger.h"
#include "log.h"

/* A connection accepted in this loop pass, waiting for its evhttp_connection. */
struct conn_watch {
        struct conn_watch *next, *prev;
        struct http *h;
        struct bufferevent *bev;
        struct event *ev;
};

struct http {
        struct event_base *base;
        struct evhttp *main, *ops;
        struct evhttp_bound_socket *main_sock, *ops_sock;
        unsigned port;
        SSL_CTX *tls;
        struct linger_pool *linger;
        bool paused;
        unsigned long pauses;
        long max_connections;
        unsigned conns; /* client connections open now */
        struct conn_watch *watches;
};

#define HTTP_LISTEN_BACKLOG 4096
/* Lingering close: per socket at most this long and this much read; at most
 * this many sockets at once. */
#define HTTP_LINGER_MS 2000
#define HTTP_LINGER_BYTES (4u << 20)
#define HTTP_LINGER_SOCKS 256

/* Answers by endpoint and status class ([1] = 1xx .. [5] = 5xx), process-wide. */
static uint64_t requests[EP_COUNT][6];

static void
pause_listeners(struct http *h, bool pause)
{
        struct evhttp_bound_socket *socks[2] = { h->main_sock, h->ops_sock };

        for (int i = 0; i < 2; i++) {
                if (socks[i] == NULL)
                        continue;
                struct evconnlistener *l = evhttp_bound_socket_get_listener(socks[i]);
                if (pause)
                        evconnlistener_disable(l);
                else
                        evconnlistener_enable(l);
        }
        h->paused = pause;
}

static void
conn_closed(struct evhttp_connection *evcon, void *arg)
{
        struct http *h = arg;

        linger_closed(h->linger, evcon);
        h->conns--;
        if (h->paused && h->conns < (unsigned)h->max_connections) {
                log_info("http", "below max_connections again: accepting");
                pause_listeners(h, false);
        }
}

static void
watch_free(struct conn_watch *w)
{
        if (w->prev)
                w->prev->next = w->next;
        else
                w->h->watches = w->next;
        if (w->next)
                w->next->prev = w->prev;
        event_free(w->ev);
        free(w);
}

/* evhttp has made the connection around the bufferevent by now (it is the
 * bufferevent's callback argument): hear of its close. This runs before any
 * I/O of the connection, which needs a later poll of the loop. */
static void
watch_cb(evutil_socket_t fd, short what, void *arg)
{
        struct conn_watch *w = arg;
        void *evcon = NULL;

        (void)fd;
        (void)what;
        bufferevent_getcb(w->bev, NULL, NULL, NULL, &evcon);
        if (evcon)
                evhttp_connection_set_closecb(evcon, conn_closed, w->h);
        else
                w->h->conns--; /* no connection around it: nothing will report its close */
        watch_free(w);
}

static void
watch(struct http *h, struct bufferevent *bev)
{
        struct conn_watch *w = xcalloc(1, sizeof(*w));

        w->h = h;
        w->bev = bev;
        w->ev = event_new(h->base, -1, 0, watch_cb, w);
        w->next = h->watches;
        if (h->watches)
                h->watches->prev = w;
        h->watches = w;
        event_active(w->ev, EV_TIMEOUT, 0);
        h->conns++;
}

/*
 * A bufferevent for each new connection (TLS when configured). libevent 2.1
 * has no connection cap, so the cap counts open client connections: one
 * more at each accept, one less when evhttp closes it. At max_connections
 * the listeners pause (the kernel queues new connections in the backlog)
 * and resume as soon as one closes.
 */
static struct bufferevent *
conn_bev(struct event_base *base, void *arg)
{
        struct http *h = arg;
        struct bufferevent *bev;
        long max = h->max_connections;

        if (h->tls) {
                SSL *ssl = SSL_new(h->tls);
                if (ssl == NULL)
                        abort();
                bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                     BEV_OPT_CLOSE_ON_FREE);
        } else {
                bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
        }
        if (bev == NULL)
                abort();
        watch(h, bev);
        if (max > 0 && !h->paused && h->conns >= (unsigned)max) {
                log_warn("http", "max_connections (%ld) reached: new connections wait in the backlog",
                         max);
                h->pauses++;
                pause_listeners(h, true);
        }
        return bev;
}

static SSL_CTX *
tls_ctx_new(const struct cfg *c, struct err *e)
{
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        char msg[160];

        if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
            SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, c->tls_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
                ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
                err_set(e, -1, "TLS setup with %s / %s: %s", c->tls_cert, c->tls_key, msg);
                SSL_CTX_free(ctx);
                return NULL;
        }
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
        return ctx;
}

/*
 * The Date header of the current second, formatted once a second: evhttp
 * would otherwise run gmtime and snprintf for every reply. One thread only.
 */
static const char *
date_now(void)
{
        static const char days[] = "SunMonTueWedThuFriSat";
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        static char buf[64]; /* 29 bytes; room for any int the format could print */
        static time_t last = (time_t)-1;
        time_t t = time(NULL);
        struct tm tm;

        if (t != last && gmtime_r(&t, &tm) != NULL) {
                snprintf(buf, sizeof(buf), "%.3s, %02d %.3s %04d %02d:%02d:%02d GMT",
                         days + 3 * tm.tm_wday, tm.tm_mday, months + 3 * tm.tm_mon,
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
                last = t;
        }
        return buf[0] ? buf : NULL;
}

/*
 * Sends the reply with the body already in the request's output buffer,
 * adding Date and Content-Length here so that evhttp formats neither. A
 * HEAD gets the length a GET would and no body: evhttp would send the
 * body, which a keep-alive client reads as the start of its next answer.
 */
static void
send_reply(struct evhttp_request *req, int code, const char *reason)
{
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        struct evbuffer *body = evhttp_request_get_output_buffer(req);
        const char *date = date_now();
        size_t n = evbuffer_get_length(body);
        char len[24], *p = len + sizeof(len);

        if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
                evbuffer_drain(body, n);
        *--p = '\0';
        do
                *--p = (char)('0' + n % 10);
        while ((n /= 10) != 0);
        if (date)
                evhttp_add_header(h, "Date", date);
        evhttp_add_header(h, "Content-Length", p);
        evhttp_send_reply(req, code, reason, NULL);
}

void
http_reply_json(struct evhttp_request *req, enum metrics_endpoint ep, int code, const char *json)
{
        struct evbuffer *out = evhttp_request_get_output_buffer(req);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        const char *reason;

        if (json) {
                evbuffer_add(out, json, strlen(json));
                evbuffer_add(out, "\n", 1);
        }
        evhttp_add_header(h, "Content-Type", "application/json");
        if (code == 503)
                evhttp_add_header(h, "Retry-After", "1");
        switch (code) {
        case 200: reason = "OK"; break;
        case 400: reason = "Bad Request"; break;
        case 401: reason = "Unauthorized"; break;
        case 404: reason = "Not Found"; break;
        case 405: reason = "Method Not Allowed"; break;
        case 413: reason = "Payload Too Large"; break;
        case 415: reason = "Unsupported Media Type"; break;
        case 500: reason = "Internal Server Error"; break;
        case 503: reason = "Service Unavailable"; break;
        default: reason = "Unknown"; break;
        }
        http_count(ep, code);
        send_reply(req, code, reason);
}

void
http_count(enum metrics_endpoint ep, int code)
{
        int cls = code / 100;

        if (cls < 1 || cls > 5)
                cls = 5;
        requests[ep][cls]++;
}

void
http_reply_text(struct evhttp_request *req, enum metrics_endpoint ep, const char *content_type,
                const char *data, size_t len)
{
        evbuffer_add(evhttp_request_get_output_buffer(req), data, len);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
        http_count(ep, 200);
        send_reply(req, 200, "OK");
}

void
http_reply_error(struct evhttp_request *req, enum metrics_endpoint ep, int code, const char *msg)
{
        json_t *o = json_pack("{s:s}", "error", msg);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

        http_reply_json(req, ep, code, text ? text : "{\"error\":\"internal\"}");
        free(text);
        json_decref(o);
}

bool
http_path_exact(struct evhttp_request *req, const char *path)
{
        const char *got = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

        return got != NULL && strcmp(got, path) == 0;
}

static void
notfound_cb(struct evhttp_request *req, void *arg)
{
        (void)arg;
        log_info("http", "404 %s", "unknown path");
        http_reply_error(req, EP_OTHER, 404, "not found");
}

/*
 * Our own listener instead of evhttp_bind_socket: evhttp listens with a
 * backlog of 128, and a burst of connections beyond it leaves clients that
 * believe they are connected waiting for SYN-ACK retransmits for seconds.
 */
static struct evhttp_bound_socket *
bind_listener(struct event_base *base, struct evhttp *h, const char *host, unsigned port)
{
        struct evutil_addrinfo hints = { 0 }, *ai = NULL;
        char portstr[8];
        struct evconnlistener *l = NULL;

        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICSERV;
        snprintf(portstr, sizeof(portstr), "%u", port);
        if (evutil_getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL)
                return NULL;
        l = evconnlistener_new_bind(base, NULL, NULL,
                                    LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                    HTTP_LISTEN_BACKLOG, ai->ai_addr, (int)ai->ai_addrlen);
        evutil_freeaddrinfo(ai);
        if (l == NULL)
                return NULL;
        struct evhttp_bound_socket *bs = evhttp_bind_listener(h, l);
        if (bs == NULL)
                evconnlistener_free(l);
        return bs;
}

static struct evhttp *
server_new(struct http *hs, const struct cfg *c, const char *hostport,
           struct evhttp_bound_socket **sock, struct err *e)
{
        char host[256];
        unsigned port;
        struct evhttp *h = evhttp_new(hs->base);

        if (h == NULL || cfg_split_hostport(hostport, host, sizeof(host), &port) != 0) {
                err_set(e, -1, "cannot set up HTTP on %s", hostport);
                goto fail;
        }
        evhttp_set_max_body_size(h, (ev_ssize_t)c->max_body_bytes);
        evhttp_set_max_headers_size(h, (ev_ssize_t)c->max_header_bytes);
        evhttp_set_timeout(h, (int)c->idle_timeout);
        evhttp_set_allowed_methods(h, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                              EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
        evhttp_set_default_content_type(h, "application/json");
        evhttp_set_gencb(h, notfound_cb, hs);
        evhttp_set_bevcb(h, conn_bev, hs);
        *sock = bind_listener(hs->base, h, host, port);
        if (*sock == NULL) {
                err_set(e, -1, "cannot listen on %s", hostport);
                goto fail;
        }
        return h;
fail:
        if (h)
                evhttp_free(h);
        return NULL;
}

struct http *
http_new(struct event_base *base, const struct cfg *c, struct err *e)
{
        struct http *h = xcalloc(1, sizeof(*h));
        bool split = c->metrics_listen[0] != '\0';

        h->base = base;
        h->max_connections = c->max_connections;
        h->linger = linger_new(base, HTTP_LINGER_MS, HTTP_LINGER_BYTES, HTTP_LINGER_SOCKS);
        if (c->tls_cert[0]) {
                h->tls = tls_ctx_new(c, e);
                if (h->tls == NULL)
                        goto fail;
        }
        h->main = server_new(h, c, c->listen, &h->main_sock, e);
        if (h->main == NULL)
                goto fail;
        if (split) {
                h->ops = server_new(h, c, c->metrics_listen, &h->ops_sock, e);
                if (h->ops == NULL)
                        goto fail;
        }
        evutil_socket_t fd = evhttp_bound_socket_get_fd(h->main_sock);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
                if (ss.ss_family == AF_INET)
                        h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
                else if (ss.ss_family == AF_INET6)
                        h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        return h;
fail:
        http_free(h);
        return NULL;
}

void
http_stop_accepting(struct http *h)
{
        if (h->main_sock) {
                evhttp_del_accept_socket(h->main, h->main_sock);
                h->main_sock = NULL;
        }
}

int
http_route(struct http *h, enum http_server which, const char *path, http_handler_fn fn, void *arg)
{
        struct evhttp *srv = which == HTTP_OPS && h->ops ? h->ops : h->main;

        return evhttp_set_cb(srv, path, fn, arg) == 0 ? 0 : -1;
}

void
http_snapshot(const struct http *h, struct http_stats *out)
{
        memcpy(out->requests, requests, sizeof(out->requests));
        out->pauses = h ? h->pauses : 0;
        out->connections = h ? h->conns : 0;
}

void
http_render_metrics(const struct http *h, struct strbuf *b)
{
        static const char *const ep_names[EP_COUNT] = { "webhook", "healthz", "readyz", "metrics",
                                                         "other" };
        struct http_stats st;

        http_snapshot(h, &st);
        strbuf_printf(b, "# HELP easypost_sync_http_requests_total HTTP requests answered.\n"
                         "# TYPE easypost_sync_http_requests_total counter\n");
        for (int e = 0; e < EP_COUNT; e++)
                for (int c = 1; c <= 5; c++)
                        strbuf_printf(b,
                                      "easypost_sync_http_requests_total{endpoint=\"%s\",code=\"%dxx\"} %llu\n",
                                      ep_names[e], c, (unsigned long long)st.requests[e][c]);
        strbuf_printf(b, "# HELP easypost_sync_http_accept_pauses_total Times max_connections paused accepting.\n"
                         "# TYPE easypost_sync_http_accept_pauses_total counter\n"
                         "easypost_sync_http_accept_pauses_total %lu\n",
                      st.pauses);
}

unsigned
http_port(const struct http *h)
{
        return h->port;
}

void
http_free(struct http *h)
{
        if (h == NULL)
                return;
        h->paused = false; /* the connections closed below must not resume freed listeners */
        if (h->main)
                evhttp_free(h->main);
        if (h->ops)
                evhttp_free(h->ops);
        linger_free(h->linger);
        SSL_CTX_free(h->tls);
        while (h->watches)
                watch_free(h->watches);
        free(h);
}
