/*
 * bare_server.c - the ceiling for the benchmark: a libevent evhttp server set
 * up like the daemon's (same limits and idle timeout) that reads the body and
 * answers 200 with a tiny JSON body at once. No signature check, no parsing,
 * no database, so what it reaches is what evhttp plus the load generator can
 * do on this machine; the daemon's figures are read as a fraction of it.
 *
 * --verify-secret S adds the HMAC check (the daemon's first step), to price it.
 */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "sig.h"
#include "util.h"

#define BARE_BODY_MAX (1L << 20)        /* the daemon's max_body_bytes default */
#define BARE_HEADERS_MAX 16384
#define BARE_IDLE_TIMEOUT 30

struct bare {
        struct event_base *base;
        struct sig_keyset *ks;          /* NULL: no signature check */
        unsigned long long requests, bytes, rejected;
};

static void
reply(struct evhttp_request *req, int code, const char *reason, const char *json)
{
        struct evbuffer *out = evbuffer_new();

        evbuffer_add(out, json, strlen(json));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/json");
        evhttp_send_reply(req, code, reason, out);
        evbuffer_free(out);
}

static void
any_cb(struct evhttp_request *req, void *arg)
{
        struct bare *b = arg;
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        /* make the body contiguous, as the daemon does before verifying it */
        const unsigned char *body = len ? evbuffer_pullup(in, -1) : (const unsigned char *)"";

        b->requests++;
        b->bytes += len;
        if (b->ks && evhttp_request_get_command(req) == EVHTTP_REQ_POST) {
                struct err e;
                size_t slot;
                const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req),
                                                     "X-Hmac-Signature");
                if (sig_verify(b->ks, sig, body, len, &slot, &e) != 0) {
                        b->rejected++;
                        reply(req, 401, "Unauthorized", "{\"error\":\"invalid signature\"}\n");
                        return;
                }
        }
        reply(req, 200, "OK", "{\"status\":\"ok\"}\n");
}

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
        struct bare *b = arg;

        (void)fd;
        (void)what;
        event_base_loopexit(b->base, NULL);
}

static void
usage(FILE *f)
{
        fprintf(f, "usage: bare_server [--listen HOST:PORT] [--verify-secret S]\n"
                   "  answers every request 200 {\"status\":\"ok\"}; default 127.0.0.1:8081\n");
}

int
main(int argc, char **argv)
{
        static const struct option lopts[] = {
                { "listen", required_argument, NULL, 'l' },
                { "verify-secret", required_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        struct bare b = { 0 };
        const char *listen = "127.0.0.1:8081", *secret = NULL;
        char host[256];
        struct evhttp *http = NULL;
        struct event *sigterm = NULL, *sigint = NULL;
        struct err e;
        int ch, rc = EXIT_FAILURE;

        while ((ch = getopt_long(argc, argv, "l:h", lopts, NULL)) != -1) {
                switch (ch) {
                case 'l':
                        listen = optarg;
                        break;
                case 'v':
                        secret = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return EXIT_SUCCESS;
                default:
                        usage(stderr);
                        return EXIT_FAILURE;
                }
        }
        const char *colon = strrchr(listen, ':');
        char *end;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (colon == NULL || colon == listen || (size_t)(colon - listen) >= sizeof(host) ||
            *end != '\0' || port < 0 || port > 65535) {
                fprintf(stderr, "bare_server: --listen wants HOST:PORT, got \"%s\"\n", listen);
                return EXIT_FAILURE;
        }
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        if (secret) {
                const char *secrets[1] = { secret };
                b.ks = sig_keyset_new(secrets, 1, &e);
                if (b.ks == NULL) {
                        fprintf(stderr, "bare_server: secret: %s\n", e.msg);
                        return EXIT_FAILURE;
                }
        }

        signal(SIGPIPE, SIG_IGN);
        b.base = event_base_new();
        if (b.base == NULL || (http = evhttp_new(b.base)) == NULL) {
                fprintf(stderr, "bare_server: libevent setup failed\n");
                goto out;
        }
        evhttp_set_max_body_size(http, BARE_BODY_MAX);
        evhttp_set_max_headers_size(http, BARE_HEADERS_MAX);
        evhttp_set_timeout(http, BARE_IDLE_TIMEOUT);
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
        evhttp_set_gencb(http, any_cb, &b);
        if (evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port) == NULL) {
                fprintf(stderr, "bare_server: cannot listen on %s\n", listen);
                goto out;
        }
        sigterm = evsignal_new(b.base, SIGTERM, stop_cb, &b);
        sigint = evsignal_new(b.base, SIGINT, stop_cb, &b);
        evsignal_add(sigterm, NULL);
        evsignal_add(sigint, NULL);
        fprintf(stderr, "bare_server: listening on %s%s\n", listen,
                b.ks ? " (verifying signatures)" : "");
        event_base_dispatch(b.base);
        fprintf(stderr, "bare_server: %llu requests, %llu body bytes, %llu rejected\n", b.requests,
                b.bytes, b.rejected);
        rc = EXIT_SUCCESS;
out:
        if (sigterm)
                event_free(sigterm);
        if (sigint)
                event_free(sigint);
        if (http)
                evhttp_free(http);
        if (b.base)
                event_base_free(b.base);
        sig_keyset_free(b.ks);
        return rc;
}
