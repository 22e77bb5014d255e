/*
 * syncjobs.c - the sync-job worker on a connection of its own and the pacer.
 *
 *   claim (eps_sync_claim, SKIP LOCKED, a lease) -> paced GET ->
 *     200        -> eps_sync_apply (upsert + done, one transaction)
 *     429, 5xx, transport error -> eps_sync_retry after Retry-After or
 *                                  capped exponential backoff with jitter
 *     401, 403   -> eps_sync_release; the pacer stops until the key
 *                   changes (no retry storm); /readyz reports it
 *     404, 4xx   -> eps_sync_fail (not retried)
 *   A daemon killed mid-job leaves the job running with a lease; when the
 *   lease runs out any replica claims it again. While a job is held here
 *   (queued in the pacer, e.g. behind a 429 pause, or in flight) its lease is
 *   renewed every third of its length, so a live worker keeps what it
 *   claimed however long the pacer makes it wait. Every transition names the
 *   claim (instance, attempt), so a late answer cannot touch a job that
 *   another claim holds.
 */
#include "syncjobs.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "epevent.h"
#include "log.h"
#include "metrics.h"
#include "pacer.h"
#include "util.h"

#define SYNC_RETRY_BASE_MS 1000u
#define SYNC_RETRY_CAP_MS 300000u

struct sjob {
        struct sjob *prev, *next; /* the jobs held, for the lease renewal */
        struct syncjobs *w;
        char id[37];
        char kind[16];
        char object_id[EPEVENT_ID_MAX + 1];
        int attempts;
};

struct syncjobs {
        struct db_conn *conn;
        struct pacer *pacer;
        struct event *claim_timer, *renew_timer, *gauge_timer;
        struct sjob *jobs; /* held: claimed and not answered yet */
        unsigned held;
        bool stopped, claiming, counting, renewing;
        char *instance_id;
        long interval, concurrency, lease_s, max_attempts, gauges_s;
        struct syncjobs_stats stats;
};

static void arm_claim(struct syncjobs *w, bool soon);

static void
hold(struct syncjobs *w, struct sjob *j)
{
        j->next = w->jobs;
        if (w->jobs)
                w->jobs->prev = j;
        w->jobs = j;
        w->held++;
        if (!evtimer_pending(w->renew_timer, NULL)) {
                struct timeval tv = { w->lease_s / 3 > 0 ? w->lease_s / 3 : 1, 0 };
                evtimer_add(w->renew_timer, &tv);
        }
}

static void
unhold(struct syncjobs *w, struct sjob *j)
{
        if (j->prev)
                j->prev->next = j->next;
        else
                w->jobs = j->next;
        if (j->next)
                j->next->prev = j->prev;
        w->held--;
}

static void
renewed_cb(PGresult *res, void *arg)
{
        struct syncjobs *w = arg;

        w->renewing = false;
        if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn("sync", "renewing the jobs' leases failed: %s", PQresultErrorMessage(res));
}

/* Every third of the lease while jobs are held: extends what is still this
 * worker's claim (instance, attempt). */
static void
renew_tick(evutil_socket_t fd, short what, void *arg)
{
        struct syncjobs *w = arg;
        struct strbuf ids = { 0 }, att = { 0 };
        char lease[24];

        (void)fd;
        (void)what;
        if (w->jobs == NULL || w->stopped)
                return;
        struct timeval tv = { w->lease_s / 3 > 0 ? w->lease_s / 3 : 1, 0 };
        evtimer_add(w->renew_timer, &tv);
        if (w->renewing || !db_conn_ready(w->conn))
                return;
        strbuf_printf(&ids, "{");
        strbuf_printf(&att, "{");
        for (const struct sjob *j = w->jobs; j; j = j->next) {
                strbuf_printf(&ids, "%s%s", j == w->jobs ? "" : ",", j->id);
                strbuf_printf(&att, "%s%d", j == w->jobs ? "" : ",", j->attempts);
        }
        strbuf_printf(&ids, "}");
        strbuf_printf(&att, "}");
        snprintf(lease, sizeof(lease), "%ld", w->lease_s);
        const char *v[4] = { ids.data, att.data, w->instance_id, lease };
        if (db_conn_query(w->conn, "SELECT eps_sync_renew($1::uuid[], $2::int[], $3, $4::int)", 4, v,
                          renewed_cb, w) == 0)
                w->renewing = true;
        strbuf_free(&ids);
        strbuf_free(&att);
}

static bool
idle(const struct syncjobs *w)
{
        return w->stopped || w->interval <= 0 || !pacer_enabled(w->pacer) ||
               pacer_auth_failed(w->pacer);
}

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
        struct syncjobs *w = arg;

        if (res == NULL)
                return; /* connection lost: the lease runs out, the job is claimed again */
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                log_warn("sync", "recording a job's outcome failed: %s", PQresultErrorMessage(res));
                return;
        }
        const char *st = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "gone";
        if (strcmp(st, "done") == 0) {
                w->stats.done++;
        } else if (strcmp(st, "pending") == 0) {
                w->stats.retried++;
        } else if (strcmp(st, "failed") == 0) {
                log_warn("sync", "a sync job ran out of attempts (sync_max_attempts %ld): failed",
                         w->max_attempts);
                w->stats.failed++;
        } else {
                log_info("sync", "a job's lease ran out before its answer: another claim holds it");
        }
}

static void
job_query(struct syncjobs *w, const char *sql, int n, const char *const *vals, db_query_fn fn)
{
        /* connection down: the job keeps its lease and is claimed again later */
        if (db_conn_query(w->conn, sql, n, vals, fn, w) != 0)
                log_debug("sync", "job result not recorded: database unavailable");
}

/* Release (back to pending, no attempt used), fail (not retried) or retry later. */
static void
job_release(struct syncjobs *w, const struct sjob *j, const char *err, const char *status,
            const char *attempt)
{
        const char *v[5] = { j->id, err, status, w->instance_id, attempt };
        job_query(w, "SELECT eps_sync_release($1::uuid, $2, $3::int, $4, $5::int)", 5, v, ignore_cb);
}

static void
job_fail(struct syncjobs *w, const struct sjob *j, const char *err, const char *status,
         const char *attempt)
{
        const char *v[5] = { j->id, err, status, w->instance_id, attempt };
        job_query(w, "SELECT eps_sync_fail($1::uuid, $2, $3::int, $4, $5::int)", 5, v, ignore_cb);
        w->stats.failed++;
}

static void
job_apply(struct syncjobs *w, const struct sjob *j, const struct httpc_resp *r, const char *attempt,
          const char *max, const char *delay, const char *status)
{
        json_error_t je;
        json_t *o = json_loadb(r->body, r->len, 0, &je);

        if (json_is_object(o) && json_is_string(json_object_get(o, "id"))) {
                const char *v[6] = { j->id, r->body, w->instance_id, attempt, max, delay };
                job_query(w, "SELECT eps_sync_apply($1::uuid, $2::jsonb, $3, $4::int, $5::int,"
                             " $6::bigint)", 6, v, outcome_cb);
        } else {
                char err[300];
                snprintf(err, sizeof(err), "200 with a body that is not an object: %s", je.text);
                job_fail(w, j, err, status, attempt);
        }
        json_decref(o);
}

static void
job_http_done(const struct httpc_resp *r, void *arg)
{
        struct sjob *j = arg;
        struct syncjobs *w = j->w;
        char err[300], status[16], attempt[16], max[16], delay[32];

        unhold(w, j);
        snprintf(status, sizeof(status), "%ld", r->status);
        snprintf(attempt, sizeof(attempt), "%d", j->attempts);
        snprintf(max, sizeof(max), "%ld", w->max_attempts);
        if (r->rc == CURLE_ABORTED_BY_CALLBACK) {
                /* not sent after a 401/403: back to pending at once rather than after the lease */
                if (!w->stopped)
                        job_release(w, j, r->error, "0", attempt);
                free(j);
                return;
        }
        unsigned ms = r->retry_after_s >= 0
                              ? (unsigned)r->retry_after_s * 1000u
                              : backoff_ms((unsigned)(j->attempts > 0 ? j->attempts - 1 : 0),
                                           SYNC_RETRY_BASE_MS, SYNC_RETRY_CAP_MS);
        snprintf(delay, sizeof(delay), "%u", ms);
        if (r->rc == CURLE_OK && r->status == 200) {
                job_apply(w, j, r, attempt, max, delay, status);
        } else if (r->rc == CURLE_OK && (r->status == 401 || r->status == 403)) {
                snprintf(err, sizeof(err), "HTTP %ld: API key rejected", r->status);
                job_release(w, j, err, status, attempt);
        } else if (r->rc == CURLE_OK && r->status >= 400 && r->status < 500 && r->status != 429) {
                snprintf(err, sizeof(err), "HTTP %ld from GET %s %s", r->status, j->kind, j->object_id);
                log_warn("sync", "job %s %s failed: HTTP %ld (request %s), not retried", j->kind,
                         j->object_id, r->status, r->request_id);
                job_fail(w, j, err, status, attempt);
        } else {
                if (r->rc != CURLE_OK)
                        snprintf(err, sizeof(err), "transport: %s", r->error);
                else
                        snprintf(err, sizeof(err), "HTTP %ld", r->status);
                log_info("sync", "job %s %s: %s, retry in %u ms", j->kind, j->object_id, err, ms);
                const char *v[7] = { j->id, err, status, delay, w->instance_id, attempt, max };
                job_query(w, "SELECT eps_sync_retry($1::uuid, $2, $3::int, $4::bigint, $5, $6::int,"
                             " $7::int)", 7, v, outcome_cb);
        }
        free(j);
        arm_claim(w, true);
}

static void
claim_cb(PGresult *res, void *arg)
{
        struct syncjobs *w = arg;

        w->claiming = false;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
                for (int i = 0; i < PQntuples(res); i++) {
                        struct sjob *j = xcalloc(1, sizeof(*j));
                        j->w = w;
                        snprintf(j->id, sizeof(j->id), "%s", PQgetvalue(res, i, 0));
                        snprintf(j->kind, sizeof(j->kind), "%s", PQgetvalue(res, i, 1));
                        snprintf(j->object_id, sizeof(j->object_id), "%s", PQgetvalue(res, i, 2));
                        j->attempts = atoi(PQgetvalue(res, i, 3));
                        hold(w, j);
                        pacer_get(w->pacer,
                                  pacer_url(w->pacer, strcmp(j->kind, "tracker") == 0 ? "/trackers/%s%s"
                                                                                      : "/shipments/%s%s",
                                            j->object_id, NULL),
                                  job_http_done, j);
                }
        } else if (res) {
                log_warn("sync", "claiming jobs failed: %s", PQresultErrorMessage(res));
        }
        arm_claim(w, false);
}

static void
claim_tick(evutil_socket_t fd, short what, void *arg)
{
        struct syncjobs *w = arg;
        char n[24], lease[24], max[24];

        (void)fd;
        (void)what;
        if (w->claiming || idle(w))
                return;
        unsigned room = (long)w->held >= w->concurrency ? 0 : (unsigned)(w->concurrency - (long)w->held);
        if (room == 0 || !db_conn_ready(w->conn)) {
                arm_claim(w, false);
                return;
        }
        snprintf(n, sizeof(n), "%u", room);
        snprintf(lease, sizeof(lease), "%ld", w->lease_s);
        snprintf(max, sizeof(max), "%ld", w->max_attempts);
        const char *vals[4] = { n, w->instance_id, lease, max };
        if (db_conn_query(w->conn, "SELECT id, kind, object_id, attempts"
                                   " FROM eps_sync_claim($1::int, $2, $3::int, $4::int)",
                          4, vals, claim_cb, w) == 0)
                w->claiming = true;
        else
                arm_claim(w, false);
}

static void
arm_claim(struct syncjobs *w, bool soon)
{
        if (w->claiming || idle(w))
                return;
        struct timeval tv = { soon ? 0 : w->interval, 0 };
        if (soon || !evtimer_pending(w->claim_timer, NULL))
                evtimer_add(w->claim_timer, &tv);
}

static void refresh_gauges(struct syncjobs *w);

static void
conn_ready(struct db_conn *c, void *arg)
{
        (void)c;
        arm_claim(arg, true);
        refresh_gauges(arg);
}

static void
gauge_tick(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        refresh_gauges(arg);
}

static const struct db_conn_hooks hooks = { .on_ready = conn_ready };

static void
set(struct syncjobs *w, const struct syncjobs_settings *st)
{
        free(w->instance_id);
        w->instance_id = xstrdup(st->instance_id);
        w->interval = st->interval;
        w->concurrency = st->concurrency;
        w->lease_s = st->lease_s;
        w->max_attempts = st->max_attempts;
        w->gauges_s = st->gauges_s > 0 ? st->gauges_s : 60;
}

static void
arm_gauges(struct syncjobs *w)
{
        struct timeval tv = { w->gauges_s, 0 };

        if (w->gauge_timer && !w->stopped) {
                evtimer_del(w->gauge_timer);
                evtimer_add(w->gauge_timer, &tv);
        }
}

struct syncjobs *
syncjobs_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
             const struct syncjobs_settings *st)
{
        struct syncjobs *w = xcalloc(1, sizeof(*w));

        w->pacer = pacer;
        w->conn = db_conn_new(base, conninfo, "sync", &hooks, w);
        w->claim_timer = evtimer_new(base, claim_tick, w);
        w->renew_timer = evtimer_new(base, renew_tick, w);
        w->gauge_timer = event_new(base, -1, EV_PERSIST, gauge_tick, w);
        set(w, st);
        return w;
}

void
syncjobs_start(struct syncjobs *w)
{
        if (!pacer_enabled(w->pacer))
                return;
        db_conn_start(w->conn);
        arm_claim(w, false);
        arm_gauges(w);
}

void
syncjobs_reload(struct syncjobs *w, const struct syncjobs_settings *st)
{
        set(w, st);
        if (pacer_enabled(w->pacer) && db_conn_state(w->conn) == DB_DOWN && !w->stopped)
                db_conn_start(w->conn);
        evtimer_del(w->claim_timer);
        arm_claim(w, true);
        if (pacer_enabled(w->pacer))
                arm_gauges(w);
}

void
syncjobs_stop(struct syncjobs *w)
{
        w->stopped = true;
        evtimer_del(w->claim_timer);
        evtimer_del(w->renew_timer);
        if (w->gauge_timer)
                evtimer_del(w->gauge_timer);
}

void
syncjobs_free(struct syncjobs *w)
{
        if (w == NULL)
                return;
        w->stopped = true;
        db_conn_free(w->conn); /* in-flight callbacks run now, as lost */
        event_free(w->claim_timer);
        event_free(w->renew_timer);
        if (w->gauge_timer)
                event_free(w->gauge_timer);
        free(w->instance_id);
        free(w);
}

static void
gauges_cb(PGresult *res, void *arg)
{
        struct syncjobs *w = arg;

        w->counting = false;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                if (res)
                        log_warn("sync", "counting sync jobs failed: %s", PQresultErrorMessage(res));
                return;
        }
        w->stats.pending = atoll(PQgetvalue(res, 0, 0));
        w->stats.running = atoll(PQgetvalue(res, 0, 1));
        w->stats.failed_rows = atoll(PQgetvalue(res, 0, 2));
        w->stats.oldest_pending_s = atof(PQgetvalue(res, 0, 3));
}

/* The rows by status, for /metrics: on each connect and every gauges_s;
 * skipped while the connection is down. */
static void
refresh_gauges(struct syncjobs *w)
{
        if (w->counting || w->stopped || !db_conn_ready(w->conn))
                return;
        if (db_conn_query(w->conn,
                          "SELECT (SELECT count(*) FROM sync_jobs WHERE status = 'pending'),"
                          " (SELECT count(*) FROM sync_jobs WHERE status = 'running'),"
                          " (SELECT count(*) FROM sync_jobs WHERE status = 'failed'),"
                          " (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                          " FROM sync_jobs WHERE status = 'pending')",
                          0, NULL, gauges_cb, w) == 0)
                w->counting = true;
}

void
syncjobs_snapshot(const struct syncjobs *w, struct syncjobs_stats *out)
{
        memset(out, 0, sizeof(*out));
        if (w)
                *out = w->stats;
}

void
syncjobs_render_metrics(const struct syncjobs *w, struct strbuf *b)
{
        struct syncjobs_stats js;

        syncjobs_snapshot(w, &js);
        strbuf_printf(b, "# HELP easypost_sync_sync_job_attempts_total Sync job attempts ended by this "
                         "process, by outcome (retried = to be tried again).\n"
                         "# TYPE easypost_sync_sync_job_attempts_total counter\n"
                         "easypost_sync_sync_job_attempts_total{outcome=\"done\"} %llu\n"
                         "easypost_sync_sync_job_attempts_total{outcome=\"retried\"} %llu\n"
                         "easypost_sync_sync_job_attempts_total{outcome=\"failed\"} %llu\n",
                      (unsigned long long)js.done, (unsigned long long)js.retried,
                      (unsigned long long)js.failed);
        strbuf_printf(b, "# HELP easypost_sync_sync_jobs Rows of sync_jobs by status, read on "
                         "the system_metrics tick, every 60 s without one (0 when unknown).\n"
                         "# TYPE easypost_sync_sync_jobs gauge\n"
                         "easypost_sync_sync_jobs{state=\"pending\"} %lld\n"
                         "easypost_sync_sync_jobs{state=\"running\"} %lld\n"
                         "easypost_sync_sync_jobs{state=\"failed\"} %lld\n"
                         "# HELP easypost_sync_sync_jobs_oldest_pending_seconds Age of the oldest pending "
                         "sync job (0 if none).\n"
                         "# TYPE easypost_sync_sync_jobs_oldest_pending_seconds gauge\n"
                         "easypost_sync_sync_jobs_oldest_pending_seconds %.3f\n",
                      js.pending, js.running, js.failed_rows, js.oldest_pending_s);
}
