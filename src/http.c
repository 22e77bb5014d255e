/*
 * http.c - evhttp setup and reply helpers.
 *
 * One evhttp serves the webhook path and, unless metrics_listen is set, the
 * ops endpoints; with metrics_listen a second evhttp serves only those.
 * Every method is let through to the handlers so a wrong one gets our JSON
 * 405 instead of libevent's page. Oversized bodies are refused by evhttp
 * itself from Content-Length, before a byte of the body is read.
 */
#include "http.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "log.h"
#include "ops.h"
#include "webhook.h"

struct http {
        struct app *app;
        struct evhttp *main, *ops;
        struct evhttp_bound_socket *main_sock, *ops_sock;
        unsigned port;
};

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

static void
notfound_cb(struct evhttp_request *req, void *arg)
{
        (void)arg;
        log_info("http", "404 %s", "unknown path");
        http_reply_error(req, EP_OTHER, 404, "not found");
}

static struct evhttp *
server_new(struct app *a, const char *hostport, struct evhttp_bound_socket **sock, bool webhook,
           bool ops, struct err *e)
{
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
        *sock = evhttp_bind_socket_with_handle(h, host, (ev_uint16_t)port);
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
        h->main = server_new(a, a->cfg->listen, &h->main_sock, true, !split, e);
        if (h->main == NULL)
                goto fail;
        if (split) {
                h->ops = server_new(a, a->cfg->metrics_listen, &h->ops_sock, false, true, e);
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
        free(h);
}
