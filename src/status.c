/*
 * status.c - see status.h.
 *
 * One blocking connection and a few read-only statements, each served by an
 * index whatever the tables hold: webhook_events through its primary key
 * (UUID v7 made when the event arrived, so time-ordered) bounded by
 * received_at, or through its partial index (failed); the projection
 * backlog through projection_queue's primary key; sync_jobs
 * through its partial indexes and its primary key (eps_uuid7 at creation);
 * analytics_refreshes through its unique (view_name, tick); system_metrics
 * through ts. Plain queries: they work on a partitioned webhook_events too.
 *
 * Every statement runs in one read-only transaction whose statement_timeout
 * and TimeZone are SET LOCAL: through PgBouncer in transaction mode nothing
 * stays on the server connection it hands to another client next.
 *
 * A timer's first row is not due before STATUS_STALE_INTERVALS of its
 * intervals have passed since the schema was installed (its first
 * migration): a brand-new install is not reported for rows it cannot have.
 *
 * The rows become one jansson object; each section judges its own part into
 * "reasons", and the text report is rendered from that same object, so the
 * text and the JSON always say the same thing.
 */
#include "status.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "db_migrate.h"

/* Timestamps as ISO 8601 in UTC (the session's TimeZone is UTC); ages in whole seconds. */
#define TS(x) "to_char(" x ", 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define AGE(x) "floor(extract(epoch FROM now() - " x "))::int8"
/* The smallest UUID v7 of instant t: every id made at or after t sorts at or after it.
 * Ids are made when an event arrives, before its commit sets received_at; the
 * bound is taken an hour earlier than received_at's so that clocks an hour
 * apart still lose nothing. */
#define V7_FLOOR(t) "(lpad(to_hex(floor(extract(epoch FROM " t ") * 1000)::int8), 12, '0')" \
                    " || repeat('0', 20))::uuid"

static const char SQL_SCHEMA[] = "SELECT coalesce(max(version), 0) AS v, " TS("now()") " AS now,"
                                 " " AGE("min(applied_at)") " AS installed_age_s"
                                 " FROM schema_migrations";

/* known: a type this build projects; the others are stored raw only */
static const char SQL_EVENTS[] =
        "SELECT description, status AS outcome,"
        " description IN ('tracker.created', 'tracker.updated')"
        " OR eps_object_kind(description) IS NOT NULL AS known,"
        " count(*) FILTER (WHERE received_at >= now() - interval '1 hour') AS last_hour,"
        " count(*) AS last_day"
        " FROM webhook_events"
        " WHERE id >= " V7_FLOOR("now() - interval '25 hours'")
        " AND received_at >= now() - interval '1 day'"
        " GROUP BY 1, 2 ORDER BY 4 DESC, 1, 2";

static const char SQL_DEAD[] =
        "SELECT count(*) FILTER (WHERE received_at >= now() - interval '1 day') AS last_day,"
        " count(*) AS total FROM webhook_events WHERE status = 'failed'";

static const char SQL_DEAD_NEWEST[] =
        "SELECT event_id, description, " TS("received_at") " AS received_at, error"
        " FROM webhook_events w WHERE status = 'failed' ORDER BY w.received_at DESC, w.id DESC LIMIT 5";

static const char SQL_BACKLOG[] =
        "SELECT count(*) AS pending, " TS("min(received_at)") " AS oldest_received_at, "
        AGE("min(received_at)") " AS oldest_age_s FROM projection_queue";

/* Jobs that ended in the last day, among those made in the last week (the
 * primary key's range: a job gives up within its attempts' backoff, hours
 * at most). Pending and running ones are counted whatever their age. */
#define JOBS_ENDED " FROM sync_jobs WHERE id >= " V7_FLOOR("now() - interval '7 days'") \
                   " AND updated_at >= now() - interval '1 day'"
static const char SQL_JOBS[] =
        "SELECT (SELECT count(*) FROM sync_jobs WHERE status = 'pending') AS pending,"
        " (SELECT count(*) FROM sync_jobs WHERE status = 'running') AS running,"
        " count(*) FILTER (WHERE status = 'done') AS done_last_day,"
        " count(*) FILTER (WHERE status = 'failed') AS failed_last_day,"
        " (SELECT " AGE("min(next_attempt_at)") " FROM sync_jobs WHERE status = 'pending'"
        "  AND next_attempt_at <= now()) AS overdue_s"
        JOBS_ENDED " AND status IN ('done', 'failed')";

static const char SQL_JOB_OLDEST[] =
        "SELECT kind, object_id, attempts, last_error, " TS("created_at") " AS created_at, "
        AGE("created_at") " AS age_s, " TS("next_attempt_at") " AS next_attempt_at"
        " FROM sync_jobs j WHERE status = 'pending' ORDER BY j.created_at, j.id LIMIT 1";

static const char SQL_JOB_FAILED[] =
        "SELECT kind, object_id, attempts, last_status, last_error, " TS("updated_at") " AS failed_at"
        JOBS_ENDED " AND status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT 1";

static const char SQL_CURSOR[] =
        "SELECT value AS cursor, " TS("updated_at") " AS moved_at, " AGE("updated_at") " AS moved_age_s"
        " FROM sync_state WHERE key = 'backfill_cursor'";

/* How the last run ended (eps_backfill_record), and when one last completed. */
static const char SQL_LAST_RUN[] =
        "SELECT value::json->>'outcome' AS outcome, " TS("updated_at") " AS at, " AGE("updated_at") " AS age_s,"
        " (value::json->>'recovered')::int8 AS recovered, value::json->>'error' AS error"
        " FROM sync_state WHERE key = 'backfill_last_run'";

static const char SQL_LAST_COMPLETED[] =
        "SELECT " TS("updated_at") " AS at, " AGE("updated_at") " AS age_s, value::int8 AS recovered"
        " FROM sync_state WHERE key = 'backfill_last_completed'";

/* The reconciler's newest run, and the newest completed one (reconcile_runs). */
#define SQL_RECONCILE_RUN(where)                                                                   \
        "SELECT id, reason, status, listed, changed, status_changed, created, error, "               \
        TS("window_start") " AS window_start, " TS("started_at") " AS started_at, "                   \
        TS("finished_at") " AS finished_at, " AGE("coalesce(finished_at, updated_at)") " AS age_s"    \
        " FROM reconcile_runs " where " ORDER BY id DESC LIMIT 1"
static const char SQL_RECONCILE_LAST[] = SQL_RECONCILE_RUN("");
static const char SQL_RECONCILE_DONE[] = SQL_RECONCILE_RUN("WHERE status = 'completed'");

/* The first event received after the last completed run ended (after the
 * cursor last moved when none is recorded; in the last day when there is
 * neither): a run lists every event after the cursor, so such an event
 * growing old means no run has completed since. */
static const char SQL_BEHIND[] =
        "WITH c AS (SELECT coalesce((SELECT updated_at FROM sync_state WHERE key = 'backfill_last_completed'),"
        " (SELECT updated_at FROM sync_state WHERE key = 'backfill_cursor'),"
        " now() - interval '1 day') AS t)"
        " SELECT " TS("e.received_at") " AS received_at, " AGE("e.received_at") " AS age_s"
        " FROM c, LATERAL (SELECT received_at FROM webhook_events"
        " WHERE id >= " V7_FLOOR("c.t - interval '1 hour'") " AND received_at > c.t"
        " ORDER BY id LIMIT 1) e";

/* Every analytics view of the schema, with its newest refresh and newest
 * successful one (the unique (view_name, tick), read backwards). The view's
 * name is cast to the column's collation: pg_class's "C" one would keep the
 * planner off that index. */
static const char SQL_VIEWS[] =
        "SELECT v.matviewname AS view, " TS("l.started_at") " AS last_refresh_at, l.outcome,"
        " " AGE("l.started_at") " AS last_refresh_age_s, l.error, l.rows,"
        " round(l.duration_ms::numeric, 1) AS duration_ms,"
        " " TS("o.started_at") " AS last_ok_at, " AGE("o.started_at") " AS last_ok_age_s"
        " FROM pg_matviews v"
        " LEFT JOIN LATERAL (SELECT started_at, outcome, error, rows, duration_ms"
        " FROM analytics_refreshes r WHERE r.view_name = v.matviewname::text COLLATE \"default\""
        " ORDER BY r.tick DESC LIMIT 1) l ON true"
        " LEFT JOIN LATERAL (SELECT started_at FROM analytics_refreshes r"
        " WHERE r.view_name = v.matviewname::text COLLATE \"default\" AND r.outcome = 'ok'"
        " ORDER BY r.tick DESC LIMIT 1) o ON true"
        " WHERE v.schemaname = current_schema() AND v.matviewname LIKE 'analytics\\_%'"
        " ORDER BY 1";

static const char SQL_METRICS[] =
        "SELECT DISTINCT ON (instance_id) instance_id, " TS("ts") " AS ts, " AGE("ts") " AS age_s,"
        " uptime_s::int8 AS uptime_s, rss_bytes, round(cpu_pct::numeric, 1) AS cpu_pct, open_fds,"
        " queue_depth, queue_limit, db_conns_up, db_conns_configured,"
        " round(events_stored_ps::numeric, 2) AS events_stored_ps,"
        " round(http_5xx_ps::numeric, 2) AS http_5xx_ps, ack_p99_ms"
        " FROM system_metrics m WHERE m.ts >= now() - interval '1 day'"
        " ORDER BY m.instance_id, m.ts DESC";

struct report {
        PGconn *pq;
        long long installed_age_s; /* since the first migration */
        const struct cfg *cfg;
        json_t *root;
        json_t *reasons;
        struct err *e;
};

/* Length of the first line of s. */
static int
line_len(const char *s)
{
        return (int)strcspn(s, "\r\n");
}

/* A value of the result as JSON by its column's type (NULL -> null). */
static json_t *
cell(const PGresult *r, int row, int col)
{
        const char *v = PQgetvalue(r, row, col);
        json_t *j;

        if (PQgetisnull(r, row, col))
                return json_null();
        switch (PQftype(r, col)) {
        case 16: /* bool */
                return json_boolean(v[0] == 't');
        case 20: /* int8 */
        case 21: /* int2 */
        case 23: /* int4 */
                j = json_integer(strtoll(v, NULL, 10));
                break;
        case 700:  /* float4 */
        case 701:  /* float8 */
        case 1700: /* numeric */
                j = json_real(strtod(v, NULL));
                break;
        default:
                j = json_string(v);
                break;
        }
        return j ? j : json_null(); /* NaN, or text that is not UTF-8 */
}

/* Every row of sql as an array of objects keyed by column name; NULL with e set. */
static json_t *
rows(struct report *rp, const char *what, const char *sql)
{
        PGresult *r = PQexec(rp->pq, sql);
        json_t *a = NULL;

        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                const char *m = PQresultErrorMessage(r);
                err_set(rp->e, -1, "reading %s: %.*s", what, line_len(m), m);
        } else {
                a = json_array();
                for (int i = 0; i < PQntuples(r); i++) {
                        json_t *o = json_object();
                        for (int c = 0; c < PQnfields(r); c++)
                                json_object_set_new(o, PQfname(r, c), cell(r, i, c));
                        json_array_append_new(a, o);
                }
        }
        PQclear(r);
        return a;
}

/* The first row of sql as an object, JSON null without a row; NULL with e set. */
static json_t *
row(struct report *rp, const char *what, const char *sql)
{
        json_t *a = rows(rp, what, sql);
        json_t *o;

        if (a == NULL)
                return NULL;
        o = json_array_size(a) > 0 ? json_incref(json_array_get(a, 0)) : json_null();
        json_decref(a);
        return o;
}

static long long
num(const json_t *o, const char *key)
{
        return (long long)json_integer_value(json_object_get(o, key));
}

static const char *
str(const json_t *o, const char *key)
{
        const char *s = json_string_value(json_object_get(o, key));
        return s ? s : "-";
}

/* A duration for a person: "42 s", "17 min", "3 h 5 min", "2 d 4 h". */
static const char *
age_text(long long s, char *buf, size_t n)
{
        if (s < 0)
                s = 0; /* clocks apart */
        if (s < 120)
                snprintf(buf, n, "%lld s", s);
        else if (s < 7200)
                snprintf(buf, n, "%lld min", s / 60);
        else if (s < 172800)
                snprintf(buf, n, "%lld h %lld min", s / 3600, s % 3600 / 60);
        else
                snprintf(buf, n, "%lld d %lld h", s / 86400, s % 86400 / 3600);
        return buf;
}

static void reason(struct report *rp, const char *check, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Something needs attention: check names it for scripts, the message for people. */
static void
reason(struct report *rp, const char *check, const char *fmt, ...)
{
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        json_array_append_new(rp->reasons, json_pack("{s:s, s:s}", "check", check, "message", msg));
}

/* ---- sections: read, store under root, judge ---- */

static int
sec_events(struct report *rp)
{
        json_t *by = rows(rp, "events", SQL_EVENTS);
        long long hour = 0, day = 0;
        size_t i;
        json_t *r;

        if (by == NULL)
                return -1;
        json_array_foreach(by, i, r) {
                hour += num(r, "last_hour");
                day += num(r, "last_day");
        }
        json_object_set_new(rp->root, "events", json_pack("{s:I, s:I, s:o}", "last_hour",
                                                          (json_int_t)hour, "last_day",
                                                          (json_int_t)day, "by_description", by));
        return 0;
}

static int
sec_dead_letters(struct report *rp)
{
        json_t *d = row(rp, "dead letters", SQL_DEAD);
        json_t *newest = d ? rows(rp, "dead letters", SQL_DEAD_NEWEST) : NULL;
        long long day;

        if (newest == NULL) {
                json_decref(d);
                return -1;
        }
        json_object_set_new(d, "newest", newest);
        json_object_set_new(rp->root, "dead_letters", d);
        day = num(d, "last_day");
        if (day > 0)
                reason(rp, "dead_letters", "%lld dead letter%s in the last 24 h", day,
                       day == 1 ? "" : "s");
        return 0;
}

static int
sec_backlog(struct report *rp)
{
        json_t *b = row(rp, "projection backlog", SQL_BACKLOG);
        char age[32];

        if (b == NULL)
                return -1;
        json_object_set_new(rp->root, "projection_backlog", b);
        if (num(b, "pending") > 0 && num(b, "oldest_age_s") > STATUS_BACKLOG_MAX_S)
                reason(rp, "projection_backlog",
                       "projection backlog: %lld pending, the oldest received %s ago", num(b, "pending"),
                       age_text(num(b, "oldest_age_s"), age, sizeof(age)));
        return 0;
}

static int
sec_sync_jobs(struct report *rp)
{
        json_t *j = row(rp, "sync jobs", SQL_JOBS);
        json_t *oldest = j ? row(rp, "sync jobs", SQL_JOB_OLDEST) : NULL;
        json_t *failed = oldest ? row(rp, "sync jobs", SQL_JOB_FAILED) : NULL;
        bool api = rp->cfg->api_key && rp->cfg->api_key[0];
        json_t *overdue;
        char age[32];

        if (failed == NULL) {
                json_decref(j);
                json_decref(oldest);
                return -1;
        }
        json_object_set_new(j, "oldest_pending", oldest);
        json_object_set_new(j, "newest_failed", failed);
        json_object_set_new(j, "api_key_set", json_boolean(api));
        json_object_set_new(rp->root, "sync_jobs", j);
        if (num(j, "failed_last_day") > 0)
                reason(rp, "sync_jobs_failed", "%lld sync job%s failed in the last 24 h (newest: %s %s: %.*s)",
                       num(j, "failed_last_day"), num(j, "failed_last_day") == 1 ? "" : "s",
                       str(failed, "kind"), str(failed, "object_id"), line_len(str(failed, "last_error")),
                       str(failed, "last_error"));
        overdue = json_object_get(j, "overdue_s");
        if (api && json_integer_value(overdue) > STATUS_SYNC_OVERDUE_S)
                reason(rp, "sync_jobs_overdue", "sync jobs are not being claimed: one has been due for %s",
                       age_text(json_integer_value(overdue), age, sizeof(age)));
        return 0;
}

static int
sec_backfill(struct report *rp)
{
        long iv = rp->cfg->backfill_interval;
        bool on = iv > 0 && rp->cfg->api_key && rp->cfg->api_key[0];
        json_t *c = row(rp, "backfill cursor", SQL_CURSOR);
        json_t *last = c ? row(rp, "backfill runs", SQL_LAST_RUN) : NULL;
        json_t *done = last ? row(rp, "backfill runs", SQL_LAST_COMPLETED) : NULL;
        json_t *behind = done && on ? row(rp, "backfill cursor", SQL_BEHIND) : done ? json_null() : NULL;
        json_t *b;
        char age[32];

        if (behind == NULL) {
                json_decref(c);
                json_decref(last);
                json_decref(done);
                return -1;
        }
        b = json_is_object(c) ? json_incref(c)
                              : json_pack("{s:n, s:n, s:n}", "cursor", "moved_at", "moved_age_s");
        json_decref(c);
        json_object_set_new(b, "enabled", json_boolean(on));
        json_object_set_new(b, "interval_s", json_integer(iv));
        json_object_set_new(b, "first_event_after_cursor", behind);
        json_object_set_new(b, "last_run", last);
        json_object_set_new(b, "last_completed", done);
        json_object_set_new(rp->root, "backfill", b);
        if (on && num(behind, "age_s") > STATUS_STALE_INTERVALS * iv)
                reason(rp, "backfill_stale",
                       "no backfill run has completed since an event received %s ago "
                       "(runs every %ld s)",
                       age_text(num(behind, "age_s"), age, sizeof(age)), iv);
        return 0;
}

static int
sec_reconcile(struct report *rp)
{
        long iv = rp->cfg->reconcile_interval;
        json_t *last = row(rp, "reconcile runs", SQL_RECONCILE_LAST);
        json_t *done = last ? row(rp, "reconcile runs", SQL_RECONCILE_DONE) : NULL;

        if (done == NULL) {
                json_decref(last);
                return -1;
        }
        json_object_set_new(rp->root, "reconcile",
                            json_pack("{s:b, s:i, s:o, s:o}", "enabled",
                                      rp->cfg->api_key && rp->cfg->api_key[0], "interval_s", (json_int_t)iv,
                                      "last_run", last, "last_completed", done));
        return 0;
}

/* A timer's section: {"interval_s": iv, list: rows of sql} under key. Returns
 * the rows (borrowed from root), NULL with e set. */
static json_t *
timer_rows(struct report *rp, const char *key, long iv, const char *list, const char *sql)
{
        json_t *a = rows(rp, key, sql);

        if (a != NULL)
                json_object_set_new(rp->root, key,
                                    json_pack("{s:I, s:o}", "interval_s", (json_int_t)iv, list, a));
        return a;
}

static int
sec_analytics(struct report *rp)
{
        long iv = rp->cfg->analytics_interval;
        json_t *views = timer_rows(rp, "analytics", iv, "views", SQL_VIEWS);
        size_t i;
        json_t *v;
        char age[32];

        if (views == NULL)
                return -1;
        if (iv <= 0)
                return 0;
        json_array_foreach(views, i, v) {
                bool due = rp->installed_age_s > STATUS_STALE_INTERVALS * iv;
                json_object_set_new(v, "due", json_boolean(due || !json_is_null(json_object_get(v, "last_ok_at"))));
                if (json_is_null(json_object_get(v, "last_ok_at")) && due)
                        reason(rp, "analytics_stale", "view %s has no successful refresh",
                               str(v, "view"));
                else if (num(v, "last_ok_age_s") > STATUS_STALE_INTERVALS * iv)
                        reason(rp, "analytics_stale", "view %s last refreshed %s ago (every %ld s)",
                               str(v, "view"), age_text(num(v, "last_ok_age_s"), age, sizeof(age)),
                               iv);
        }
        return 0;
}

static int
sec_metrics(struct report *rp)
{
        long iv = rp->cfg->metrics_interval;
        json_t *inst = timer_rows(rp, "system_metrics", iv, "instances", SQL_METRICS);
        long long newest = -1;
        size_t i;
        json_t *m;
        char age[32];

        if (inst == NULL)
                return -1;
        json_array_foreach(inst, i, m) {
                if (newest < 0 || num(m, "age_s") < newest)
                        newest = num(m, "age_s");
        }
        if (iv <= 0)
                return 0;
        if (newest < 0 && rp->installed_age_s > STATUS_STALE_INTERVALS * iv)
                reason(rp, "system_metrics_stale", "no system_metrics row in the last 24 h: "
                                                   "is the daemon running?");
        else if (newest > STATUS_STALE_INTERVALS * iv)
                reason(rp, "system_metrics_stale", "the newest system_metrics row is %s old "
                                                   "(written every %ld s): is the daemon running?",
                       age_text(newest, age, sizeof(age)), iv);
        return 0;
}

/* ---- connection ---- */

static PGconn *
connect_db(const char *conninfo, struct err *e)
{
        /* before dbname: a connect_timeout in the URL wins */
        const char *keys[] = { "connect_timeout", "dbname", "fallback_application_name",
                               "client_encoding", NULL };
        const char *vals[] = { "10", conninfo, "easypost-syncd-status", "UTF8", NULL };
        PGconn *pq = PQconnectdbParams(keys, vals, 1);

        if (PQstatus(pq) != CONNECTION_OK) {
                const char *m = PQerrorMessage(pq);
                err_set(e, -1, "cannot connect to the database: %.*s", line_len(m), m);
                PQfinish(pq);
                return NULL;
        }
        /* one transaction for the whole report: SET LOCAL ends with it */
        PGresult *r = PQexec(pq, "BEGIN READ ONLY; SET LOCAL TimeZone = 'UTC';"
                                 " SET LOCAL statement_timeout = '60s'");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                const char *m = PQresultErrorMessage(r);
                err_set(e, -1, "starting the report's transaction: %.*s", line_len(m), m);
                PQclear(r);
                PQfinish(pq);
                return NULL;
        }
        PQclear(r);
        return pq;
}

/* The schema must be this build's or newer: the queries read its tables. */
static int
check_schema(struct report *rp)
{
        PGresult *r = PQexec(rp->pq, SQL_SCHEMA);
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        int rc = -1;

        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
                int v = atoi(PQgetvalue(r, 0, 0));
                if (v < DB_SCHEMA_VERSION) {
                        err_set(rp->e, -1, "the database schema is at migration %d, this build needs %d: "
                                           "run easypost-syncd --migrate", v, DB_SCHEMA_VERSION);
                } else {
                        json_object_set_new(rp->root, "generated_at", json_string(PQgetvalue(r, 0, 1)));
                        json_object_set_new(rp->root, "schema_version", json_integer(v));
                        rp->installed_age_s = PQgetisnull(r, 0, 2) ? 0 : atoll(PQgetvalue(r, 0, 2));
                        rc = 0;
                }
        } else if (state && strcmp(state, "42P01") == 0) {
                err_set(rp->e, -1, "the database has no schema_migrations table: "
                                   "run easypost-syncd --migrate");
        } else {
                const char *m = PQresultErrorMessage(r);
                err_set(rp->e, -1, "reading the schema version: %.*s", line_len(m), m);
        }
        PQclear(r);
        return rc;
}

/* ---- text ---- */

#define TEXT_MAX 160 /* bytes of one string in the text report */

/* A string for the terminal: what the database holds may quote a payload (an
 * event's description, an error), so control characters (C0, DEL, C1) become
 * '?' (line breaks and tabs a space), and a long string ends in "...", cut
 * between two UTF-8 characters. */
static void
text_clean_string(json_t *j)
{
        const unsigned char *s = (const unsigned char *)json_string_value(j);
        size_t n = json_string_length(j), i = 0, k = 0;
        char buf[TEXT_MAX + 4];

        for (; i < n && k < TEXT_MAX; i++) {
                if (s[i] == '\n' || s[i] == '\r' || s[i] == '\t') {
                        buf[k++] = ' ';
                } else if (s[i] < 0x20 || s[i] == 0x7f) {
                        buf[k++] = '?';
                } else if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] < 0xa0) {
                        buf[k++] = '?';
                        i++;
                } else {
                        buf[k++] = (char)s[i];
                }
        }
        if (i < n) {
                size_t last = k;
                while (last > 0 && ((unsigned char)buf[last - 1] & 0xc0) == 0x80)
                        last--;
                if (last > 0 && (unsigned char)buf[last - 1] >= 0xc0)
                        k = last - 1; /* a character that may not be whole */
                memcpy(buf + k, "...", 3);
                k += 3;
        }
        if (json_string_setn(j, buf, k) != 0)
                json_string_set(j, "?");
}

static void
text_clean(json_t *j)
{
        const char *key;
        size_t i;
        json_t *v;

        if (json_is_object(j)) {
                json_object_foreach(j, key, v)
                        text_clean(v);
        } else if (json_is_array(j)) {
                json_array_foreach(j, i, v)
                        text_clean(v);
        } else if (json_is_string(j)) {
                text_clean_string(j);
        }
}

static void
text_events(FILE *f, const json_t *ev)
{
        size_t i;
        json_t *r;

        fprintf(f, "%-39s %10s %10s\n", "Events (by arrival)", "last hour", "last 24 h");
        json_array_foreach(json_object_get(ev, "by_description"), i, r) {
                bool known = json_is_true(json_object_get(r, "known"));
                fprintf(f, "  %-26s %-10s %10lld %10lld%s\n", str(r, "description"), str(r, "outcome"),
                        num(r, "last_hour"), num(r, "last_day"),
                        known ? "" : "  (type unknown to this version: stored raw)");
        }
        fprintf(f, "  %-37s %10lld %10lld\n", "all", num(ev, "last_hour"), num(ev, "last_day"));
}

static void
text_dead_letters(FILE *f, const json_t *d)
{
        size_t i;
        json_t *r;

        fprintf(f, "Dead letters: %lld in the last 24 h, %lld in all\n", num(d, "last_day"),
                num(d, "total"));
        json_array_foreach(json_object_get(d, "newest"), i, r)
                fprintf(f, "  %s  %s  %s  %s\n", str(r, "received_at"), str(r, "event_id"),
                        str(r, "description"), str(r, "error"));
}

static void
text_backlog(FILE *f, const json_t *b)
{
        char age[32];

        fprintf(f, "Projection backlog: %lld pending", num(b, "pending"));
        if (num(b, "pending") > 0)
                fprintf(f, ", the oldest received %s ago (%s)",
                        age_text(num(b, "oldest_age_s"), age, sizeof(age)), str(b, "oldest_received_at"));
        fputc('\n', f);
}

static void
text_sync_jobs(FILE *f, const json_t *j)
{
        const json_t *o = json_object_get(j, "oldest_pending");
        const json_t *x = json_object_get(j, "newest_failed");
        char age[32];

        fprintf(f, "Sync jobs: %lld pending, %lld running; last 24 h: %lld done, %lld failed%s\n",
                num(j, "pending"), num(j, "running"), num(j, "done_last_day"), num(j, "failed_last_day"),
                json_is_true(json_object_get(j, "api_key_set")) ? "" : " (no API key: sync is off)");
        if (json_is_object(o))
                fprintf(f, "  oldest pending: %s %s, queued %s ago (%s), %lld attempt(s)\n", str(o, "kind"),
                        str(o, "object_id"), age_text(num(o, "age_s"), age, sizeof(age)),
                        str(o, "created_at"), num(o, "attempts"));
        if (json_is_object(x))
                fprintf(f, "  newest failure: %s %s at %s: %s\n", str(x, "kind"), str(x, "object_id"),
                        str(x, "failed_at"), str(x, "last_error"));
}

static void
text_backfill(FILE *f, const json_t *b)
{
        char age[32];

        fprintf(f, "Backfill: ");
        if (!json_is_true(json_object_get(b, "enabled")))
                fprintf(f, "off (needs an API key and backfill_interval > 0); ");
        if (json_is_null(json_object_get(b, "cursor")) || !json_object_get(b, "cursor"))
                fprintf(f, "no cursor saved yet\n");
        else
                fprintf(f, "cursor %s, last moved %s ago (%s)\n", str(b, "cursor"),
                        age_text(num(b, "moved_age_s"), age, sizeof(age)), str(b, "moved_at"));
        const json_t *r = json_object_get(b, "last_run"), *d = json_object_get(b, "last_completed");
        if (!json_is_object(r)) {
                fprintf(f, "  last run: none recorded\n");
                return;
        }
        fprintf(f, "  last run: %s %s ago (%s), %lld event(s) recovered", str(r, "outcome"),
                age_text(num(r, "age_s"), age, sizeof(age)), str(r, "at"), num(r, "recovered"));
        if (json_is_string(json_object_get(r, "error")))
                fprintf(f, ": %.*s", line_len(str(r, "error")), str(r, "error"));
        fprintf(f, "\n");
        if (strcmp(str(r, "outcome"), "completed") == 0)
                return;
        if (json_is_object(d))
                fprintf(f, "  last completed run: %s ago (%s)\n", age_text(num(d, "age_s"), age, sizeof(age)),
                        str(d, "at"));
        else
                fprintf(f, "  last completed run: never\n");
}

static void
text_reconcile_run(FILE *f, const char *label, const json_t *r)
{
        char age[32];

        fprintf(f, "  %s: #%lld (%s) %s %s ago, trackers created since %s: %lld listed, %lld changed "
                   "(%lld with another status), %lld created",
                label, num(r, "id"), str(r, "reason"), str(r, "status"),
                age_text(num(r, "age_s"), age, sizeof(age)), str(r, "window_start"), num(r, "listed"),
                num(r, "changed"), num(r, "status_changed"), num(r, "created"));
        if (json_is_string(json_object_get(r, "error")))
                fprintf(f, ": %.*s", line_len(str(r, "error")), str(r, "error"));
        fprintf(f, "\n");
}

static void
text_reconcile(FILE *f, const json_t *rc)
{
        const json_t *r = json_object_get(rc, "last_run"), *d = json_object_get(rc, "last_completed");

        fprintf(f, "Reconcile: ");
        if (!json_is_true(json_object_get(rc, "enabled")))
                fprintf(f, "off (needs an API key)\n");
        else if (num(rc, "interval_s") > 0)
                fprintf(f, "every %lld s, and after a re-enabled webhook or a partial backfill\n",
                        num(rc, "interval_s"));
        else
                fprintf(f, "not scheduled; after a re-enabled webhook or a partial backfill\n");
        if (!json_is_object(r)) {
                fprintf(f, "  last run: none recorded\n");
                return;
        }
        text_reconcile_run(f, "last run", r);
        if (json_is_object(d) && num(d, "id") != num(r, "id"))
                text_reconcile_run(f, "last completed run", d);
}

static void
text_analytics(FILE *f, const json_t *a)
{
        size_t i;
        json_t *v;
        char age[32];

        if (num(a, "interval_s") > 0)
                fprintf(f, "Analytics views (refreshed every %lld s):\n", num(a, "interval_s"));
        else
                fprintf(f, "Analytics views (refresh off: analytics_interval = 0):\n");
        json_array_foreach(json_object_get(a, "views"), i, v) {
                fprintf(f, "  %-31s ", str(v, "view"));
                if (json_is_null(json_object_get(v, "last_refresh_at"))) {
                        fprintf(f, json_is_false(json_object_get(v, "due"))
                                           ? "not refreshed yet (not due: a new install)\n"
                                           : "never refreshed\n");
                        continue;
                }
                fprintf(f, "%s at %s (%s ago)", str(v, "outcome"), str(v, "last_refresh_at"),
                        age_text(num(v, "last_refresh_age_s"), age, sizeof(age)));
                if (strcmp(str(v, "outcome"), "ok") == 0) {
                        fprintf(f, ", %lld rows in %.1f ms\n", num(v, "rows"),
                                json_number_value(json_object_get(v, "duration_ms")));
                        continue;
                }
                fprintf(f, ": %s; ", str(v, "error"));
                if (json_is_null(json_object_get(v, "last_ok_at")))
                        fprintf(f, "never ok\n");
                else
                        fprintf(f, "last ok %s (%s ago)\n", str(v, "last_ok_at"),
                                age_text(num(v, "last_ok_age_s"), age, sizeof(age)));
        }
}

static void
text_metrics(FILE *f, const json_t *s)
{
        size_t i;
        json_t *m;
        char age[32], up[32];

        fprintf(f, "Instances (newest system_metrics row of the last 24 h):\n");
        if (json_array_size(json_object_get(s, "instances")) == 0)
                fprintf(f, "  none\n");
        json_array_foreach(json_object_get(s, "instances"), i, m)
                fprintf(f, "  %s  %s (%s ago)  up %s  rss %.1f MiB  cpu %.1f %%  queue %lld/%lld"
                           "  db %lld/%lld  stored %.2f/s  5xx %.2f/s  ack p99 %.1f ms\n",
                        str(m, "instance_id"), str(m, "ts"), age_text(num(m, "age_s"), age, sizeof(age)),
                        age_text(num(m, "uptime_s"), up, sizeof(up)),
                        (double)num(m, "rss_bytes") / 1048576.0,
                        json_number_value(json_object_get(m, "cpu_pct")), num(m, "queue_depth"),
                        num(m, "queue_limit"), num(m, "db_conns_up"), num(m, "db_conns_configured"),
                        json_number_value(json_object_get(m, "events_stored_ps")),
                        json_number_value(json_object_get(m, "http_5xx_ps")),
                        json_number_value(json_object_get(m, "ack_p99_ms")));
}

/* The report for a person; root is cleaned for the terminal first. */
static void
print_text(FILE *f, json_t *root)
{
        size_t i;
        json_t *r;

        text_clean(root);
        fprintf(f, "easypost-sync status at %s (schema %lld): %s\n", str(root, "generated_at"),
                num(root, "schema_version"),
                strcmp(str(root, "status"), "healthy") == 0 ? "healthy" : "NEEDS ATTENTION");
        json_array_foreach(json_object_get(root, "reasons"), i, r)
                fprintf(f, "  ! %s\n", str(r, "message"));
        fputc('\n', f);
        text_events(f, json_object_get(root, "events"));
        text_dead_letters(f, json_object_get(root, "dead_letters"));
        text_backlog(f, json_object_get(root, "projection_backlog"));
        text_sync_jobs(f, json_object_get(root, "sync_jobs"));
        text_backfill(f, json_object_get(root, "backfill"));
        text_reconcile(f, json_object_get(root, "reconcile"));
        text_analytics(f, json_object_get(root, "analytics"));
        text_metrics(f, json_object_get(root, "system_metrics"));
}

/* ---- entry ---- */

static int (*const sections[])(struct report *) = {
        sec_events, sec_dead_letters, sec_backlog, sec_sync_jobs, sec_backfill, sec_reconcile, sec_analytics,
        sec_metrics,
};

enum status_verdict
status_run(const struct cfg *cfg, bool json, FILE *out, struct err *e)
{
        struct report rp = { .cfg = cfg, .root = json_object(), .reasons = json_array(), .e = e };
        enum status_verdict v = STATUS_ERROR;

        json_object_set_new(rp.root, "status", json_string("error"));
        json_object_set_new(rp.root, "reasons", json_incref(rp.reasons));
        rp.pq = connect_db(cfg->database_url, e);
        if (rp.pq == NULL || check_schema(&rp) != 0)
                goto out;
        for (size_t i = 0; i < ARRAY_LEN(sections); i++)
                if (sections[i](&rp) != 0)
                        goto out;
        v = json_array_size(rp.reasons) > 0 ? STATUS_ATTENTION : STATUS_HEALTHY;
        json_object_set_new(rp.root, "status", json_string(v == STATUS_HEALTHY ? "healthy" : "attention"));
out:
        if (v == STATUS_ERROR) {
                json_decref(rp.root);
                rp.root = json_pack("{s:s, s:s}", "status", "error", "error", e->msg);
                if (rp.root == NULL) /* a message that is not UTF-8 */
                        rp.root = json_pack("{s:s, s:n}", "status", "error", "error");
        }
        if (json) {
                json_dumpf(rp.root, out, JSON_INDENT(2));
                fputc('\n', out);
        } else if (v != STATUS_ERROR) {
                print_text(out, rp.root);
        }
        if (rp.pq)
                PQclear(PQexec(rp.pq, "COMMIT"));
        PQfinish(rp.pq);
        json_decref(rp.reasons);
        json_decref(rp.root);
        return v;
}
