/*
 * sync.c - sync worker and backfill on libcurl multi (httpc) and the jobs
 * connection.
 *
 * Jobs:  claim (eps_sync_claim, SKIP LOCKED, a lease) -> paced GET ->
 *          200        -> eps_sync_apply (upsert + done, one transaction)
 *          429, 5xx, transport error -> eps_sync_retry after Retry-After or
 *                                       capped exponential backoff with jitter
 *          401, 403   -> eps_sync_release; the worker stops until the key
 *                        changes (no retry storm); /readyz reports it
 *          404, 4xx   -> eps_sync_fail (not retried)
 *        A daemon killed mid-job leaves the job running with a lease; when
 *        the lease runs out any replica claims it again.
 *
 * Backfill:  IDLE -> cursor (sync_state) -> list /events after it (follow
 *   has_more) -> which ids are not stored -> for each, its delivery
 *   attempts (/events/{id}/payloads) hold the full body EasyPost signed ->
 *   ingest through the webhook path with source 'backfill' -> when all are
 *   committed, save the newest listed id as the cursor.
 *   The list omits `result`; an event with no recorded payload is stored as
 *   listed, marked partial (a tracker event then records why it could not be
 *   projected), and the real delivery replaces it when it comes.
 */
#include "sync.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "db_conn.h"
#include "epevent.h"
#include "httpc.h"
#include "ingest.h"
#include "jobs.h"
#include "metrics.h"
#include "log.h"
#include "util.h"

#define SYNC_CONNECT_MS 10000L
#define SYNC_RETRY_BASE_MS 1000u
#define SYNC_RETRY_CAP_MS 300000u
#define BACKFILL_PAGE 100
#define BACKFILL_MAX_PAGES 50

typedef void (*preq_fn)(struct sync *s, const struct httpc_resp *r, void *arg);

struct preq {
        struct preq *next;
        const char *method; /* a static string */
        char *url;
        char *body;         /* JSON or NULL */
        preq_fn fn;
        void *arg;
};

struct sjob {
        char id[37];
        char kind[16];
        char object_id[EPEVENT_ID_MAX + 1];
        int attempts;
};

enum bf_state { BF_IDLE, BF_CURSOR, BF_LIST, BF_CHECK, BF_FETCH, BF_SAVE };

struct bf_item {
        char id[EPEVENT_ID_MAX + 1];
        char *listed; /* the list item's JSON, used when no payload exists */
};

struct sync {
        struct app *app;
        struct httpc *hc;
        struct event *claim_timer, *pace_timer, *backfill_timer;
        struct preq *qhead, *qtail;
        unsigned queued, in_flight, jobs_held;
        uint64_t next_send_us;
        bool stopped, auth_failed, claiming;
        bool bf_again; /* a run was asked for while one was in progress */
        struct sync_stats stats;
        /* backfill run */
        enum bf_state bf;
        char *bf_cursor;
        char *bf_newest;
        int bf_pages;
        struct bf_item *bf_items;
        size_t bf_n, bf_cap, bf_next, bf_pending;
        bool bf_failed;
};

static void pump(struct sync *s);
static void arm_claim(struct sync *s, bool soon);
static void arm_backfill(struct sync *s);

static const char *
api_key(const struct sync *s)
{
        return s->app->cfg->api_key;
}

bool
sync_enabled(const struct sync *s)
{
        return api_key(s)[0] != '\0';
}

static struct db_conn *
conn(struct sync *s)
{
        return jobs_conn(s->app->jobs);
}

static void ignore_cb(PGresult *res, void *arg);

/* ---- the pacer: concurrency and rate for every API request ---- */

struct preq_ctx {
        struct sync *s;
        struct preq *p;
};

static void
preq_done(const struct httpc_resp *r, void *arg)
{
        struct preq_ctx *c = arg;
        struct sync *s = c->s;
        struct preq *p = c->p;

        s->in_flight--;
        if (r->rc != CURLE_ABORTED_BY_CALLBACK) {
                long cls = r->status / 100;
                s->stats.requests_by_class[r->rc == CURLE_OK && cls >= 1 && cls <= 5 ? cls : 0]++;
                if (r->status == 429) {
                        /* the API asked everyone to slow down, not just this request */
                        long ra = r->retry_after_s > 0 ? r->retry_after_s : 1;
                        if (ra > s->app->cfg->api_max_retry_after)
                                ra = s->app->cfg->api_max_retry_after;
                        uint64_t pause = (uint64_t)ra * 1000000u;
                        uint64_t until = clock_mono_us() + pause;
                        if (until > s->next_send_us)
                                s->next_send_us = until;
                }
        }
        p->fn(s, r, p->arg);
        free(p->url);
        free(p->body);
        free(p);
        free(c);
        if (!s->stopped)
                pump(s);
}

static void
pace_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        pump(arg);
}

static void
pump(struct sync *s)
{
        struct app *a = s->app;
        uint64_t gap = 1000000u / (uint64_t)a->cfg->api_rate;

        while (s->qhead && s->in_flight < (unsigned)a->cfg->api_concurrency && !s->stopped &&
               !s->auth_failed) {
                uint64_t now = clock_mono_us();
                if (now < s->next_send_us) {
                        uint64_t us = s->next_send_us - now;
                        struct timeval tv = { (time_t)(us / 1000000u), (suseconds_t)(us % 1000000u) };
                        evtimer_add(s->pace_timer, &tv);
                        return;
                }
                struct preq *p = s->qhead;
                s->qhead = p->next;
                if (s->qhead == NULL)
                        s->qtail = NULL;
                s->queued--;
                s->next_send_us = (now > s->next_send_us ? now : s->next_send_us) + gap;
                struct preq_ctx *c = xmalloc(sizeof(*c));
                c->s = s;
                c->p = p;
                s->in_flight++;
                if (httpc_request(s->hc, p->method, p->url, p->body, api_key(s), SYNC_CONNECT_MS,
                                  a->cfg->api_timeout * 1000L, preq_done, c) != 0) {
                        struct httpc_resp r = { .rc = CURLE_FAILED_INIT, .body = "",
                                                .error = "request not started", .request_id = "",
                                                .retry_after_s = -1 };
                        preq_done(&r, c);
                }
        }
}

/* Queues a request (taking url and body over) and sends what the pacer allows. */
static void
enqueue(struct sync *s, const char *method, char *url, char *body, preq_fn fn, void *arg)
{
        struct preq *p = xcalloc(1, sizeof(*p));

        p->method = method;
        p->url = url;
        p->body = body;
        p->fn = fn;
        p->arg = arg;
        if (s->qtail)
                s->qtail->next = p;
        else
                s->qhead = p;
        s->qtail = p;
        s->queued++;
        pump(s);
}

static void
request(struct sync *s, char *url, preq_fn fn, void *arg)
{
        enqueue(s, "GET", url, NULL, fn, arg);
}

/* api_url + path (already escaped). */
static char *
api_join(struct sync *s, const char *path)
{
        const char *base = s->app->cfg->api_url;
        size_t bl = strlen(base);
        while (bl > 0 && base[bl - 1] == '/')
                bl--;
        size_t n = bl + strlen(path) + 1;
        char *url = xmalloc(n);
        snprintf(url, n, "%.*s%s", (int)bl, base, path);
        return url;
}

static char *
api_url(struct sync *s, const char *fmt, const char *a1, const char *a2)
{
        char path[512];
        char *e1 = a1 ? curl_easy_escape(NULL, a1, 0) : NULL;
        char *e2 = a2 ? curl_easy_escape(NULL, a2, 0) : NULL;

        snprintf(path, sizeof(path), fmt, e1 ? e1 : "", e2 ? e2 : "");
        curl_free(e1);
        curl_free(e2);
        return api_join(s, path);
}

static void job_http_done(struct sync *s, const struct httpc_resp *r, void *arg);

/* Drops requests not yet sent; their owners see them as cancelled, and jobs
 * among them go back to pending at once rather than waiting out a lease. */
static void
drop_queued(struct sync *s)
{
        static const char *release =
                "SELECT eps_sync_release($1::uuid, 'not sent: API key rejected', 0, $2, $3::int)";

        while (s->qhead) {
                struct preq *p = s->qhead;
                s->qhead = p->next;
                s->queued--;
                if (p->fn == job_http_done && !s->stopped) {
                        const struct sjob *j = p->arg;
                        char attempt[16];
                        snprintf(attempt, sizeof(attempt), "%d", j->attempts);
                        const char *vals[3] = { j->id, s->app->instance_id, attempt };
                        if (db_conn_query(conn(s), release, 3, vals, ignore_cb, s) != 0)
                                log_debug("sync", "job not released: database unavailable");
                }
                struct httpc_resp r = { .rc = CURLE_ABORTED_BY_CALLBACK, .body = "", .error = "",
                                        .request_id = "", .retry_after_s = -1 };
                p->fn(s, &r, p->arg);
                free(p->url);
                free(p->body);
                free(p);
        }
        s->qtail = NULL;
}

static void
auth_rejected(struct sync *s, long status)
{
        if (!s->auth_failed)
                log_err("sync", "EasyPost API rejected the API key (HTTP %ld): sync worker and "
                                "backfill stopped until the key changes (SIGHUP)",
                        status);
        s->auth_failed = true;
        drop_queued(s);
}

/* ---- requests of other modules, through the same pacer ---- */

struct ext_req {
        sync_api_fn fn;
        void *arg;
};

static void
ext_done(struct sync *s, const struct httpc_resp *r, void *arg)
{
        struct ext_req *x = arg;

        if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403))
                auth_rejected(s, r->status);
        x->fn(r, x->arg);
        free(x);
}

int
sync_api_request(struct sync *s, const char *method, const char *path, const char *json,
                 sync_api_fn fn, void *arg)
{
        if (s->stopped || s->auth_failed || !sync_enabled(s))
                return -1;
        struct ext_req *x = xmalloc(sizeof(*x));
        x->fn = fn;
        x->arg = arg;
        enqueue(s, strcmp(method, "PATCH") == 0 ? "PATCH" : "GET", api_join(s, path),
                json ? xstrdup(json) : NULL, ext_done, x);
        return 0;
}

/* ---- jobs ---- */

static void
ignore_cb(PGresult *res, void *arg)
{
        (void)arg;
        if (res && PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
                log_warn("sync", "job update failed: %s", PQresultErrorMessage(res));
}

/* A job's new status, from eps_sync_apply or eps_sync_retry: counted. */
static void
outcome_cb(PGresult *res, void *arg)
{
        struct sync *s = arg;

        if (res == NULL)
                return; /* connection lost: the lease runs out, the job is claimed again */
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                log_warn("sync", "recording a job's outcome failed: %s", PQresultErrorMessage(res));
                return;
        }
        const char *st = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "gone";
        if (strcmp(st, "done") == 0) {
                s->stats.jobs_done++;
        } else if (strcmp(st, "pending") == 0) {
                s->stats.jobs_retried++;
        } else if (strcmp(st, "failed") == 0) {
                log_warn("sync", "a sync job ran out of attempts (sync_max_attempts %ld): failed",
                         s->app->cfg->sync_max_attempts);
                s->stats.jobs_failed++;
        } else {
                log_info("sync", "a job's lease ran out before its answer: another claim holds it");
        }
}

static void
job_query(struct sync *s, const char *sql, int n, const char *const *vals, db_query_fn fn)
{
        /* connection down: the job keeps its lease and is claimed again later */
        if (db_conn_query(conn(s), sql, n, vals, fn, s) != 0)
                log_debug("sync", "job result not recorded: database unavailable");
}

static void
job_http_done(struct sync *s, const struct httpc_resp *r, void *arg)
{
        struct sjob *j = arg;
        char err[300], status[16], attempt[16], max[16], delay[32];
        const char *vals[7];

        s->jobs_held--;
        if (r->rc == CURLE_ABORTED_BY_CALLBACK) {
                free(j);
                return;
        }
        /* every transition names the claim: (instance, attempt) */
        snprintf(status, sizeof(status), "%ld", r->status);
        snprintf(attempt, sizeof(attempt), "%d", j->attempts);
        snprintf(max, sizeof(max), "%ld", s->app->cfg->sync_max_attempts);
        long cap = s->app->cfg->api_max_retry_after;
        unsigned ms = r->retry_after_s >= 0
                              ? (unsigned)(r->retry_after_s > cap ? cap : r->retry_after_s) * 1000u
                              : backoff_ms((unsigned)(j->attempts > 0 ? j->attempts - 1 : 0),
                                           SYNC_RETRY_BASE_MS, SYNC_RETRY_CAP_MS);
        snprintf(delay, sizeof(delay), "%u", ms);
        vals[0] = j->id;
        if (r->rc == CURLE_OK && r->status == 200) {
                json_error_t je;
                json_t *o = json_loadb(r->body, r->len, 0, &je);
                if (json_is_object(o) && json_is_string(json_object_get(o, "id"))) {
                        const char *v[6] = { j->id, r->body, s->app->instance_id, attempt, max, delay };
                        job_query(s, "SELECT eps_sync_apply($1::uuid, $2::jsonb, $3, $4::int, $5::int,"
                                     " $6::bigint)", 6, v, outcome_cb);
                } else {
                        snprintf(err, sizeof(err), "200 with a body that is not an object: %s", je.text);
                        const char *v[5] = { j->id, err, status, s->app->instance_id, attempt };
                        job_query(s, "SELECT eps_sync_fail($1::uuid, $2, $3::int, $4, $5::int)", 5, v,
                                  ignore_cb);
                        s->stats.jobs_failed++;
                }
                json_decref(o);
        } else if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403)) {
                auth_rejected(s, r->status);
                snprintf(err, sizeof(err), "HTTP %ld: API key rejected", r->status);
                const char *v[5] = { j->id, err, status, s->app->instance_id, attempt };
                job_query(s, "SELECT eps_sync_release($1::uuid, $2, $3::int, $4, $5::int)", 5, v,
                          ignore_cb);
        } else if (r->rc == CURLE_OK && r->status >= 400 && r->status < 500 && r->status != 429) {
                snprintf(err, sizeof(err), "HTTP %ld from GET %s %s", r->status, j->kind, j->object_id);
                log_warn("sync", "job %s %s failed: HTTP %ld (request %s), not retried", j->kind,
                         j->object_id, r->status, r->request_id);
                const char *v[5] = { j->id, err, status, s->app->instance_id, attempt };
                job_query(s, "SELECT eps_sync_fail($1::uuid, $2, $3::int, $4, $5::int)", 5, v,
                          ignore_cb);
                s->stats.jobs_failed++;
        } else {
                if (r->rc != CURLE_OK)
                        snprintf(err, sizeof(err), "transport: %s", r->error);
                else
                        snprintf(err, sizeof(err), "HTTP %ld", r->status);
                log_info("sync", "job %s %s: %s, retry in %u ms", j->kind, j->object_id, err, ms);
                vals[1] = err;
                vals[2] = status;
                vals[3] = delay;
                vals[4] = s->app->instance_id;
                vals[5] = attempt;
                vals[6] = max;
                job_query(s, "SELECT eps_sync_retry($1::uuid, $2, $3::int, $4::bigint, $5, $6::int,"
                             " $7::int)", 7, vals, outcome_cb);
        }
        free(j);
        arm_claim(s, true);
}

static unsigned
room(const struct sync *s)
{
        long cap = s->app->cfg->api_concurrency;
        long used = (long)s->jobs_held;
        return used >= cap ? 0 : (unsigned)(cap - used);
}

static void
claim_cb(PGresult *res, void *arg)
{
        struct sync *s = arg;
        int n = 0;

        s->claiming = false;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
                n = PQntuples(res);
                for (int i = 0; i < n; i++) {
                        struct sjob *j = xcalloc(1, sizeof(*j));
                        snprintf(j->id, sizeof(j->id), "%s", PQgetvalue(res, i, 0));
                        snprintf(j->kind, sizeof(j->kind), "%s", PQgetvalue(res, i, 1));
                        snprintf(j->object_id, sizeof(j->object_id), "%s", PQgetvalue(res, i, 2));
                        j->attempts = atoi(PQgetvalue(res, i, 3));
                        s->jobs_held++;
                        request(s,
                                api_url(s, strcmp(j->kind, "tracker") == 0 ? "/trackers/%s%s"
                                                                           : "/shipments/%s%s",
                                        j->object_id, NULL),
                                job_http_done, j);
                }
        } else if (res) {
                log_warn("sync", "claiming jobs failed: %s", PQresultErrorMessage(res));
        }
        arm_claim(s, false);
}

static void
claim_tick(evutil_socket_t fd, short what, void *arg)
{
        struct sync *s = arg;
        struct app *a = s->app;
        char n[24], lease[24], max[24];
        const char *vals[4];

        (void)fd;
        (void)what;
        if (s->stopped || s->claiming || !sync_enabled(s) || s->auth_failed ||
            a->cfg->sync_interval <= 0)
                return;
        unsigned r = room(s);
        if (r == 0 || !db_conn_ready(conn(s))) {
                arm_claim(s, false);
                return;
        }
        snprintf(n, sizeof(n), "%u", r);
        snprintf(lease, sizeof(lease), "%ld", a->cfg->api_timeout + 5);
        snprintf(max, sizeof(max), "%ld", a->cfg->sync_max_attempts);
        vals[0] = n;
        vals[1] = a->instance_id;
        vals[2] = lease;
        vals[3] = max;
        if (db_conn_query(conn(s), "SELECT id, kind, object_id, attempts"
                                   " FROM eps_sync_claim($1::int, $2, $3::int, $4::int)",
                          4, vals, claim_cb, s) == 0)
                s->claiming = true;
        else
                arm_claim(s, false);
}

static void
arm_claim(struct sync *s, bool soon)
{
        long iv = s->app->cfg->sync_interval;

        if (s->stopped || s->claiming || iv <= 0 || !sync_enabled(s) || s->auth_failed)
                return;
        struct timeval tv = { soon ? 0 : iv, 0 };
        if (soon || !evtimer_pending(s->claim_timer, NULL))
                evtimer_add(s->claim_timer, &tv);
}

void
sync_conn_ready(struct sync *s)
{
        arm_claim(s, true);
}

/* ---- backfill ---- */

static void bf_fetch_next(struct sync *s);

static void
bf_reset(struct sync *s)
{
        for (size_t i = 0; i < s->bf_n; i++)
                free(s->bf_items[i].listed);
        free(s->bf_items);
        free(s->bf_cursor);
        free(s->bf_newest);
        s->bf_items = NULL;
        s->bf_cursor = s->bf_newest = NULL;
        s->bf_n = s->bf_cap = s->bf_next = s->bf_pending = 0;
        s->bf_pages = 0;
        s->bf_failed = false;
        s->bf = BF_IDLE;
}

static void
bf_finish(struct sync *s, const char *why)
{
        if (why)
                log_warn("sync", "backfill stopped: %s (cursor kept)", why);
        bf_reset(s);
        arm_backfill(s);
}

static void
bf_saved(PGresult *res, void *arg)
{
        struct sync *s = arg;

        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
                bf_finish(s, "cursor not saved");
                return;
        }
        log_info("sync", "backfill done: %zu events listed, %llu recovered", s->bf_n,
                 (unsigned long long)s->stats.backfill_recovered);
        bf_finish(s, NULL);
}

static void
bf_save(struct sync *s)
{
        const char *vals[1] = { s->bf_newest };

        if (s->bf_newest == NULL) {
                bf_finish(s, NULL);
                return;
        }
        s->bf = BF_SAVE;
        if (db_conn_query(conn(s),
                          "INSERT INTO sync_state (key, value) VALUES ('backfill_cursor', $1)"
                          " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                          1, vals, bf_saved, s) != 0)
                bf_finish(s, "database unavailable");
}

static void
bf_item_done(struct ingest_item *it, enum ingest_result r)
{
        struct sync *s = it->arg;

        if (s->stopped) {
                ingest_item_fini(it);
                free(it);
                return;
        }
        if (r == INGEST_UNAVAILABLE)
                s->bf_failed = true;
        else if (r == INGEST_STORED)
                s->stats.backfill_recovered++;
        ingest_item_fini(it);
        free(it);
        if (--s->bf_pending == 0 && s->bf_next >= s->bf_n) {
                if (s->bf_failed)
                        bf_finish(s, "some events could not be committed");
                else
                        bf_save(s);
        }
}

/* Ingests body (taken over) for event id through the webhook path; partial:
 * the list item, which the real delivery may replace later. */
static void
bf_ingest(struct sync *s, char *body, size_t len, const char *id, bool partial)
{
        struct ingest_item *it = xcalloc(1, sizeof(*it));
        struct err e;

        e.msg[0] = '\0';
        if (epevent_parse(body, len, &it->ev, &e) != 0 || strcmp(it->ev.id, id) != 0) {
                /* the cursor stays before it: the next run tries again */
                log_warn("sync", "backfill: event %s is not usable (%s); the cursor stays before it",
                         id, e.msg[0] ? e.msg : "its body names another event");
                s->stats.backfill_unusable++;
                s->bf_failed = true;
                epevent_fini(&it->ev);
                free(body);
                free(it);
                return;
        }
        if (!ingest_has_room(s->app->ingest)) {
                s->bf_failed = true;
                epevent_fini(&it->ev);
                free(body);
                free(it);
                return;
        }
        it->owned_body = body;
        it->arg = s;
        it->body = body;
        it->len = len;
        it->source = INGEST_BACKFILL;
        it->partial = partial;
        it->done = bf_item_done;
        uuid7_next_str(&s->app->uuid, it->uuid);
        s->bf_pending++;
        s->stats.backfill_events++;
        ingest_submit(s->app->ingest, it);
}

static void
bf_payloads_done(struct sync *s, const struct httpc_resp *r, void *arg)
{
        struct bf_item *b = &s->bf_items[(size_t)arg];
        char *chosen = NULL;

        s->bf_pending--;
        if (r->rc == CURLE_ABORTED_BY_CALLBACK)
                return;
        if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403)) {
                auth_rejected(s, r->status);
                s->bf_failed = true;
        } else if (r->rc == CURLE_OK && r->status == 200) {
                /* the newest delivery attempt whose body is this event */
                json_t *o = json_loadb(r->body, r->len, 0, NULL), *p;
                size_t i;
                json_array_foreach(json_object_get(o, "payloads"), i, p) {
                        const char *rb = json_string_value(json_object_get(p, "request_body"));
                        if (rb && strstr(rb, b->id) != NULL) {
                                free(chosen);
                                chosen = xstrdup(rb);
                        }
                }
                json_decref(o);
        } else if (!(r->rc == CURLE_OK && r->status == 404)) {
                s->bf_failed = true; /* try again next run */
        }
        if (!s->bf_failed) {
                if (chosen) {
                        bf_ingest(s, chosen, strlen(chosen), b->id, false);
                } else if (b->listed) {
                        bf_ingest(s, b->listed, strlen(b->listed), b->id, true);
                        b->listed = NULL;
                }
        } else {
                free(chosen);
        }
        bf_fetch_next(s);
}

static void
bf_fetch_next(struct sync *s)
{
        while (s->bf_next < s->bf_n && !s->stopped && !s->auth_failed &&
               s->bf_pending < (size_t)s->app->cfg->api_concurrency) {
                size_t i = s->bf_next++;
                s->bf_pending++;
                request(s, api_url(s, "/events/%s/payloads%s", s->bf_items[i].id, NULL),
                        bf_payloads_done, (void *)i);
        }
        if (s->bf_pending == 0 && s->bf_next >= s->bf_n) {
                if (s->bf_failed)
                        bf_finish(s, "some events could not be fetched or committed");
                else
                        bf_save(s);
        }
}

static void
bf_check_cb(PGresult *res, void *arg)
{
        struct sync *s = arg;

        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                bf_finish(s, "database unavailable");
                return;
        }
        /* keep only the ids the database does not have, oldest first */
        struct bf_item *keep = xcalloc(s->bf_n ? s->bf_n : 1, sizeof(*keep));
        size_t k = 0;
        for (size_t i = s->bf_n; i-- > 0;) {
                bool known = false;
                for (int r = 0; r < PQntuples(res) && !known; r++)
                        known = strcmp(PQgetvalue(res, r, 0), s->bf_items[i].id) == 0;
                if (known)
                        free(s->bf_items[i].listed);
                else
                        keep[k++] = s->bf_items[i];
        }
        free(s->bf_items);
        s->bf_items = keep;
        s->bf_cap = s->bf_n ? s->bf_n : 1;
        s->bf_n = k;
        s->bf = BF_FETCH;
        if (k > 0)
                log_info("sync", "backfill: %zu events missing from the database", k);
        bf_fetch_next(s);
}

static void
bf_check(struct sync *s)
{
        struct strbuf b = { 0 };
        const char *vals[1];

        strbuf_printf(&b, "{");
        for (size_t i = 0; i < s->bf_n; i++)
                strbuf_printf(&b, "%s\"%s\"", i ? "," : "", s->bf_items[i].id);
        strbuf_printf(&b, "}");
        vals[0] = b.data;
        s->bf = BF_CHECK;
        if (db_conn_query(conn(s), "SELECT event_id FROM webhook_events WHERE event_id = ANY($1::text[])",
                          1, vals, bf_check_cb, s) != 0)
                bf_finish(s, "database unavailable");
        strbuf_free(&b);
}

static void bf_list(struct sync *s, const char *after, const char *before);

static void
bf_list_done(struct sync *s, const struct httpc_resp *r, void *arg)
{
        (void)arg;
        if (r->rc == CURLE_ABORTED_BY_CALLBACK)
                return;
        if (r->rc != CURLE_OK || r->status != 200) {
                if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403))
                        auth_rejected(s, r->status);
                char why[200];
                snprintf(why, sizeof(why), "listing events: %s",
                         r->rc != CURLE_OK ? r->error : "HTTP error");
                bf_finish(s, why);
                return;
        }
        json_t *o = json_loadb(r->body, r->len, 0, NULL), *ev;
        json_t *events = json_object_get(o, "events");
        size_t i;
        const char *first = NULL, *last = NULL;
        json_array_foreach(events, i, ev) {
                const char *id = json_string_value(json_object_get(ev, "id"));
                if (id == NULL || !epevent_id_plain(id) || strlen(id) > EPEVENT_ID_MAX)
                        continue;
                if (first == NULL)
                        first = id;
                last = id;
                if (s->bf_n == s->bf_cap) {
                        s->bf_cap = s->bf_cap ? s->bf_cap * 2 : 128;
                        s->bf_items = xrealloc(s->bf_items, s->bf_cap * sizeof(*s->bf_items));
                }
                struct bf_item *b = &s->bf_items[s->bf_n++];
                snprintf(b->id, sizeof(b->id), "%s", id);
                b->listed = json_dumps(ev, JSON_COMPACT);
        }
        bool more = json_is_true(json_object_get(o, "has_more")) && first != NULL &&
                    ++s->bf_pages < BACKFILL_MAX_PAGES;
        if (s->bf_cursor) {
                /* newer pages follow the newest id of this one */
                if (first) {
                        free(s->bf_newest);
                        s->bf_newest = xstrdup(first);
                }
                char *next = first ? xstrdup(first) : NULL;
                json_decref(o);
                if (more)
                        bf_list(s, next, NULL);
                else
                        bf_check(s);
                free(next);
                return;
        }
        if (s->bf_newest == NULL && first)
                s->bf_newest = xstrdup(first);
        char *next = last ? xstrdup(last) : NULL;
        json_decref(o);
        if (more)
                bf_list(s, NULL, next);
        else
                bf_check(s);
        free(next);
}

static void
bf_list(struct sync *s, const char *after, const char *before)
{
        char fmt[128];

        s->bf = BF_LIST;
        snprintf(fmt, sizeof(fmt), "/events?page_size=%d%s", BACKFILL_PAGE,
                 after ? "&after_id=%s%s" : before ? "%s&before_id=%s" : "%s%s");
        request(s, api_url(s, fmt, after ? after : "", before), bf_list_done, NULL);
}

static void
bf_cursor_cb(PGresult *res, void *arg)
{
        struct sync *s = arg;

        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                bf_finish(s, "database unavailable");
                return;
        }
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
                s->bf_cursor = xstrdup(PQgetvalue(res, 0, 0));
        s->stats.backfill_runs++;
        bf_list(s, s->bf_cursor, NULL);
}

static void
backfill_tick(evutil_socket_t fd, short what, void *arg)
{
        struct sync *s = arg;

        (void)fd;
        (void)what;
        if (s->stopped || s->bf != BF_IDLE || !sync_enabled(s) || s->auth_failed)
                return;
        s->bf = BF_CURSOR;
        if (db_conn_query(conn(s), "SELECT value FROM sync_state WHERE key = 'backfill_cursor'", 0,
                          NULL, bf_cursor_cb, s) != 0)
                bf_finish(s, NULL); /* database down: next tick */
}

static void
arm_backfill(struct sync *s)
{
        long iv = s->app->cfg->backfill_interval;

        if (s->stopped || !sync_enabled(s) || s->auth_failed || s->bf != BF_IDLE)
                return;
        if (s->bf_again) {
                struct timeval now = { 0, 0 };
                s->bf_again = false;
                evtimer_del(s->backfill_timer);
                evtimer_add(s->backfill_timer, &now);
                return;
        }
        if (iv <= 0)
                return;
        struct timeval tv = { iv, 0 };
        evtimer_add(s->backfill_timer, &tv);
}

void
sync_backfill_now(struct sync *s)
{
        s->bf_again = true;
        arm_backfill(s); /* or when the run in progress ends */
}

/* ---- lifecycle ---- */

struct sync *
sync_new(struct app *a)
{
        struct sync *s = xcalloc(1, sizeof(*s));
        char ua[64];

        snprintf(ua, sizeof(ua), "easypost-sync/%s", PACKAGE_VERSION);
        s->app = a;
        s->hc = httpc_new(a->base, ua);
        s->claim_timer = evtimer_new(a->base, claim_tick, s);
        s->pace_timer = evtimer_new(a->base, pace_cb, s);
        s->backfill_timer = evtimer_new(a->base, backfill_tick, s);
        return s;
}

void
sync_start(struct sync *s)
{
        if (!sync_enabled(s)) {
                log_info("sync", "no API key: sync worker and backfill are off");
                return;
        }
        arm_claim(s, false);
        /* first backfill soon after start, then every backfill_interval */
        if (s->app->cfg->backfill_interval > 0) {
                struct timeval tv = { 1, 0 };
                evtimer_add(s->backfill_timer, &tv);
        }
}

void
sync_reload(struct sync *s)
{
        s->auth_failed = false; /* a new key deserves one try */
        evtimer_del(s->claim_timer);
        arm_claim(s, true);
        if (s->bf == BF_IDLE) {
                evtimer_del(s->backfill_timer);
                arm_backfill(s);
        }
}

void
sync_stop(struct sync *s)
{
        s->stopped = true;
        evtimer_del(s->claim_timer);
        evtimer_del(s->pace_timer);
        evtimer_del(s->backfill_timer);
}

void
sync_free(struct sync *s)
{
        if (s == NULL)
                return;
        s->stopped = true;
        httpc_free(s->hc); /* in-flight requests report ABORTED */
        drop_queued(s);
        bf_reset(s);
        event_free(s->claim_timer);
        event_free(s->pace_timer);
        event_free(s->backfill_timer);
        free(s);
}

unsigned
sync_in_flight(const struct sync *s)
{
        return s ? s->in_flight : 0;
}

bool
sync_auth_failed(const struct sync *s)
{
        return s->auth_failed;
}

const struct sync_stats *
sync_stats(const struct sync *s)
{
        return &s->stats;
}
