/*
 * timers.c - system_metrics rows and analytics refreshes.
 *
 *   metrics:   IDLE --tick--> INSERT in flight --done--> IDLE (re-armed)
 *   analytics: IDLE --tick (wall-clock slot)--> REFRESH view 0, 1, 2
 *              --> LAST refresh times (any replica) --> IDLE
 *              (and, on the same tick, the partition upkeep (parts.c) on
 *              its own connection)
 *
 * Each job's state changes in enter() only; IDLE re-arms its timer unless
 * the timers are stopped. Each connection has a deadline and per-transaction
 * limits fitting its work, so a statement stuck on a lock is cancelled and
 * the job goes on at its next tick.
 *
 * Database down: the tick is skipped with one log line (state changes only)
 * and the timer re-armed; work resumes by itself when the connection is back.
 * Analytics ticks are aligned to multiples of the interval on the wall clock
 * so that every replica names the same slot; eps_refresh_view() elects one
 * replica per view and slot.
 */
#include "timers.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

static const char *const view_names[TIMERS_NVIEWS] = {
        "analytics_daily_volume", "analytics_carrier_performance", "analytics_status_funnel",
        "analytics_refunds",
};

/* system_metrics: a short INSERT (and DELETE of old rows) */
#define TIMERS_METRICS_DEADLINE_MS 30000
#define TIMERS_METRICS_STATEMENT_MS 20000
#define TIMERS_METRICS_LOCK_MS 5000
/* a refresh may take up to an analytics interval (at least this) */
#define TIMERS_REFRESH_MIN_MS 300000
#define TIMERS_REFRESH_LOCK_MS 60000
#define TIMERS_REFRESH_MARGIN_MS 30000 /* the deadline past statement_timeout */
/* the partition upkeep: DETACH ... CONCURRENTLY waits for older snapshots,
 * and refuses to run in a pipeline behind SET LOCAL; only a deadline */
#define TIMERS_UPKEEP_DEADLINE_MS 600000

enum timers_state {
        TIMERS_STOPPED, /* not started, or drained: not re-armed */
        TIMERS_IDLE,    /* armed for the next tick */
        TIMERS_INSERT,  /* metrics: the system_metrics row in flight */
        TIMERS_REFRESH, /* analytics: refreshing view `view` */
        TIMERS_LAST,    /* analytics: reading the views' last refresh times */
};

struct timers_job {
        const char *name;         /* "metrics", "analytics": in log lines */
        enum timers_state state;
        bool failing;             /* the last run found the database unavailable (logged once) */
        struct event *timer;
};

struct timers {
        struct db_conn *conn;  /* system_metrics rows */
        struct db_conn *aconn; /* analytics refreshes only */
        struct db_conn *pconn; /* partition upkeep only */
        struct parts *parts;
        struct timers_job metrics, analytics;
        timers_sample_fn sample;
        void *sample_arg;
        char *instance_id;
        long metrics_interval, analytics_interval, retention_days;
        bool stopped;
        /* metrics window */
        uint64_t last_us;
        struct timers_sample last;
        /* analytics */
        int view;
        long long slot, slot_start; /* the analytics slot, and the unix second it starts */
        struct timers_view_stats views[TIMERS_NVIEWS];
};

static void arm_metrics(struct timers *t);
static void arm_analytics(struct timers *t);
static void refresh_next(struct timers *t);
static void read_last_refresh(struct timers *t);

static const char *
state_name(enum timers_state s)
{
        switch (s) {
        case TIMERS_STOPPED: return "stopped";
        case TIMERS_IDLE: return "idle";
        case TIMERS_INSERT: return "insert";
        case TIMERS_REFRESH: return "refresh";
        case TIMERS_LAST: return "last";
        }
        return "?";
}

/* Every change of a job's state goes through here. IDLE re-arms the job
 * (STOPPED instead once the timers are stopped); REFRESH and LAST send
 * their query. */
static void
enter(struct timers *t, struct timers_job *j, enum timers_state to)
{
        if (to == TIMERS_IDLE && t->stopped)
                to = TIMERS_STOPPED;
        log_debug("timers", "%s: %s -> %s", j->name, state_name(j->state), state_name(to));
        j->state = to;
        switch (to) {
        case TIMERS_STOPPED:
                evtimer_del(j->timer);
                break;
        case TIMERS_IDLE:
                if (j == &t->metrics)
                        arm_metrics(t);
                else
                        arm_analytics(t);
                break;
        case TIMERS_INSERT:
                break;
        case TIMERS_REFRESH:
                refresh_next(t);
                break;
        case TIMERS_LAST:
                read_last_refresh(t);
                break;
        }
}

/* One log line when a job starts or stops finding the database. */
static void
job_outcome(struct timers_job *j, bool failed, const char *what)
{
        if (failed && !j->failing)
                log_warn("timers", "%s", what);
        else if (!failed && j->failing)
                log_info("timers", "%s", what);
        j->failing = failed;
}

static const struct db_conn_hooks no_hooks = { 0 };

/* ---- system_metrics ---- */

static void
metrics_done(PGresult *res, void *arg)
{
        struct timers *t = arg;

        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
                if (!t->metrics.failing)
                        log_warn("timers", "system_metrics row not written: %s",
                                 res ? PQresultErrorMessage(res) : "connection lost");
                t->metrics.failing = true;
        } else {
                job_outcome(&t->metrics, false, "system_metrics rows written again");
        }
        enter(t, &t->metrics, TIMERS_IDLE);
}

static double
per_s(uint64_t now, uint64_t before, double secs)
{
        return (double)(now - before) / secs;
}

/* The row's 21 parameters from this sample and the last one. */
static void
row_values(const struct timers *t, const struct timers_sample *c, double secs, char v[21][48])
{
        const struct timers_sample *l = &t->last;

        snprintf(v[0], 48, "%s", "");
        snprintf(v[1], 48, "%.3f", secs);
        snprintf(v[2], 48, "%lu", c->rss_bytes);
        snprintf(v[3], 48, "%.2f", (c->cpu_seconds - l->cpu_seconds) / secs * 100.0);
        snprintf(v[4], 48, "%u", c->open_fds);
        snprintf(v[5], 48, "%u", c->queue_depth);
        snprintf(v[6], 48, "%u", c->queue_limit);
        snprintf(v[7], 48, "%u", c->conns);
        snprintf(v[8], 48, "%u", c->conns_up);
        snprintf(v[9], 48, "%u", c->conns_busy);
        snprintf(v[10], 48, "%.3f", per_s(c->requests, l->requests, secs));
        snprintf(v[11], 48, "%.3f", per_s(c->stored, l->stored, secs));
        snprintf(v[12], 48, "%.3f", per_s(c->duplicates, l->duplicates, secs));
        snprintf(v[13], 48, "%.3f", per_s(c->c4xx, l->c4xx, secs));
        snprintf(v[14], 48, "%.3f", per_s(c->c5xx, l->c5xx, secs));
        snprintf(v[15], 48, "%.3f", metrics_quantile_ms(&c->ack_window, 0.5));
        snprintf(v[16], 48, "%.3f", metrics_quantile_ms(&c->ack_window, 0.99));
        snprintf(v[17], 48, "%.3f", (double)c->ack_window.max_us / 1000.0);
        snprintf(v[18], 48, "%u", c->api_in_flight);
        snprintf(v[19], 48, "%.1f", c->uptime_s);
        snprintf(v[20], 48, "%ld", t->retention_days);
}

static void
metrics_tick(evutil_socket_t fd, short what, void *arg)
{
        struct timers *t = arg;
        uint64_t now = clock_mono_us();
        double secs = (double)(now - t->last_us) / 1e6;
        struct timers_sample c;
        char v[21][48];
        const char *vals[21];

        (void)fd;
        (void)what;
        memset(&c, 0, sizeof(c));
        t->sample(&c, t->sample_arg);
        if (secs <= 0)
                secs = 1e-6;
        row_values(t, &c, secs, v);
        for (int i = 0; i < 21; i++)
                vals[i] = v[i];
        vals[0] = t->instance_id;
        if (c.ack_window.count == 0)
                vals[15] = vals[16] = vals[17] = NULL;
        t->last_us = now;
        t->last = c;

        if (db_conn_query(t->conn,
                          "WITH old AS (DELETE FROM system_metrics"
                          " WHERE ts < now() - make_interval(days => $21::int))"
                          " INSERT INTO system_metrics (instance_id, interval_s, rss_bytes, cpu_pct,"
                          " open_fds, queue_depth, queue_limit, db_conns_configured, db_conns_up,"
                          " db_conns_busy, http_requests_ps, events_stored_ps, duplicates_ps,"
                          " http_4xx_ps, http_5xx_ps, ack_p50_ms, ack_p99_ms, ack_max_ms,"
                          " api_in_flight, uptime_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                          " $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
                          21, vals, metrics_done, t) != 0) {
                job_outcome(&t->metrics, true, "database unavailable: skipping system_metrics ticks");
                enter(t, &t->metrics, TIMERS_IDLE);
                return;
        }
        enter(t, &t->metrics, TIMERS_INSERT);
}

static void
arm_metrics(struct timers *t)
{
        if (t->metrics.state != TIMERS_IDLE || t->metrics_interval <= 0)
                return;
        struct timeval tv = { t->metrics_interval, 0 };
        evtimer_add(t->metrics.timer, &tv);
}

/* ---- analytics ---- */

static void
refresh_done(PGresult *res, void *arg)
{
        struct timers *t = arg;
        struct timers_view_stats *vs = &t->views[t->view];

        if (res == NULL && t->stopped) {
                /* the drain closed the connection: the refresh may still have
                 * committed (its Sync was sent); the next tick, on any replica,
                 * refreshes anyway */
                log_info("timers", "refresh %s slot %lld in flight at shutdown: not waited for",
                         vs->name, t->slot_start);
        } else if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                vs->failed++;
                log_warn("timers", "refresh %s: %s", vs->name,
                         res ? PQresultErrorMessage(res) : "connection lost");
        } else {
                const char *outcome = PQgetvalue(res, 0, 0);
                if (strcmp(outcome, "ok") == 0) {
                        vs->ok++;
                        vs->last_rows = atoll(PQgetvalue(res, 0, 1));
                        vs->last_duration_ms = atof(PQgetvalue(res, 0, 2));
                        log_info("timers", "refreshed %s slot %lld: %lld rows in %.1f ms", vs->name,
                                 t->slot_start, vs->last_rows, vs->last_duration_ms);
                } else if (strcmp(outcome, "failed") == 0) {
                        vs->failed++;
                        vs->last_duration_ms = atof(PQgetvalue(res, 0, 2));
                        log_warn("timers", "refresh %s slot %lld failed: %s", vs->name, t->slot_start,
                                 PQgetvalue(res, 0, 3));
                } else {
                        vs->skipped++;
                        log_debug("timers", "refresh %s slot %lld %s: another replica has it",
                                  vs->name, t->slot_start, outcome);
                }
        }
        t->view++;
        enter(t, &t->analytics, TIMERS_REFRESH);
}

/* The last successful refresh of each view, by any replica. */
static void
last_refresh_cb(PGresult *res, void *arg)
{
        struct timers *t = arg;

        if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
                for (int r = 0; r < PQntuples(res); r++)
                        for (int i = 0; i < TIMERS_NVIEWS; i++)
                                if (strcmp(PQgetvalue(res, r, 0), view_names[i]) == 0 &&
                                    !PQgetisnull(res, r, 1))
                                        t->views[i].last_refresh_unix =
                                                strtoull(PQgetvalue(res, r, 1), NULL, 10);
        } else if (res) {
                log_warn("timers", "reading the last refresh times failed: %s",
                         PQresultErrorMessage(res));
        }
        enter(t, &t->analytics, TIMERS_IDLE);
}

static void
read_last_refresh(struct timers *t)
{
        if (db_conn_query(t->aconn, "SELECT v, (SELECT floor(extract(epoch FROM started_at"
                                    " + duration_ms * interval '1 millisecond'))::bigint"
                                    " FROM analytics_refreshes r WHERE r.view_name = v"
                                    " AND r.outcome = 'ok' ORDER BY started_at DESC LIMIT 1)"
                                    " FROM unnest(ARRAY['analytics_daily_volume',"
                                    " 'analytics_carrier_performance', 'analytics_status_funnel',"
                                    " 'analytics_refunds']) v",
                          0, NULL, last_refresh_cb, t) != 0)
                enter(t, &t->analytics, TIMERS_IDLE);
}

static void
refresh_next(struct timers *t)
{
        char tick[32];
        const char *vals[3];

        if (t->stopped) {
                enter(t, &t->analytics, TIMERS_IDLE);
                return;
        }
        if (t->view >= TIMERS_NVIEWS) {
                enter(t, &t->analytics, TIMERS_LAST);
                return;
        }
        /* named by its start: unique whatever the interval was, so that a
         * new interval's slots never meet the refreshes of the old one's */
        snprintf(tick, sizeof(tick), "%lld", t->slot_start);
        vals[0] = view_names[t->view];
        vals[1] = tick;
        vals[2] = t->instance_id;
        if (db_conn_query(t->aconn, "SELECT outcome, rows, duration_ms, error"
                                    " FROM eps_refresh_view($1, $2::bigint, $3)",
                          3, vals, refresh_done, t) != 0) {
                job_outcome(&t->analytics, true, "database unavailable: skipping analytics refreshes");
                enter(t, &t->analytics, TIMERS_IDLE);
                return;
        }
        job_outcome(&t->analytics, false, "analytics refreshes resumed");
}

static void
analytics_tick(evutil_socket_t fd, short what, void *arg)
{
        struct timers *t = arg;
        long iv = t->analytics_interval;

        (void)fd;
        (void)what;
        if (iv <= 0 || t->analytics.state != TIMERS_IDLE)
                return;
        /* the slot that has just begun (the timer fires a moment after its start) */
        t->slot = (long long)(clock_real_ms() / 1000 / (uint64_t)iv);
        t->slot_start = t->slot * iv;
        parts_tick(t->parts, t->slot, t->slot_start);
        t->view = 0;
        enter(t, &t->analytics, TIMERS_REFRESH);
}

static void
arm_analytics(struct timers *t)
{
        long iv = t->analytics_interval;

        if (t->analytics.state != TIMERS_IDLE || iv <= 0)
                return;
        uint64_t now = clock_real_ms();
        uint64_t period = (uint64_t)iv * 1000;
        uint64_t next = (now / period + 1) * period + 20; /* just past the boundary */
        uint64_t ms = next - now;
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_add(t->analytics.timer, &tv);
}

/* ---- lifecycle ---- */

static void
set(struct timers *t, const struct timers_settings *st)
{
        free(t->instance_id);
        t->instance_id = xstrdup(st->instance_id);
        t->metrics_interval = st->metrics_interval;
        t->analytics_interval = st->analytics_interval;
        t->retention_days = st->retention_days;
}

/* The analytics connection's limits follow its interval: a refresh may run
 * for one interval (at least TIMERS_REFRESH_MIN_MS) before PostgreSQL
 * cancels it, and waits at most TIMERS_REFRESH_LOCK_MS for a lock. */
static void
set_limits(struct timers *t)
{
        uint64_t ms = (uint64_t)(t->analytics_interval > 0 ? t->analytics_interval : 0) * 1000u;

        if (ms < TIMERS_REFRESH_MIN_MS)
                ms = TIMERS_REFRESH_MIN_MS;
        if (ms > 24u * 3600u * 1000u)
                ms = 24u * 3600u * 1000u;
        db_conn_set_timeout(t->aconn, (unsigned)ms + TIMERS_REFRESH_MARGIN_MS);
        db_conn_set_limits(t->aconn, (unsigned)ms, TIMERS_REFRESH_LOCK_MS);
}

struct timers *
timers_new(struct event_base *base, const char *conninfo, const struct timers_settings *st,
           timers_sample_fn sample, void *arg)
{
        struct timers *t = xcalloc(1, sizeof(*t));

        set(t, st);
        t->sample = sample;
        t->sample_arg = arg;
        t->conn = db_conn_new(base, conninfo, "timers", &no_hooks, t);
        db_conn_set_timeout(t->conn, TIMERS_METRICS_DEADLINE_MS);
        db_conn_set_limits(t->conn, TIMERS_METRICS_STATEMENT_MS, TIMERS_METRICS_LOCK_MS);
        t->aconn = db_conn_new(base, conninfo, "analytics", &no_hooks, t);
        set_limits(t);
        t->pconn = db_conn_new(base, conninfo, "upkeep", &no_hooks, t);
        db_conn_set_timeout(t->pconn, TIMERS_UPKEEP_DEADLINE_MS);
        db_conn_set_limits(t->pconn, 0, 0);
        t->parts = parts_new(t->pconn, &st->parts);
        t->metrics = (struct timers_job){ "metrics", TIMERS_STOPPED, false,
                                          evtimer_new(base, metrics_tick, t) };
        t->analytics = (struct timers_job){ "analytics", TIMERS_STOPPED, false,
                                            evtimer_new(base, analytics_tick, t) };
        for (int i = 0; i < TIMERS_NVIEWS; i++)
                t->views[i].name = view_names[i];
        return t;
}

void
timers_start(struct timers *t)
{
        t->last_us = clock_mono_us();
        t->sample(&t->last, t->sample_arg);
        db_conn_start(t->conn);
        if (t->analytics_interval > 0) {
                db_conn_start(t->aconn);
                db_conn_start(t->pconn);
        }
        enter(t, &t->metrics, TIMERS_IDLE);
        enter(t, &t->analytics, TIMERS_IDLE);
}

void
timers_reload(struct timers *t, const struct timers_settings *st)
{
        set(t, st);
        set_limits(t);
        parts_reload(t->parts, &st->parts);
        if (t->analytics_interval > 0 && db_conn_state(t->aconn) == DB_DOWN)
                db_conn_start(t->aconn);
        if (t->analytics_interval > 0 && db_conn_state(t->pconn) == DB_DOWN)
                db_conn_start(t->pconn);
        if (t->metrics.state == TIMERS_IDLE) {
                evtimer_del(t->metrics.timer);
                enter(t, &t->metrics, TIMERS_IDLE);
        }
        if (t->analytics.state == TIMERS_IDLE) {
                evtimer_del(t->analytics.timer);
                enter(t, &t->analytics, TIMERS_IDLE);
        }
}

void
timers_stop(struct timers *t)
{
        t->stopped = true;
        if (t->metrics.state == TIMERS_IDLE)
                enter(t, &t->metrics, TIMERS_STOPPED);
        if (t->analytics.state == TIMERS_IDLE)
                enter(t, &t->analytics, TIMERS_STOPPED);
}

void
timers_free(struct timers *t)
{
        if (t == NULL)
                return;
        t->stopped = true;
        db_conn_free(t->aconn); /* in-flight callbacks run now, as lost */
        db_conn_free(t->conn);
        db_conn_free(t->pconn);
        parts_free(t->parts);
        event_free(t->metrics.timer);
        event_free(t->analytics.timer);
        free(t->instance_id);
        free(t);
}

const struct timers_view_stats *
timers_views(const struct timers *t)
{
        return t->views;
}

void
timers_render_metrics(const struct timers *t, struct strbuf *b)
{
        const struct timers_view_stats *vs = t->views;

        parts_render_metrics(t->parts, b);
        strbuf_printf(b, "# HELP easypost_sync_analytics_refreshes_total View refreshes by outcome "
                         "(skipped = another replica had the slot).\n"
                         "# TYPE easypost_sync_analytics_refreshes_total counter\n");
        for (int i = 0; i < TIMERS_NVIEWS; i++)
                strbuf_printf(b,
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"ok\"} %llu\n"
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"failed\"} %llu\n"
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"skipped\"} %llu\n",
                              vs[i].name, (unsigned long long)vs[i].ok, vs[i].name,
                              (unsigned long long)vs[i].failed, vs[i].name, (unsigned long long)vs[i].skipped);
        strbuf_printf(b, "# HELP easypost_sync_analytics_last_refresh_duration_seconds Duration of this "
                         "process's last refresh of each view (0 = none yet).\n"
                         "# TYPE easypost_sync_analytics_last_refresh_duration_seconds gauge\n");
        for (int i = 0; i < TIMERS_NVIEWS; i++)
                strbuf_printf(b, "easypost_sync_analytics_last_refresh_duration_seconds{view=\"%s\"} %.6f\n",
                              vs[i].name, vs[i].last_duration_ms / 1000.0);
        strbuf_printf(b, "# HELP easypost_sync_analytics_last_refresh_timestamp_seconds Unix time of the "
                         "view's last successful refresh by any replica (0 = never).\n"
                         "# TYPE easypost_sync_analytics_last_refresh_timestamp_seconds gauge\n");
        for (int i = 0; i < TIMERS_NVIEWS; i++)
                strbuf_printf(b, "easypost_sync_analytics_last_refresh_timestamp_seconds{view=\"%s\"} %llu\n",
                              vs[i].name, (unsigned long long)vs[i].last_refresh_unix);
}
