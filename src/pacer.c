/*
 * pacer.c - the one queue every EasyPost API request waits in.
 *
 *   pacer_get / pacer_request -> queue -> (room under concurrency, rate and
 *             any 429 pause) -> httpc_request -> answer -> owner's callback
 *
 * A 429 pauses every request, not just its own, for its Retry-After (capped
 * at max_retry_after). A 401 or 403 stops the pacer until pacer_reload
 * brings a key to try: what is queued, and what is asked for meanwhile, is
 * dropped (its owners see CURLE_ABORTED_BY_CALLBACK, never inside their
 * call). A request left waiting would keep its owner's lease (a sync job, a
 * backfill run) renewed, and no replica with a working key could take it.
 *
 * The rate holds where it counts, at the API: a request occupies one of
 * `rate` slots from its start until one second after its answer began to
 * arrive (or after it ended, without an answer). The API saw it somewhere
 * between those two instants, so no request can start while `rate` others
 * reached the API less than a second before, however long each spent
 * connecting. (Spacing starts 1/rate apart is not enough: a start whose
 * connection set-up is slow arrives late, next to the ones after it.)
 * Starts are also spaced 1/rate apart, so a burst is spread out.
 */
#include "pacer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define PACER_CONNECT_MS 10000L
#define PACER_WINDOW_US 1002000u /* one second, and a margin for clock granularity */

struct preq {
        struct preq *next;
        struct pacer *p;
        const char *method; /* a static string */
        char *url;
        char *body;         /* JSON or NULL */
        pacer_fn fn;
        void *arg;
        unsigned key_gen; /* the pacer's key_gen when it was sent */
};

struct pacer {
        struct httpc *hc;
        struct event *pace_timer;
        struct preq *qhead, *qtail;
        unsigned queued, in_flight;
        uint64_t next_send_us;
        uint64_t *release_us; /* answered requests still holding a rate slot: until when */
        size_t nrelease, release_cap;
        bool stopped, auth_failed;
        unsigned key_gen; /* counts the API keys pacer_reload brought */
        char *api_url, *api_key;
        long rate, concurrency, timeout_s, max_retry_after;
        uint64_t requests_by_class[6];
};

static void pump(struct pacer *p);

static void
set(struct pacer *p, const struct pacer_settings *st)
{
        free(p->api_url);
        if (p->api_key)
                memset(p->api_key, 0, strlen(p->api_key));
        free(p->api_key);
        p->api_url = xstrdup(st->api_url);
        p->api_key = xstrdup(st->api_key);
        p->rate = st->rate > 0 ? st->rate : 1;
        p->concurrency = st->concurrency > 0 ? st->concurrency : 1;
        p->timeout_s = st->timeout_s;
        p->max_retry_after = st->max_retry_after;
}

static void
answer(struct preq *q, const struct httpc_resp *r)
{
        q->fn(r, q->arg);
        free(q->url);
        free(q->body);
        free(q);
}

static void
answer_unsent(struct preq *q, const char *why)
{
        struct httpc_resp r = { .rc = CURLE_ABORTED_BY_CALLBACK, .body = "", .error = why,
                                .request_id = "", .retry_after_s = -1 };
        answer(q, &r);
}

/* Drops what is not sent yet: each owner hears CURLE_ABORTED_BY_CALLBACK. */
static void
drop_queued(struct pacer *p, const char *why)
{
        while (p->qhead) {
                struct preq *q = p->qhead;
                p->qhead = q->next;
                p->queued--;
                answer_unsent(q, why);
        }
        p->qtail = NULL;
}

static void
auth_rejected(struct pacer *p, long status)
{
        if (!p->auth_failed)
                log_err("sync", "EasyPost API rejected the API key (HTTP %ld): sync worker, "
                                "backfill and webhook check stopped until the key changes (SIGHUP)",
                        status);
        p->auth_failed = true;
        drop_queued(p, "not sent: API key rejected");
}

/* A 429 asks everyone to slow down, not just this request. */
static void
pause_for(struct pacer *p, long retry_after_s)
{
        long ra = retry_after_s > 0 ? retry_after_s : 1;
        if (ra > p->max_retry_after)
                ra = p->max_retry_after;
        uint64_t until = clock_mono_us() + (uint64_t)ra * 1000000u;
        if (until > p->next_send_us)
                p->next_send_us = until;
}

/* A sent request's slot stays taken for a second after the API had it. */
static void
hold_slot(struct pacer *p, const struct httpc_resp *r)
{
        uint64_t seen = r->answered_us ? r->answered_us : clock_mono_us();

        if (p->nrelease == p->release_cap) {
                p->release_cap = p->release_cap ? 2 * p->release_cap : 8;
                p->release_us = xrealloc(p->release_us, p->release_cap * sizeof(*p->release_us));
        }
        p->release_us[p->nrelease++] = seen + PACER_WINDOW_US;
}

/* Frees the slots whose second has passed; returns the earliest still held (0: none). */
static uint64_t
free_slots(struct pacer *p, uint64_t now)
{
        uint64_t earliest = 0;
        size_t k = 0;

        for (size_t i = 0; i < p->nrelease; i++) {
                if (p->release_us[i] <= now)
                        continue;
                p->release_us[k++] = p->release_us[i];
                if (earliest == 0 || p->release_us[i] < earliest)
                        earliest = p->release_us[i];
        }
        p->nrelease = k;
        return earliest;
}

/* When the next request may start: now, or later for the rate or a 429 pause. */
static uint64_t
next_start(struct pacer *p, uint64_t now)
{
        uint64_t earliest = free_slots(p, now);
        uint64_t at = p->next_send_us > now ? p->next_send_us : now;

        if (p->in_flight + p->nrelease >= (size_t)p->rate) {
                if (earliest == 0)
                        return UINT64_MAX; /* every slot is in flight: an answer frees one */
                if (earliest > at)
                        at = earliest;
        }
        return at;
}

static void
preq_done(const struct httpc_resp *r, void *arg)
{
        struct preq *q = arg;
        struct pacer *p = q->p;
        struct httpc_resp capped = *r;

        p->in_flight--;
        if (r->rc != CURLE_ABORTED_BY_CALLBACK) {
                hold_slot(p, r);
                long cls = r->status / 100;
                p->requests_by_class[r->rc == CURLE_OK && cls >= 1 && cls <= 5 ? cls : 0]++;
                if (r->rc == CURLE_OK && r->status == 429)
                        pause_for(p, r->retry_after_s);
                if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403)) {
                        if (q->key_gen == p->key_gen)
                                auth_rejected(p, r->status);
                        else /* sent before a reload: its answer is not the new key's */
                                log_info("sync", "a request sent with the previous API key got HTTP %ld; "
                                                 "the new key stays in use", r->status);
                }
        }
        if (capped.retry_after_s > p->max_retry_after)
                capped.retry_after_s = p->max_retry_after;
        answer(q, &capped);
        if (!p->stopped)
                pump(p);
}

static void
pace_cb(evutil_socket_t fd, short what, void *arg)
{
        struct pacer *p = arg;

        (void)fd;
        (void)what;
        if (p->auth_failed && !p->stopped) {
                drop_queued(p, "not sent: API key rejected");
                return;
        }
        pump(p);
}

static void
send_one(struct pacer *p, struct preq *q)
{
        p->in_flight++;
        q->key_gen = p->key_gen;
        if (httpc_request(p->hc, q->method, q->url, q->body, p->api_key, PACER_CONNECT_MS,
                          p->timeout_s * 1000L, preq_done, q) != 0) {
                struct httpc_resp r = { .rc = CURLE_FAILED_INIT, .body = "",
                                        .error = "request not started", .request_id = "",
                                        .retry_after_s = -1 };
                preq_done(&r, q);
        }
}

static void
pump(struct pacer *p)
{
        uint64_t gap = 1000000u / (uint64_t)p->rate;

        while (p->qhead && p->in_flight < (unsigned)p->concurrency && !p->stopped && !p->auth_failed) {
                uint64_t now = clock_mono_us();
                uint64_t at = next_start(p, now);
                if (at == UINT64_MAX)
                        return;
                if (now < at) {
                        uint64_t us = at - now;
                        struct timeval tv = { (time_t)(us / 1000000u), (suseconds_t)(us % 1000000u) };
                        evtimer_add(p->pace_timer, &tv);
                        return;
                }
                struct preq *q = p->qhead;
                p->qhead = q->next;
                if (p->qhead == NULL)
                        p->qtail = NULL;
                p->queued--;
                p->next_send_us = (now > p->next_send_us ? now : p->next_send_us) + gap;
                send_one(p, q);
        }
}

void
pacer_request(struct pacer *p, const char *method, char *url, const char *json, pacer_fn fn,
              void *arg)
{
        struct preq *q = xcalloc(1, sizeof(*q));

        q->p = p;
        q->method = strcmp(method, "PATCH") == 0 ? "PATCH" : "GET";
        q->url = url;
        q->body = json ? xstrdup(json) : NULL;
        q->fn = fn;
        q->arg = arg;
        if (p->qtail)
                p->qtail->next = q;
        else
                p->qhead = q;
        p->qtail = q;
        p->queued++;
        if (p->stopped)
                return; /* waits for pacer_free to cancel it */
        event_active(p->pace_timer, EV_TIMEOUT, 0); /* never answer inside the caller */
}

void
pacer_get(struct pacer *p, char *url, pacer_fn fn, void *arg)
{
        pacer_request(p, "GET", url, NULL, fn, arg);
}

char *
pacer_url(const struct pacer *p, const char *fmt, const char *a1, const char *a2)
{
        char path[512];
        char *e1 = a1 ? curl_easy_escape(NULL, a1, 0) : NULL;
        char *e2 = a2 ? curl_easy_escape(NULL, a2, 0) : NULL;

        snprintf(path, sizeof(path), fmt, e1 ? e1 : "", e2 ? e2 : "");
        curl_free(e1);
        curl_free(e2);
        size_t bl = strlen(p->api_url);
        while (bl > 0 && p->api_url[bl - 1] == '/')
                bl--;
        size_t n = bl + strlen(path) + 1;
        char *url = xmalloc(n);
        snprintf(url, n, "%.*s%s", (int)bl, p->api_url, path);
        return url;
}

struct pacer *
pacer_new(struct event_base *base, const struct pacer_settings *st)
{
        struct pacer *p = xcalloc(1, sizeof(*p));
        char ua[64];

        snprintf(ua, sizeof(ua), "easypost-sync/%s", PACKAGE_VERSION);
        p->hc = httpc_new(base, ua);
        p->pace_timer = evtimer_new(base, pace_cb, p);
        set(p, st);
        return p;
}

void
pacer_reload(struct pacer *p, const struct pacer_settings *st)
{
        if (strcmp(p->api_key, st->api_key) != 0)
                p->key_gen++;
        set(p, st);
        p->auth_failed = false; /* a new key deserves one try */
        if (!p->stopped)
                event_active(p->pace_timer, EV_TIMEOUT, 0);
}

void
pacer_stop(struct pacer *p)
{
        p->stopped = true;
        evtimer_del(p->pace_timer);
}

void
pacer_free(struct pacer *p)
{
        if (p == NULL)
                return;
        p->stopped = true;
        httpc_free(p->hc); /* in-flight requests report ABORTED */
        drop_queued(p, "cancelled: shutting down");
        event_free(p->pace_timer);
        set(p, &(struct pacer_settings){ .api_url = "", .api_key = "" });
        free(p->api_url);
        free(p->api_key);
        free(p->release_us);
        free(p);
}

bool
pacer_enabled(const struct pacer *p)
{
        return p->api_key[0] != '\0';
}

bool
pacer_auth_failed(const struct pacer *p)
{
        return p->auth_failed;
}

void
pacer_snapshot(const struct pacer *p, struct pacer_stats *out)
{
        memset(out, 0, sizeof(*out));
        if (p == NULL)
                return;
        memcpy(out->requests_by_class, p->requests_by_class, sizeof(out->requests_by_class));
        out->in_flight = p->in_flight;
        out->queued = p->queued;
        out->enabled = pacer_enabled(p);
        out->auth_failed = p->auth_failed;
}

void
pacer_render_metrics(const struct pacer *p, struct strbuf *b)
{
        static const char *const cls[6] = { "error", "1xx", "2xx", "3xx", "4xx", "5xx" };
        struct pacer_stats ps;

        pacer_snapshot(p, &ps);
        strbuf_printf(b, "# HELP easypost_sync_api_requests_total EasyPost API requests by status class "
                         "(error = no HTTP answer).\n"
                         "# TYPE easypost_sync_api_requests_total counter\n");
        for (int i = 0; i < 6; i++)
                if (i != 1 && i != 3)
                        strbuf_printf(b, "easypost_sync_api_requests_total{code=\"%s\"} %llu\n", cls[i],
                                      (unsigned long long)ps.requests_by_class[i]);
        strbuf_printf(b, "# HELP easypost_sync_api_requests_in_flight EasyPost API requests in flight.\n"
                         "# TYPE easypost_sync_api_requests_in_flight gauge\n"
                         "easypost_sync_api_requests_in_flight %u\n"
                         "# HELP easypost_sync_api_authorized 0 after the API rejected the key.\n"
                         "# TYPE easypost_sync_api_authorized gauge\n"
                         "easypost_sync_api_authorized %d\n",
                      ps.in_flight, ps.auth_failed ? 0 : 1);
}
