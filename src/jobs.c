/*
 * jobs.c - timers for system_metrics and the analytics views.
 *
 *   metrics:   IDLE --tick--> INSERT in flight --done--> IDLE (re-armed)
 *   projector: (projection = deferred) kicked by ingest after a commit that
 *              left events pending, and every second; runs batches of
 *              eps_project_pending until one comes back short
 *   analytics: IDLE --tick (wall-clock slot)--> view 0 --> view 1 --> view 2 --> IDLE
 *
 * Database down: the tick is skipped with one log line (state changes only)
 * and the timer re-armed; work resumes by itself when the connection is back.
 * Analytics ticks are aligned to multiples of the interval on the wall clock
 * so that every replica names the same slot; eps_refresh_view() elects one
 * replica per view and slot.
 */
#include "jobs.h"

#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "app.h"
#include "db_conn.h"
#include "db_migrate.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "parts.h"
#include "sync.h"
#include "util.h"

static const char *const view_names[JOBS_NVIEWS] = {
        "analytics_daily_volume", "analytics_carrier_performance", "analytics_status_funnel",
};

struct counters {
        uint64_t requests, stored, duplicates, c4xx, c5xx;
};

struct jobs {
        struct app *app;
        struct db_conn *conn;  /* metrics inserts, schema check, sync worker */
        struct db_conn *aconn; /* analytics refreshes only */
        struct db_conn *pconn; /* deferred projection only (NULL when inline) */
        struct event *project_timer;
        bool projecting, project_again;
        uint64_t projected;
        struct event *metrics_timer, *analytics_timer;
        bool stopped;
        bool metrics_busy, analytics_busy;
        bool metrics_skipping, analytics_skipping;
        /* metrics window */
        uint64_t last_us;
        double last_cpu_s;
        struct counters last;
        /* analytics */
        int view;
        long long slot;
        struct jobs_view_stats views[JOBS_NVIEWS];
        int schema_version;
};

static void arm_metrics(struct jobs *j);
static void arm_analytics(struct jobs *j);

static double
cpu_seconds(void)
{
        struct rusage ru;

        getrusage(RUSAGE_SELF, &ru);
        return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static struct counters
read_counters(struct jobs *j)
{
        const struct ingest_stats *st = ingest_stats(j->app->ingest);
        struct counters c = { 0 };

        for (int e = 0; e < EP_COUNT; e++)
                for (int k = 1; k <= 5; k++) {
                        c.requests += metrics.requests[e][k];
                        if (k == 4)
                                c.c4xx += metrics.requests[e][k];
                        if (k == 5)
                                c.c5xx += metrics.requests[e][k];
                }
        c.stored = st->stored;
        c.duplicates = st->duplicates;
        return c;
}

static void
schema_cb(PGresult *res, void *arg)
{
        struct jobs *j = arg;

        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                j->schema_version = atoi(PQgetvalue(res, 0, 0));
                if (j->schema_version < DB_SCHEMA_VERSION)
                        log_warn("jobs", "database schema is at migration %d, this build needs %d: "
                                         "run easypost-syncd --migrate",
                                 j->schema_version, DB_SCHEMA_VERSION);
        } else if (res) {
                j->schema_version = 0;
                log_warn("jobs", "no schema_migrations table: run easypost-syncd --migrate");
        }
}

static void
conn_ready(struct db_conn *c, void *arg)
{
        struct jobs *j = arg;

        if (c != j->conn)
                return;
        if (db_conn_query(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL,
                          schema_cb, j) != 0)
                return;
        sync_conn_ready(j->app->sync);
}

static const struct db_conn_hooks hooks = { .on_ready = conn_ready };

/* ---- system_metrics ---- */

static void
metrics_done(PGresult *res, void *arg)
{
        struct jobs *j = arg;

        j->metrics_busy = false;
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
                if (!j->metrics_skipping)
                        log_warn("jobs", "system_metrics row not written: %s",
                                 res ? PQresultErrorMessage(res) : "connection lost");
                j->metrics_skipping = true;
        } else if (j->metrics_skipping) {
                log_info("jobs", "system_metrics rows written again");
                j->metrics_skipping = false;
        }
        arm_metrics(j);
}

static void
metrics_tick(evutil_socket_t fd, short what, void *arg)
{
        struct jobs *j = arg;
        struct app *a = j->app;
        uint64_t now = clock_mono_us();
        double secs = (double)(now - j->last_us) / 1e6;
        double cpu = cpu_seconds();
        struct counters c = read_counters(j);
        char v[21][48];
        const char *vals[21];

        (void)fd;
        (void)what;
        if (secs <= 0)
                secs = 1e-6;
        snprintf(v[0], sizeof(v[0]), "%s", "");
        snprintf(v[1], sizeof(v[1]), "%.3f", secs);
        snprintf(v[2], sizeof(v[2]), "%lu", ops_rss_bytes());
        snprintf(v[3], sizeof(v[3]), "%.2f", (cpu - j->last_cpu_s) / secs * 100.0);
        snprintf(v[4], sizeof(v[4]), "%u", ops_open_fds());
        snprintf(v[5], sizeof(v[5]), "%u", ingest_depth(a->ingest));
        snprintf(v[6], sizeof(v[6]), "%u", ingest_limit(a->ingest));
        snprintf(v[7], sizeof(v[7]), "%u", ingest_conns(a->ingest));
        snprintf(v[8], sizeof(v[8]), "%u", ingest_conns_ready(a->ingest));
        snprintf(v[9], sizeof(v[9]), "%u", ingest_conns_busy(a->ingest));
        snprintf(v[10], sizeof(v[10]), "%.3f", (double)(c.requests - j->last.requests) / secs);
        snprintf(v[11], sizeof(v[11]), "%.3f", (double)(c.stored - j->last.stored) / secs);
        snprintf(v[12], sizeof(v[12]), "%.3f", (double)(c.duplicates - j->last.duplicates) / secs);
        snprintf(v[13], sizeof(v[13]), "%.3f", (double)(c.c4xx - j->last.c4xx) / secs);
        snprintf(v[14], sizeof(v[14]), "%.3f", (double)(c.c5xx - j->last.c5xx) / secs);
        bool lat = metrics.ack_window.count > 0;
        snprintf(v[15], sizeof(v[15]), "%.3f", metrics_quantile_ms(&metrics.ack_window, 0.5));
        snprintf(v[16], sizeof(v[16]), "%.3f", metrics_quantile_ms(&metrics.ack_window, 0.99));
        snprintf(v[17], sizeof(v[17]), "%.3f", (double)metrics.ack_window.max_us / 1000.0);
        snprintf(v[18], sizeof(v[18]), "%u", sync_in_flight(a->sync));
        snprintf(v[19], sizeof(v[19]), "%.1f", (double)(now - a->started_us) / 1e6);
        snprintf(v[20], sizeof(v[20]), "%ld", a->cfg->metrics_retention_days);
        for (int i = 0; i < 21; i++)
                vals[i] = v[i];
        vals[0] = a->instance_id;
        if (!lat)
                vals[15] = vals[16] = vals[17] = NULL;

        j->last_us = now;
        j->last_cpu_s = cpu;
        j->last = c;
        memset(&metrics.ack_window, 0, sizeof(metrics.ack_window));

        if (db_conn_query(j->conn,
                          "WITH old AS (DELETE FROM system_metrics"
                          " WHERE ts < now() - make_interval(days => $21::int))"
                          " INSERT INTO system_metrics (instance_id, interval_s, rss_bytes, cpu_pct,"
                          " open_fds, queue_depth, queue_limit, db_conns_configured, db_conns_up,"
                          " db_conns_busy, http_requests_ps, events_stored_ps, duplicates_ps,"
                          " http_4xx_ps, http_5xx_ps, ack_p50_ms, ack_p99_ms, ack_max_ms,"
                          " api_in_flight, uptime_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                          " $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
                          21, vals, metrics_done, j) != 0) {
                if (!j->metrics_skipping)
                        log_warn("jobs", "database unavailable: skipping system_metrics ticks");
                j->metrics_skipping = true;
                arm_metrics(j);
                return;
        }
        j->metrics_busy = true;
}

static void
arm_metrics(struct jobs *j)
{
        long iv = j->app->cfg->metrics_interval;

        if (j->stopped || iv <= 0 || j->metrics_busy)
                return;
        struct timeval tv = { iv, 0 };
        evtimer_add(j->metrics_timer, &tv);
}

/* ---- analytics ---- */

static void refresh_next(struct jobs *j);

static void
refresh_done(PGresult *res, void *arg)
{
        struct jobs *j = arg;
        struct jobs_view_stats *vs = &j->views[j->view];

        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                vs->failed++;
                log_warn("jobs", "refresh %s: %s", vs->name,
                         res ? PQresultErrorMessage(res) : "connection lost");
        } else {
                const char *outcome = PQgetvalue(res, 0, 0);
                if (strcmp(outcome, "ok") == 0) {
                        vs->ok++;
                        vs->last_rows = atoll(PQgetvalue(res, 0, 1));
                        vs->last_duration_ms = atof(PQgetvalue(res, 0, 2));
                        log_info("jobs", "refreshed %s slot %lld: %lld rows in %.1f ms", vs->name,
                                 j->slot, vs->last_rows, vs->last_duration_ms);
                } else if (strcmp(outcome, "failed") == 0) {
                        vs->failed++;
                        vs->last_duration_ms = atof(PQgetvalue(res, 0, 2));
                        log_warn("jobs", "refresh %s slot %lld failed: %s", vs->name, j->slot,
                                 PQgetvalue(res, 0, 3));
                } else {
                        vs->skipped++;
                        log_debug("jobs", "refresh %s slot %lld %s: another replica has it",
                                  vs->name, j->slot, outcome);
                }
        }
        j->view++;
        refresh_next(j);
}

static void
refresh_next(struct jobs *j)
{
        char tick[32];
        const char *vals[3];

        if (j->stopped || j->view >= JOBS_NVIEWS) {
                j->analytics_busy = false;
                arm_analytics(j);
                return;
        }
        snprintf(tick, sizeof(tick), "%lld", j->slot);
        vals[0] = view_names[j->view];
        vals[1] = tick;
        vals[2] = j->app->instance_id;
        if (db_conn_query(j->aconn, "SELECT outcome, rows, duration_ms, error"
                                    " FROM eps_refresh_view($1, $2::bigint, $3)",
                          3, vals, refresh_done, j) != 0) {
                if (!j->analytics_skipping)
                        log_warn("jobs", "database unavailable: skipping analytics refreshes");
                j->analytics_skipping = true;
                j->analytics_busy = false;
                arm_analytics(j);
                return;
        }
        if (j->analytics_skipping) {
                log_info("jobs", "analytics refreshes resumed");
                j->analytics_skipping = false;
        }
}

static void
analytics_tick(evutil_socket_t fd, short what, void *arg)
{
        struct jobs *j = arg;
        long iv = j->app->cfg->analytics_interval;

        (void)fd;
        (void)what;
        if (iv <= 0)
                return;
        /* the slot that has just begun (the timer fires a moment after its start) */
        j->slot = (long long)(clock_real_ms() / 1000 / (uint64_t)iv);
        parts_tick(j->aconn, j->app->cfg, j->slot, j->app->instance_id);
        j->view = 0;
        j->analytics_busy = true;
        refresh_next(j);
}

static void
arm_analytics(struct jobs *j)
{
        long iv = j->app->cfg->analytics_interval;

        if (j->stopped || iv <= 0 || j->analytics_busy)
                return;
        uint64_t now = clock_real_ms();
        uint64_t period = (uint64_t)iv * 1000;
        uint64_t next = (now / period + 1) * period + 20; /* just past the boundary */
        uint64_t ms = next - now;
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_add(j->analytics_timer, &tv);
}

/* ---- deferred projection ---- */

#define PROJECT_BATCH 200 /* events per projector transaction */
#define PROJECT_POLL_S 1

static void project_run(struct jobs *j);

static void
project_done(PGresult *res, void *arg)
{
        struct jobs *j = arg;
        int n = 0;

        j->projecting = false;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                n = atoi(PQgetvalue(res, 0, 0));
                j->projected += (uint64_t)n;
        } else if (res) {
                log_warn("jobs", "projecting pending events failed: %s", PQresultErrorMessage(res));
        }
        /* A full batch means more are waiting; so does a kick during the run.
         * Back to back: the projector has a connection of its own, and a
         * projector that waited for quiet would fall behind for good under a
         * steady load (the backlog only grows while webhooks keep coming). */
        if (!j->stopped && (n == PROJECT_BATCH || j->project_again))
                project_run(j);
}

static void
project_run(struct jobs *j)
{
        char batch[16];
        snprintf(batch, sizeof(batch), "%d", PROJECT_BATCH);
        const char *vals[1] = { batch };

        j->project_again = false;
        if (j->pconn == NULL || j->projecting || j->stopped)
                return;
        if (db_conn_query(j->pconn, "SELECT eps_project_pending($1::int)", 1, vals, project_done,
                          j) == 0)
                j->projecting = true;
}

static void
project_tick(evutil_socket_t fd, short what, void *arg)
{
        struct jobs *j = arg;
        struct timeval tv = { PROJECT_POLL_S, 0 };

        (void)fd;
        (void)what;
        if (j->stopped)
                return;
        project_run(j); /* also picks up what another replica or a crash left */
        if (!evtimer_pending(j->project_timer, NULL))
                evtimer_add(j->project_timer, &tv);
}

void
jobs_project_kick(void *arg)
{
        struct jobs *j = arg;

        if (j->projecting)
                j->project_again = true;
        else
                project_run(j);
}

uint64_t
jobs_projected(const struct jobs *j)
{
        return j->projected;
}

/* ---- lifecycle ---- */

struct jobs *
jobs_new(struct app *a)
{
        struct jobs *j = xcalloc(1, sizeof(*j));

        j->app = a;
        j->schema_version = -1;
        j->conn = db_conn_new(a->base, a->cfg->database_url, "jobs", &hooks, j);
        j->aconn = db_conn_new(a->base, a->cfg->database_url, "analytics", &hooks, j);
        j->metrics_timer = evtimer_new(a->base, metrics_tick, j);
        j->analytics_timer = evtimer_new(a->base, analytics_tick, j);
        if (strcmp(a->cfg->projection, "deferred") == 0) {
                j->pconn = db_conn_new(a->base, a->cfg->database_url, "projector", &hooks, j);
                db_conn_set_timeout(j->pconn, (unsigned)a->cfg->db_timeout * 1000u);
                j->project_timer = evtimer_new(a->base, project_tick, j);
        }
        for (int i = 0; i < JOBS_NVIEWS; i++)
                j->views[i].name = view_names[i];
        return j;
}

void
jobs_start(struct jobs *j)
{
        j->last_us = clock_mono_us();
        j->last_cpu_s = cpu_seconds();
        j->last = read_counters(j);
        db_conn_start(j->conn);
        if (j->app->cfg->analytics_interval > 0)
                db_conn_start(j->aconn);
        if (j->pconn) {
                struct timeval tv = { PROJECT_POLL_S, 0 };
                db_conn_start(j->pconn);
                evtimer_add(j->project_timer, &tv);
        }
        arm_metrics(j);
        arm_analytics(j);
}

void
jobs_reload(struct jobs *j)
{
        if (j->app->cfg->analytics_interval > 0 && db_conn_state(j->aconn) == DB_DOWN)
                db_conn_start(j->aconn);
        if (!j->metrics_busy) {
                evtimer_del(j->metrics_timer);
                arm_metrics(j);
        }
        if (!j->analytics_busy) {
                evtimer_del(j->analytics_timer);
                arm_analytics(j);
        }
}

void
jobs_stop(struct jobs *j)
{
        j->stopped = true;
        evtimer_del(j->metrics_timer);
        evtimer_del(j->analytics_timer);
        if (j->project_timer)
                evtimer_del(j->project_timer);
}

void
jobs_free(struct jobs *j)
{
        if (j == NULL)
                return;
        j->stopped = true;
        db_conn_free(j->pconn); /* in-flight callbacks run now, as lost */
        db_conn_free(j->aconn);
        db_conn_free(j->conn);
        if (j->project_timer)
                event_free(j->project_timer);
        event_free(j->metrics_timer);
        event_free(j->analytics_timer);
        free(j);
}

int
jobs_schema_version(const struct jobs *j)
{
        return j->schema_version;
}

bool
jobs_db_up(const struct jobs *j)
{
        return db_conn_ready(j->conn);
}

const struct jobs_view_stats *
jobs_views(const struct jobs *j)
{
        return j->views;
}

struct db_conn *
jobs_conn(struct jobs *j)
{
        return j->conn;
}
