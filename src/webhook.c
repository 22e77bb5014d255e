/*
 * webhook.c - the webhook handler and its deferred replies.
 *
 * A request that passes every check becomes a wh_item (an ingest_item with
 * the request and a deadline timer). Exactly one of two things answers it:
 * ingest's done callback (committed -> 200, or 503) or the deadline (503,
 * after copying the body, which until then is borrowed from the request).
 * The item is freed only by done, so a late commit never touches freed memory.
 */
#include "webhook.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "epevent.h"
#include "http.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "sig.h"
#include "uuid7.h"

struct webhook {
        struct event_base *base;
        struct ingest *ingest;
        struct uuid7_gen *uuid;
        const struct sig_keyset *keys;
        char *path;
        bool basic_auth;  /* an Authorization header is required ... */
        unsigned char basic_auth_sha[EVP_MAX_MD_SIZE]; /* ... whose SHA-256 is this */
        long request_timeout;
        bool stopped;
        uint64_t next_rid;
        struct webhook_stats stats;
};

struct wh_item {
        struct ingest_item it; /* first: ingest hands this back */
        struct webhook *wh;
        struct evhttp_request *req; /* NULL once answered */
        struct event *deadline; /* in ev_mem: one allocation per request */
        uint64_t t0_us;
        char rid[24];
        max_align_t ev_mem[];
};

static void
ack_latency(const struct wh_item *w)
{
        uint64_t us = clock_mono_us() - w->t0_us;

        metrics_latency(&w->wh->stats.ack, us);
        metrics_latency(&w->wh->stats.ack_window, us);
}

/* The request id in hex, as "%llx" would write it. */
static void
rid_format(char rid[24], uint64_t v)
{
        static const char hex[] = "0123456789abcdef";
        char tmp[16];
        size_t n = 0;

        do
                tmp[n++] = hex[v & 15];
        while ((v >>= 4) != 0);
        for (size_t i = 0; i < n; i++)
                rid[i] = tmp[n - 1 - i];
        rid[n] = '\0';
}

static void
reply_ok(struct wh_item *w, const char *status)
{
        char buf[EPEVENT_ID_MAX + 64];

        if (epevent_id_plain(w->it.ev.id)) {
                /* {"id":"<id>","status":"<status>"}: the id fits (EPEVENT_ID_MAX), status is ours */
                size_t n = strlen(w->it.ev.id), m = strlen(status);
                char *p = buf;

                memcpy(p, "{\"id\":\"", 7);
                memcpy(p += 7, w->it.ev.id, n);
                memcpy(p += n, "\",\"status\":\"", 12);
                memcpy(p += 12, status, m);
                memcpy(p += m, "\"}", 3);
                http_reply_json(w->req, EP_WEBHOOK, 200, buf);
        } else {
                json_t *o = json_pack("{s:s,s:s}", "id", w->it.ev.id, "status", status);
                char *text = json_dumps(o, JSON_COMPACT);
                http_reply_json(w->req, EP_WEBHOOK, 200, text);
                free(text);
                json_decref(o);
        }
}

static void
item_done(struct ingest_item *it, enum ingest_result r)
{
        struct wh_item *w = (struct wh_item *)it;

        if (w->req) {
                ack_latency(w);
                if (r == INGEST_UNAVAILABLE) {
                        log_warn_req("webhook", w->rid, "503 event %s not committed", it->ev.id);
                        http_reply_error(w->req, EP_WEBHOOK, 503, "database unavailable, retry");
                } else {
                        log_debug_req("webhook", w->rid, "200 event %s %s", it->ev.id, it->status);
                        reply_ok(w, r == INGEST_DUPLICATE ? "duplicate" : "stored");
                }
                w->req = NULL;
        }
        event_del(w->deadline);
        ingest_item_fini(it);
        free(w);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
        struct wh_item *w = arg;

        (void)fd;
        (void)what;
        if (w->req == NULL)
                return;
        ingest_item_detach(&w->it); /* the reply frees the request and its body */
        ack_latency(w);
        log_warn_req("webhook", w->rid, "503 event %s: no commit within request_timeout",
                     w->it.ev.id);
        http_reply_error(w->req, EP_WEBHOOK, 503, "commit timeout, retry");
        w->req = NULL;
}

static bool
is_json_type(const char *ct)
{
        static const char want[] = "application/json";

        if (ct == NULL)
                return false;
        while (*ct == ' ')
                ct++;
        if (strncasecmp(ct, want, sizeof(want) - 1) != 0)
                return false;
        ct += sizeof(want) - 1;
        return *ct == '\0' || *ct == ';' || *ct == ' ';
}

/* SHA-256 of s (NULL as ""); false if OpenSSL fails. */
static bool
auth_digest(const char *s, unsigned char out[EVP_MAX_MD_SIZE])
{
        unsigned int n = 0;

        if (s == NULL)
                s = "";
        return EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

/* Whether got is the expected Authorization header. The digests of both are
 * compared, always all 32 bytes of them, so the time taken says nothing about
 * the header's length or how much of it matched. */
static bool
auth_ok(const struct webhook *a, const char *got)
{
        unsigned char d[EVP_MAX_MD_SIZE];
        bool ok = auth_digest(got, d) && CRYPTO_memcmp(d, a->basic_auth_sha, 32) == 0;

        return ok && got != NULL;
}

static void
reject(struct evhttp_request *req, const char *rid, int code, const char *msg)
{
        log_info_req("webhook", rid, "%d %s", code, msg);
        http_reply_error(req, EP_WEBHOOK, code, msg);
}

void
webhook_cb(struct evhttp_request *req, void *arg)
{
        struct webhook *a = arg;
        struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
        struct err e;
        char rid[24];
        uint64_t t0 = clock_mono_us();

        rid_format(rid, ++a->next_rid);
        if (!http_path_exact(req, a->path)) {
                log_info_req("webhook", rid, "404 %s", "unknown path");
                http_reply_error(req, EP_OTHER, 404, "not found");
                return;
        }
        if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
                evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
                reject(req, rid, 405, "method not allowed: POST only");
                return;
        }
        if (!is_json_type(evhttp_find_header(hdrs, "Content-Type"))) {
                reject(req, rid, 415, "content type must be application/json");
                return;
        }
        if (a->basic_auth && !auth_ok(a, evhttp_find_header(hdrs, "Authorization"))) {
                a->stats.rejected_auth++;
                evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                                  "Basic realm=\"easypost-sync\"");
                reject(req, rid, 401, "basic auth required");
                return;
        }
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
        size_t slot = 0;
        if (sig_verify(a->keys, evhttp_find_header(hdrs, "X-Hmac-Signature"), body, len, &slot,
                       &e) != 0) {
                a->stats.rejected_sig++;
                reject(req, rid, 401, e.msg);
                return;
        }
        a->stats.sig_matches[slot]++;

        struct wh_item *w = xcalloc(1, sizeof(*w) + event_get_struct_event_size());
        if (epevent_parse(body, len, &w->it.ev, &e) != 0) {
                free(w);
                a->stats.rejected_parse++;
                reject(req, rid, 400, e.msg);
                return;
        }
        if (a->stopped || !ingest_has_room(a->ingest) || !ingest_db_up(a->ingest)) {
                const char *why = a->stopped ? "shutting down"
                                  : !ingest_db_up(a->ingest) ? "database unavailable"
                                                             : "queue full";
                log_warn_req("webhook", rid, "503 event %s: %s", w->it.ev.id, why);
                http_reply_error(req, EP_WEBHOOK, 503, why);
                epevent_fini(&w->it.ev);
                free(w);
                return;
        }
        w->wh = a;
        w->req = req;
        w->t0_us = t0;
        memcpy(w->rid, rid, sizeof(rid));
        w->it.body = body;
        w->it.len = len;
        w->it.source = INGEST_WEBHOOK;
        w->it.done = item_done;
        uuid7_next_str(a->uuid, w->it.uuid);
        struct timeval tv = { a->request_timeout, 0 };
        w->deadline = (struct event *)w->ev_mem;
        if (evtimer_assign(w->deadline, a->base, deadline_cb, w) != 0 ||
            evtimer_add(w->deadline, &tv) != 0) {
                log_warn_req("webhook", rid, "503 event %s: no deadline timer", w->it.ev.id);
                http_reply_error(req, EP_WEBHOOK, 503, "no deadline timer, retry");
                epevent_fini(&w->it.ev);
                free(w);
                return;
        }
        ingest_submit(a->ingest, &w->it);
}

/* "Basic base64(user:pass)", or NULL without a user. */
static char *
basic_auth_header(const char *user, const char *pass)
{
        if (user == NULL || user[0] == '\0')
                return NULL;
        size_t n = strlen(user) + 1 + strlen(pass);
        char *plain = xmalloc(n + 1);
        snprintf(plain, n + 1, "%s:%s", user, pass);
        char *out = xmalloc(6 + 4 * ((n + 2) / 3) + 1);
        memcpy(out, "Basic ", 6);
        EVP_EncodeBlock((unsigned char *)out + 6, (unsigned char *)plain, (int)n);
        memset(plain, 0, n);
        free(plain);
        return out;
}

static void
free_secret(char *s)
{
        if (s) {
                memset(s, 0, strlen(s));
                free(s);
        }
}

struct webhook *
webhook_new(struct event_base *base, struct ingest *ingest, struct uuid7_gen *uuid,
            const struct webhook_settings *st)
{
        struct webhook *w = xcalloc(1, sizeof(*w));

        w->base = base;
        w->ingest = ingest;
        w->uuid = uuid;
        webhook_reload(w, st);
        return w;
}

void
webhook_reload(struct webhook *w, const struct webhook_settings *st)
{
        free(w->path);
        w->path = xstrdup(st->path);
        char *hdr = basic_auth_header(st->basic_auth_user, st->basic_auth_password);
        w->basic_auth = hdr != NULL;
        if (w->basic_auth && !auth_digest(hdr, w->basic_auth_sha))
                memset(w->basic_auth_sha, 0xff, sizeof(w->basic_auth_sha)); /* no digest: none matches */
        free_secret(hdr);
        w->keys = st->keys;
        w->request_timeout = st->request_timeout;
}

void
webhook_stop(struct webhook *w)
{
        w->stopped = true;
}

void
webhook_free(struct webhook *w)
{
        if (w == NULL)
                return;
        free(w->path);
        OPENSSL_cleanse(w->basic_auth_sha, sizeof(w->basic_auth_sha));
        free(w);
}

void
webhook_snapshot(const struct webhook *w, struct webhook_stats *out)
{
        *out = w->stats;
}

void
webhook_take_ack_window(struct webhook *w, struct latency_hist *out)
{
        *out = w->stats.ack_window;
        memset(&w->stats.ack_window, 0, sizeof(w->stats.ack_window));
}

void
webhook_render_metrics(const struct webhook *w, struct strbuf *b)
{
        const struct webhook_stats *st = &w->stats;

        metrics_render_hist(b, "easypost_sync_ack_latency_seconds", "Webhook receipt to answer.", &st->ack);
        strbuf_printf(b, "# HELP easypost_sync_signature_matches_total Verified webhooks by secret slot.\n"
                         "# TYPE easypost_sync_signature_matches_total counter\n");
        for (size_t i = 0; i < sig_keyset_count(w->keys); i++)
                strbuf_printf(b, "easypost_sync_signature_matches_total{slot=\"%zu\"} %llu\n", i,
                              (unsigned long long)st->sig_matches[i]);
        strbuf_printf(b, "# HELP easypost_sync_webhooks_rejected_total Webhooks refused before ingest.\n"
                         "# TYPE easypost_sync_webhooks_rejected_total counter\n"
                         "easypost_sync_webhooks_rejected_total{reason=\"signature\"} %llu\n"
                         "easypost_sync_webhooks_rejected_total{reason=\"parse\"} %llu\n"
                         "easypost_sync_webhooks_rejected_total{reason=\"auth\"} %llu\n",
                      (unsigned long long)st->rejected_sig, (unsigned long long)st->rejected_parse,
                      (unsigned long long)st->rejected_auth);
}
