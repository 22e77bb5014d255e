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

#include "app.h"
#include "linger.h"
#include "log.h"
#include "ops.h"
#include "webhook.h"

struct http {
        struct app *app;
        struct evhttp *main, *ops;
        struct evhttp_bound_socket *main_sock, *ops_sock;
        unsigned port;
        SSL_CTX *tls;
        struct linger_pool *linger;
        struct event *pause_timer;
        bool paused;
        unsigned long pauses;
};

/* Descriptors the daemon holds besides client connections (listeners,
 * database and API connections, logs): headroom for the cap below. */
#define HTTP_FD_RESERVE 64
#define HTTP_PAUSE_CHECK_MS 100
#define HTTP_LISTEN_BACKLOG 4096
/* Lingering close: per socket at most this long and this much read; at most
 * this many sockets at once. */
#define HTTP_LINGER_MS 2000
#define HTTP_LINGER_BYTES (4u << 20)
#define HTTP_LINGER_SOCKS 256

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
pause_check_cb(evutil_socket_t fd, short what, void *arg)
{
        struct http *h = arg;
        struct timeval tv = { 0, HTTP_PAUSE_CHECK_MS * 1000 };

        (void)fd;
        (void)what;
        if (ops_open_fds() < (unsigned)h->app->cfg->max_connections + HTTP_FD_RESERVE) {
                log_info("http", "below max_connections again: accepting");
                pause_listeners(h, false);
                return;
        }
        evtimer_add(h->pause_timer, &tv);
}

/*
 * A bufferevent for each new connection (TLS when configured). libevent 2.1
 * has no connection cap and tells nobody when a connection closes, so the
 * cap counts open descriptors at each accept: over max_connections the
 * listeners pause (the kernel queues new connections in the backlog) and
 * resume once connections have closed.
 */
static struct bufferevent *
conn_bev(struct event_base *base, void *arg)
{
        struct http *h = arg;
        struct bufferevent *bev;
        long max = h->app->cfg->max_connections;

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
        linger_watch(h->linger, bev);
        if (max > 0 && !h->paused && ops_open_fds() >= (unsigned)max + HTTP_FD_RESERVE) {
                struct timeval tv = { 0, HTTP_PAUSE_CHECK_MS * 1000 };
                log_warn("http", "max_connections (%ld) reached: new connections wait in the backlog",
                         max);
                h->pauses++;
                pause_listeners(h, true);
                evtimer_add(h->pause_timer, &tv);
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

void
http_reply_json(struct evhttp_request *req, enum metrics_endpoint ep, int code, const char *json)
{
        struct evbuffer *out = evbuffer_new();
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
        metrics_request(ep, code);
        evhttp_send_reply(req, code, reason, out);
        evbuffer_free(out);
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
server_new(struct http *hs, const char *hostport, struct evhttp_bound_socket **sock, bool webhook,
           bool ops, struct err *e)
{
        struct app *a = hs->app;
        const struct cfg *c = a->cfg;
        char host[256];
        unsigned port;
        struct evhttp *h = evhttp_new(a->base);

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
        if (webhook && evhttp_set_cb(h, c->webhook_path, webhook_cb, a) != 0) {
                err_set(e, -1, "webhook_path %s clashes with another endpoint", c->webhook_path);
                goto fail;
        }
        if (ops)
                ops_register(h, a);
        evhttp_set_gencb(h, notfound_cb, a);
        evhttp_set_bevcb(h, conn_bev, hs);
        *sock = bind_listener(a->base, h, host, port);
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
http_new(struct app *a, struct err *e)
{
        struct http *h = xcalloc(1, sizeof(*h));
        bool split = a->cfg->metrics_listen[0] != '\0';

        h->app = a;
        h->pause_timer = evtimer_new(a->base, pause_check_cb, h);
        h->linger = linger_new(a->base, HTTP_LINGER_MS, HTTP_LINGER_BYTES, HTTP_LINGER_SOCKS);
        if (a->cfg->tls_cert[0]) {
                h->tls = tls_ctx_new(a->cfg, e);
                if (h->tls == NULL)
                        goto fail;
        }
        h->main = server_new(h, a->cfg->listen, &h->main_sock, true, !split, e);
        if (h->main == NULL)
                goto fail;
        if (split) {
                h->ops = server_new(h, a->cfg->metrics_listen, &h->ops_sock, false, true, e);
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

unsigned long
http_pauses(const struct http *h)
{
        return h->pauses;
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
        if (h->main)
                evhttp_free(h->main);
        if (h->ops)
                evhttp_free(h->ops);
        linger_free(h->linger);
        SSL_CTX_free(h->tls);
        if (h->pause_timer)
                event_free(h->pause_timer);
        free(h);
}
