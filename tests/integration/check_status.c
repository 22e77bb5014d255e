/*
 * check_status.c - easypost-syncd --status against a database each test
 * fills with its case: the real binary, its exit status, its text and its
 * JSON (parsed with jansson). Each test works in a schema of its own
 * (search_path in the connection string, migrated by the binary), so the
 * other suites' rows never reach the report and these never reach theirs.
 * A brand-new install is not reported for timer rows it cannot have yet;
 * and through PgBouncer in transaction mode, the report's settings stay in
 * its own transaction, not on the pooled server connection.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

struct run {
        int code;     /* exit status, -1 when killed */
        char *out;    /* stdout */
        char *err;    /* stderr */
        json_t *json; /* stdout parsed, when asked for --json */
};

/* A connection string to the test database inside schema name. */
static void
schema_url(const char *name, char *url, size_t n)
{
        snprintf(url, n, "%s options='-csearch_path=%s'", getenv("TEST_PG_CONNINFO"), name);
}

/* Runs easypost-syncd with DATABASE_URL=url, extra "NAME=value" settings and
 * arguments; stdout and stderr are collected. */
static struct run
run_syncd(const char *url, const char *const *env, const char *const *args)
{
        char outp[ITEST_PATH], errp[ITEST_PATH];
        struct run r = { 0 };

        r.code = syncd_wait(syncd_spawn(url, env, args, outp, errp));
        r.out = itest_slurp(outp);
        r.err = itest_slurp(errp);
        for (const char *const *a = args; *a; a++)
                if (strcmp(*a, "--json") == 0) {
                        json_error_t je;
                        r.json = json_loads(r.out, 0, &je);
                        ck_assert_msg(r.json != NULL, "--json output is not JSON (%s): %s", je.text, r.out);
                }
        return r;
}

static void
run_free(struct run *r)
{
        free(r->out);
        free(r->err);
        json_decref(r->json);
}

/* One statement of the form fmt % name on the test database, without its notices. */
static void
admin_exec(const char *fmt, const char *name)
{
        char sql[256];
        PGconn *c = db_open();

        db_exec(c, "SET client_min_messages = warning");
        snprintf(sql, sizeof(sql), fmt, name);
        db_exec(c, sql);
        PQfinish(c);
}

/* A fresh schema, migrated by the binary; returns a connection inside it. */
static PGconn *
schema_new(const char *name, char *url, size_t n)
{
        char sqldir[600];

        admin_exec("DROP SCHEMA IF EXISTS %s CASCADE", name);
        admin_exec("CREATE SCHEMA %s", name);
        schema_url(name, url, n);
        snprintf(sqldir, sizeof(sqldir), "--sql_dir=%s", srcdir_path("sql"));
        struct run m = run_syncd(url, NULL, (const char *const[]){ "--migrate", sqldir, NULL });
        ck_assert_msg(m.code == 0, "migrate into %s: %s", name, m.err);
        run_free(&m);
        PGconn *c = PQconnectdb(url);
        ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
        /* an event received `age` ago, its id a UUID v7 of that instant as the daemon makes it;
         * 'pending' is stored as the deferred projection stores it: queued */
        db_exec(c, "CREATE FUNCTION t_event(p_id text, p_desc text, p_status text, p_age interval,"
                   " p_error text DEFAULT NULL) RETURNS void LANGUAGE sql AS $$"
                   " WITH w AS (INSERT INTO webhook_events (id, event_id, description, raw, status, error,"
                   " received_at, processed_at)"
                   " VALUES ((lpad(to_hex(floor(extract(epoch FROM now() - p_age) * 1000)::int8), 12, '0')"
                   " || substr(md5(p_id), 1, 20))::uuid, p_id, p_desc, '{}',"
                   " CASE WHEN p_status = 'pending' THEN 'projected' ELSE p_status END, p_error,"
                   " now() - p_age, now() - p_age) RETURNING received_at, id)"
                   " INSERT INTO projection_queue (received_at, id) SELECT * FROM w WHERE p_status = 'pending' $$");
        return c;
}

static void
schema_drop(PGconn *c, const char *name)
{
        PQfinish(c);
        admin_exec("DROP SCHEMA %s CASCADE", name);
}

/* What a running daemon leaves: a system_metrics row a few seconds old and a
 * fresh refresh of every view. */
static void
fill_timers_fresh(PGconn *c)
{
        db_exec(c, "INSERT INTO system_metrics (ts, instance_id, interval_s, rss_bytes, cpu_pct, open_fds,"
                   " queue_depth, queue_limit, db_conns_configured, db_conns_up, db_conns_busy,"
                   " http_requests_ps, events_stored_ps, duplicates_ps, http_4xx_ps, http_5xx_ps,"
                   " ack_p99_ms, uptime_s)"
                   " VALUES (now() - interval '300 s', 'inst-a', 60, 1000000, 1.5, 10, 0, 4096, 2, 2, 0,"
                   "         1, 1, 0, 0, 0, 5, 600),"
                   "        (now() - interval '30 s', 'inst-a', 60, 20971520, 2.5, 12, 3, 4096, 2, 2, 0,"
                   "         4, 3.25, 0, 0, 0, 7.5, 3600),"
                   "        (now() - interval '20 s', 'inst-b', 60, 10485760, 0.5, 11, 0, 4096, 2, 1, 0,"
                   "         1, 0.5, 0, 0, 0, 2.5, 7200)");
        db_exec(c, "INSERT INTO analytics_refreshes (view_name, tick, started_at, duration_ms, rows, outcome,"
                   " instance_id)"
                   " SELECT matviewname, 1, now() - interval '60 s', 12.5, 40 + row_number() OVER (ORDER BY matviewname), 'ok', 'inst-a'"
                   " FROM pg_matviews WHERE schemaname = current_schema()");
}

static const char *const JSON_ARGS[] = { "--status", "--json", NULL };
static const char *const TEXT_ARGS[] = { "--status", NULL };

static long long
jnum(const json_t *root, const char *path)
{
        json_t *v = json_object_get(root, path);
        ck_assert_msg(json_is_integer(v), "%s is not an integer", path);
        return (long long)json_integer_value(v);
}

static json_t *
jget(json_t *root, const char *a, const char *b)
{
        json_t *v = json_object_get(json_object_get(root, a), b);
        ck_assert_msg(v != NULL, "%s.%s missing", a, b);
        return v;
}

/* The one reason whose check is `check`, or NULL. */
static const char *
reason_of(const json_t *root, const char *check)
{
        size_t i;
        json_t *r;

        json_array_foreach(json_object_get(root, "reasons"), i, r)
                if (strcmp(json_string_value(json_object_get(r, "check")), check) == 0)
                        return json_string_value(json_object_get(r, "message"));
        return NULL;
}

/* The description/outcome row of the events section. */
static json_t *
event_row(json_t *root, const char *desc, const char *outcome)
{
        size_t i;
        json_t *r;

        json_array_foreach(jget(root, "events", "by_description"), i, r)
                if (strcmp(json_string_value(json_object_get(r, "description")), desc) == 0 &&
                    strcmp(json_string_value(json_object_get(r, "outcome")), outcome) == 0)
                        return r;
        ck_abort_msg("no events row %s/%s", desc, outcome);
        return NULL;
}

START_TEST(test_healthy)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_healthy", url, sizeof(url));
        /* inside the hour, inside the day, outside the day */
        const int upd_hour = 3, upd_day = 2, batch_hour = 1, old = 4;

        for (int i = 0; i < upd_hour + upd_day + batch_hour + old; i++) {
                char sql[256];
                const char *desc = i < upd_hour + upd_day ? "tracker.updated"
                                   : i < upd_hour + upd_day + batch_hour ? "batch.created"
                                                                          : "tracker.created";
                const char *st = strcmp(desc, "batch.created") == 0 ? "stored" : "projected";
                const char *age = i < upd_hour ? "10 min"
                                  : i < upd_hour + upd_day ? "3 hours"
                                  : i < upd_hour + upd_day + batch_hour ? "30 min" : "2 days";
                snprintf(sql, sizeof(sql), "SELECT t_event('evt_h%d', '%s', '%s', '%s')", i, desc, st, age);
                db_exec(c, sql);
        }
        db_exec(c, "INSERT INTO sync_jobs (kind, object_id, status, updated_at) VALUES"
                   " ('shipment', 'shp_done', 'done', now() - interval '5 min'),"
                   " ('tracker', 'trk_later', 'pending', now())");
        db_exec(c, "UPDATE sync_jobs SET next_attempt_at = now() + interval '1 min', attempts = 2"
                   " WHERE object_id = 'trk_later'");
        fill_timers_fresh(c);

        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(j.code == 0, "exit %d: %s%s", j.code, j.out, j.err);
        ck_assert_str_eq(json_string_value(json_object_get(j.json, "status")), "healthy");
        ck_assert_int_eq(json_array_size(json_object_get(j.json, "reasons")), 0);
        ck_assert_int_eq(jnum(json_object_get(j.json, "events"), "last_hour"), upd_hour + batch_hour);
        ck_assert_int_eq(jnum(json_object_get(j.json, "events"), "last_day"),
                         upd_hour + upd_day + batch_hour);
        json_t *r = event_row(j.json, "tracker.updated", "projected");
        ck_assert_int_eq(jnum(r, "last_hour"), upd_hour);
        ck_assert_int_eq(jnum(r, "last_day"), upd_hour + upd_day);
        ck_assert_int_eq(jnum(event_row(j.json, "batch.created", "stored"), "last_day"), batch_hour);
        ck_assert_int_eq(json_array_size(jget(j.json, "events", "by_description")), 2);
        ck_assert_int_eq(jnum(json_object_get(j.json, "dead_letters"), "total"), 0);
        ck_assert_int_eq(jnum(json_object_get(j.json, "projection_backlog"), "pending"), 0);
        json_t *jobs = json_object_get(j.json, "sync_jobs");
        ck_assert_int_eq(jnum(jobs, "pending"), 1);
        ck_assert_int_eq(jnum(jobs, "done_last_day"), 1);
        ck_assert_int_eq(jnum(jobs, "failed_last_day"), 0);
        ck_assert_str_eq(json_string_value(jget(jobs, "oldest_pending", "object_id")), "trk_later");
        ck_assert_int_eq(jnum(json_object_get(jobs, "oldest_pending"), "attempts"), 2);
        ck_assert(json_is_false(jget(j.json, "backfill", "enabled")));
        /* every view, with the refresh inserted */
        json_t *views = jget(j.json, "analytics", "views");
        ck_assert_int_eq(json_array_size(views), 4);
        for (size_t i = 0; i < 4; i++) {
                json_t *v = json_array_get(views, i);
                ck_assert_str_eq(json_string_value(json_object_get(v, "outcome")), "ok");
                ck_assert_int_eq(jnum(v, "rows"), 41 + (long long)i);
                ck_assert(jnum(v, "last_ok_age_s") >= 60);
        }
        /* the newest row per instance */
        json_t *inst = jget(j.json, "system_metrics", "instances");
        ck_assert_int_eq(json_array_size(inst), 2);
        json_t *a = json_array_get(inst, 0);
        ck_assert_str_eq(json_string_value(json_object_get(a, "instance_id")), "inst-a");
        ck_assert_int_eq(jnum(a, "rss_bytes"), 20971520);
        ck_assert_int_eq(jnum(a, "queue_depth"), 3);
        ck_assert(jnum(a, "age_s") >= 30 && jnum(a, "age_s") < 300);
        ck_assert(json_real_value(json_object_get(a, "events_stored_ps")) == 3.25);
        ck_assert_int_eq(jnum(json_array_get(inst, 1), "db_conns_up"), 1);

        /* the text says the same */
        struct run t = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_msg(t.code == 0, "exit %d: %s%s", t.code, t.out, t.err);
        ck_assert_msg(strstr(t.out, ": healthy\n") != NULL, "%s", t.out);
        const char *all = strstr(t.out, "\n  all ");
        long long hour = -1, day = -1;
        ck_assert_msg(all && sscanf(all, "\n  all %lld %lld", &hour, &day) == 2, "%s", t.out);
        ck_assert_int_eq(hour, upd_hour + batch_hour);
        ck_assert_int_eq(day, upd_hour + upd_day + batch_hour);
        ck_assert_msg(strstr(t.out, "Sync jobs: 1 pending, 0 running; last 24 h: 1 done, 0 failed"), "%s",
                      t.out);
        ck_assert_msg(strstr(t.out, "inst-a  ") && strstr(t.out, "inst-b  "), "%s", t.out);
        ck_assert_msg(strstr(t.out, "rss 20.0 MiB") && strstr(t.out, "queue 3/4096"), "%s", t.out);
        run_free(&t);
        run_free(&j);
        schema_drop(c, "eps_status_healthy");
}
END_TEST

START_TEST(test_dead_letters)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_dead", url, sizeof(url));

        fill_timers_fresh(c);
        /* seven in the last day, one older; evt_dead_1 is the newest */
        for (int i = 1; i <= 7; i++) {
                char sql[256];
                snprintf(sql, sizeof(sql),
                         "SELECT t_event('evt_dead_%d', 'tracker.updated', 'failed', '%d min',"
                         " '22P02: bad input %d')", i, i * 3, i);
                db_exec(c, sql);
        }
        db_exec(c, "SELECT t_event('evt_dead_old', 'tracker.updated', 'failed', '3 days', 'old')");
        db_exec(c, "SELECT t_event('evt_fine', 'tracker.updated', 'projected', '1 min')");

        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(j.code == 1, "exit %d: %s%s", j.code, j.out, j.err);
        ck_assert_str_eq(json_string_value(json_object_get(j.json, "status")), "attention");
        ck_assert_int_eq(json_array_size(json_object_get(j.json, "reasons")), 1);
        ck_assert_str_eq(reason_of(j.json, "dead_letters"), "7 dead letters in the last 24 h");
        json_t *d = json_object_get(j.json, "dead_letters");
        ck_assert_int_eq(jnum(d, "last_day"), 7);
        ck_assert_int_eq(jnum(d, "total"), 8);
        json_t *newest = json_object_get(d, "newest");
        ck_assert_int_eq(json_array_size(newest), 5);
        for (int i = 0; i < 5; i++) {
                char id[32], err[64];
                snprintf(id, sizeof(id), "evt_dead_%d", i + 1);
                snprintf(err, sizeof(err), "22P02: bad input %d", i + 1);
                ck_assert_str_eq(json_string_value(json_object_get(json_array_get(newest, i), "event_id")), id);
                ck_assert_str_eq(json_string_value(json_object_get(json_array_get(newest, i), "error")), err);
        }
        ck_assert_int_eq(jnum(event_row(j.json, "tracker.updated", "failed"), "last_day"), 7);

        struct run t = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_int_eq(t.code, 1);
        ck_assert_msg(strstr(t.out, "NEEDS ATTENTION\n  ! 7 dead letters in the last 24 h\n"), "%s", t.out);
        ck_assert_msg(strstr(t.out, "Dead letters: 7 in the last 24 h, 8 in all\n"), "%s", t.out);
        const char *at = t.out;
        for (int i = 1; i <= 5; i++) {
                char line[64];
                snprintf(line, sizeof(line), "evt_dead_%d  tracker.updated  22P02: bad input %d\n", i, i);
                const char *p = strstr(at, line);
                ck_assert_msg(p != NULL, "%s not after the previous one in:\n%s", line, t.out);
                at = p;
        }
        ck_assert_msg(strstr(t.out, "evt_dead_6") == NULL, "%s", t.out);
        run_free(&t);
        run_free(&j);
        schema_drop(c, "eps_status_dead");
}
END_TEST

START_TEST(test_backlog)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_backlog", url, sizeof(url));

        fill_timers_fresh(c);
        /* a backlog a minute old is the projector at work: healthy */
        db_exec(c, "SELECT t_event('evt_p1', 'tracker.updated', 'pending', '1 min')");
        struct run h = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(h.code == 0, "exit %d: %s%s", h.code, h.out, h.err);
        ck_assert_int_eq(jnum(json_object_get(h.json, "projection_backlog"), "pending"), 1);
        run_free(&h);
        /* what the database quotes from a payload reaches a terminal harmless, the JSON exact */
        db_exec(c, "SELECT t_event('evt_esc', E'evil\\u001b[2J\\u009b.' || repeat('x', 300), 'stored', '1 min')");
        struct run t = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_int_eq(t.code, 0);
        ck_assert_msg(strstr(t.out, "evil?[2J?.xxx") && strstr(t.out, "xxx... ") && !strchr(t.out, '\x1b') &&
                              !strstr(t.out, "\xc2\x9b"),
                      "%s", t.out);
        run_free(&t);
        struct run e = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_int_eq(e.code, 0);
        const char *desc = json_string_value(
                json_object_get(json_array_get(jget(e.json, "events", "by_description"), 0), "description"));
        ck_assert_msg(strncmp(desc, "evil\x1b[2J\xc2\x9b.xxx", 12) == 0 && strlen(desc) == 311, "%s", desc);
        run_free(&e);

        db_exec(c, "SELECT t_event('evt_p2', 'tracker.updated', 'pending', '10 min')");
        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(j.code == 1, "exit %d: %s%s", j.code, j.out, j.err);
        json_t *b = json_object_get(j.json, "projection_backlog");
        ck_assert_int_eq(jnum(b, "pending"), 2);
        ck_assert(jnum(b, "oldest_age_s") >= 600 && jnum(b, "oldest_age_s") < 900);
        ck_assert_msg(reason_of(j.json, "projection_backlog") &&
                              strstr(reason_of(j.json, "projection_backlog"), "2 pending, the oldest received 1"),
                      "%s", j.out);
        ck_assert_int_eq(json_array_size(json_object_get(j.json, "reasons")), 1);
        run_free(&j);
        schema_drop(c, "eps_status_backlog");
}
END_TEST

START_TEST(test_failed_sync_jobs)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_jobs", url, sizeof(url));

        fill_timers_fresh(c);
        db_exec(c, "INSERT INTO sync_jobs (kind, object_id, status, attempts, last_status, last_error, updated_at)"
                   " VALUES ('shipment', 'shp_ok', 'done', 1, 200, NULL, now() - interval '1 hour'),"
                   " ('tracker', 'trk_gone', 'failed', 1, 404, '404 Not Found', now() - interval '20 min'),"
                   " ('shipment', 'shp_bad', 'failed', 10, 500,"
                   "  'gave up after 10 attempts: 500 Internal Server Error', now() - interval '10 min'),"
                   " ('shipment', 'shp_long_ago', 'failed', 1, 404, 'old', now() - interval '2 days'),"
                   " ('shipment', 'shp_wait', 'pending', 0, NULL, NULL, now())");
        db_exec(c, "UPDATE sync_jobs SET created_at = now() - interval '45 min' WHERE object_id = 'shp_wait'");

        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(j.code == 1, "exit %d: %s%s", j.code, j.out, j.err);
        json_t *s = json_object_get(j.json, "sync_jobs");
        ck_assert_int_eq(jnum(s, "failed_last_day"), 2);
        ck_assert_int_eq(jnum(s, "done_last_day"), 1);
        ck_assert_int_eq(jnum(s, "pending"), 1);
        ck_assert_str_eq(json_string_value(jget(s, "newest_failed", "object_id")), "shp_bad");
        ck_assert(jnum(json_object_get(s, "oldest_pending"), "age_s") >= 45 * 60);
        ck_assert_str_eq(reason_of(j.json, "sync_jobs_failed"),
                         "2 sync jobs failed in the last 24 h (newest: shipment shp_bad: "
                         "gave up after 10 attempts: 500 Internal Server Error)");
        /* without an API key a due job waits by design; with one, nobody claiming it is a reason */
        ck_assert_int_eq(json_array_size(json_object_get(j.json, "reasons")), 1);
        run_free(&j);
        db_exec(c, "UPDATE sync_jobs SET next_attempt_at = now() - interval '20 min' WHERE object_id = 'shp_wait'");
        struct run k = run_syncd(url, (const char *const[]){ "EASYPOST_API_KEY=EZTKtestkey0123456789", NULL },
                                 JSON_ARGS);
        ck_assert_int_eq(k.code, 1);
        ck_assert_msg(reason_of(k.json, "sync_jobs_overdue"), "%s", k.out);
        ck_assert_msg(strstr(k.out, "EZTKtestkey") == NULL, "the API key was printed");
        run_free(&k);
        schema_drop(c, "eps_status_jobs");
}
END_TEST

/* Views, metrics and backfill that stopped moving. */
START_TEST(test_stale_timers)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_timers", url, sizeof(url));

        /* installed a day ago: every timer is due */
        db_exec(c, "UPDATE schema_migrations SET applied_at = now() - interval '1 day'");

        db_exec(c, "INSERT INTO analytics_refreshes (view_name, tick, started_at, duration_ms, rows, outcome,"
                   " error, instance_id) VALUES"
                   " ('analytics_daily_volume', 1, now() - interval '20 min', 5, 1, 'ok', NULL, 'i'),"
                   " ('analytics_daily_volume', 2, now() - interval '1 min', 5, NULL, 'failed', 'XX000: boom', 'i'),"
                   " ('analytics_carrier_performance', 2, now() - interval '1 min', 5, 1, 'ok', NULL, 'i')");
        db_exec(c, "INSERT INTO sync_state (key, value, updated_at)"
                   " VALUES ('backfill_cursor', 'evt_cursor', now() - interval '2 hours')");
        db_exec(c, "SELECT t_event('evt_after', 'tracker.updated', 'projected', '1 hour')");

        struct run j = run_syncd(url, (const char *const[]){ "EASYPOST_API_KEY=EZTKtestkey0123456789", NULL },
                                 JSON_ARGS);
        ck_assert_msg(j.code == 1, "exit %d: %s%s", j.code, j.out, j.err);
        ck_assert_str_eq(reason_of(j.json, "system_metrics_stale"),
                         "no system_metrics row in the last 24 h: is the daemon running?");
        ck_assert_msg(reason_of(j.json, "backfill_stale") &&
                              strstr(reason_of(j.json, "backfill_stale"), "received 6"),
                      "%s", j.out);
        ck_assert_str_eq(json_string_value(jget(j.json, "backfill", "cursor")), "evt_cursor");
        long long behind = jnum(jget(j.json, "backfill", "first_event_after_cursor"), "age_s");
        ck_assert(behind >= 3600 && behind < 3600 + 300);
        /* three stale views (one failing since, two never refreshed), one fresh */
        size_t i, stale = 0;
        json_t *r;
        json_array_foreach(json_object_get(j.json, "reasons"), i, r)
                stale += strcmp(json_string_value(json_object_get(r, "check")), "analytics_stale") == 0;
        ck_assert_int_eq(stale, 3);
        ck_assert_int_eq(json_array_size(json_object_get(j.json, "reasons")), 5);
        run_free(&j);

        struct run t = run_syncd(url, (const char *const[]){ "EASYPOST_API_KEY=EZTKtestkey0123456789", NULL },
                                 TEXT_ARGS);
        ck_assert_int_eq(t.code, 1);
        ck_assert_msg(strstr(t.out, "! view analytics_daily_volume last refreshed 2") &&
                              strstr(t.out, "! view analytics_status_funnel has no successful refresh") &&
                              strstr(t.out, "XX000: boom"),
                      "%s", t.out);
        run_free(&t);

        /* the same rows with the timers off in the configuration: nothing to judge */
        struct run off = run_syncd(url,
                                   (const char *const[]){ "EASYPOST_SYNC_ANALYTICS_INTERVAL=0",
                                                          "EASYPOST_SYNC_METRICS_INTERVAL=0", NULL },
                                   JSON_ARGS);
        ck_assert_msg(off.code == 0, "exit %d: %s", off.code, off.out);
        run_free(&off);
        schema_drop(c, "eps_status_timers");
}
END_TEST

/* The last backfill run as eps_backfill_record left it: shown in the JSON
 * and the text; backfill_stale counts from the last completed run, not from
 * the cursor (which a run with nothing new does not move). */
START_TEST(test_backfill_runs)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_backfill", url, sizeof(url));
        const char *const env[] = { "EASYPOST_API_KEY=EZTKtestkey0123456789", NULL };

        db_exec(c, "INSERT INTO sync_state (key, value, updated_at)"
                   " VALUES ('backfill_cursor', 'evt_cursor', now() - interval '3 hours')");
        db_exec(c, "SELECT t_event('evt_after', 'tracker.updated', 'projected', '1 hour')");
        db_exec(c, "SELECT eps_backfill_record('completed', 3, NULL)");
        db_exec(c, "UPDATE sync_state SET updated_at = now() - interval '10 min' WHERE key LIKE 'backfill_last_%'");
        struct run j = run_syncd(url, env, JSON_ARGS);
        ck_assert_msg(reason_of(j.json, "backfill_stale") == NULL, "%s", j.out);
        json_t *last = jget(j.json, "backfill", "last_run");
        ck_assert_str_eq(json_string_value(json_object_get(last, "outcome")), "completed");
        ck_assert_int_eq(jnum(jget(j.json, "backfill", "last_run"), "recovered"), 3);
        ck_assert(json_is_null(json_object_get(last, "error")));
        long long age = jnum(jget(j.json, "backfill", "last_completed"), "age_s");
        ck_assert(age >= 600 && age < 600 + 300);
        run_free(&j);

        /* completed two hours ago, failed since: stale, and the text says why */
        db_exec(c, "UPDATE sync_state SET updated_at = now() - interval '2 hours'"
                   " WHERE key = 'backfill_last_completed'");
        db_exec(c, "SELECT eps_backfill_record('failed', 0, 'listing events: HTTP error')");
        j = run_syncd(url, env, JSON_ARGS);
        ck_assert_msg(reason_of(j.json, "backfill_stale") &&
                              strstr(reason_of(j.json, "backfill_stale"), "no backfill run has completed since") &&
                              strstr(reason_of(j.json, "backfill_stale"), "received 6"),
                      "%s", j.out);
        last = jget(j.json, "backfill", "last_run");
        ck_assert_str_eq(json_string_value(json_object_get(last, "outcome")), "failed");
        ck_assert_str_eq(json_string_value(json_object_get(last, "error")), "listing events: HTTP error");
        run_free(&j);
        struct run t = run_syncd(url, env, TEXT_ARGS);
        ck_assert_msg(strstr(t.out, "  last run: failed ") &&
                              strstr(t.out, "), 0 event(s) recovered: listing events: HTTP error\n") &&
                              strstr(t.out, "  last completed run: 2 h 0 min ago ("),
                      "%s", t.out);
        run_free(&t);
        schema_drop(c, "eps_status_backfill");
}
END_TEST

/* With sequential scans off and every plan shown, no query of the report
 * reads a table that grows without an index. */
START_TEST(test_uses_indexes)
{
        char url[1024], explain[1400];
        PGconn *c = schema_new("eps_status_plans", url, sizeof(url));
        const char *grows[] = { "webhook_events", "sync_jobs", "analytics_refreshes", "system_metrics" };

        fill_timers_fresh(c);
        db_exec(c, "SELECT t_event('evt_x', 'tracker.updated', 'failed', '1 min', 'x')");
        db_exec(c, "INSERT INTO sync_state (key, value) VALUES ('backfill_cursor', 'evt_x')");
        db_exec(c, "ANALYZE");
        snprintf(explain, sizeof(explain),
                 "%.*s -cenable_seqscan=off -csession_preload_libraries=auto_explain"
                 " -cauto_explain.log_min_duration=0 -cauto_explain.log_level=notice'",
                 (int)strlen(url) - 1, url);
        struct run r = run_syncd(explain, (const char *const[]){ "EASYPOST_API_KEY=EZTKtestkey0123456789", NULL },
                                 JSON_ARGS);
        ck_assert_msg(r.code == 1, "exit %d: %s", r.code, r.err);
        size_t plans = 0;
        for (const char *p = strstr(r.err, "Query Text:"); p; p = strstr(p + 1, "Query Text:"))
                plans++;
        ck_assert_msg(plans >= 10, "%zu plans shown: %.600s", plans, r.err);
        for (size_t i = 0; i < ARRAY_LEN(grows); i++) {
                char seq[64];
                snprintf(seq, sizeof(seq), "Seq Scan on %s", grows[i]);
                const char *at = strstr(r.err, seq);
                /* (a partition's name begins with its table's) */
                ck_assert_msg(at == NULL, "%s in: %.600s", seq, at && at - r.err > 400 ? at - 400 : r.err);
        }
        run_free(&r);
        schema_drop(c, "eps_status_plans");
}
END_TEST

START_TEST(test_errors)
{
        char url[1024];

        /* nothing listens there */
        snprintf(url, sizeof(url), "host=127.0.0.1 port=%u dbname=none user=none", free_port());
        struct run t = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_int_eq(t.code, 2);
        ck_assert_msg(strstr(t.err, "easypost-syncd: status: cannot connect to the database: "), "%s", t.err);
        ck_assert_str_eq(t.out, "");
        run_free(&t);
        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_int_eq(j.code, 2);
        ck_assert_str_eq(json_string_value(json_object_get(j.json, "status")), "error");
        ck_assert(strstr(json_string_value(json_object_get(j.json, "error")), "cannot connect") != NULL);
        run_free(&j);

        /* a configuration the daemon would refuse */
        struct run b = run_syncd(url, NULL, (const char *const[]){ "--status", "--max_body_bytes=1", NULL });
        ck_assert_int_eq(b.code, 2);
        ck_assert_msg(strstr(b.err, "easypost-syncd: configuration: "), "%s", b.err);
        run_free(&b);

        /* a schema that was never migrated */
        admin_exec("DROP SCHEMA IF EXISTS %s CASCADE", "eps_status_empty");
        admin_exec("CREATE SCHEMA %s", "eps_status_empty");
        schema_url("eps_status_empty", url, sizeof(url));
        struct run e = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_int_eq(e.code, 2);
        ck_assert_msg(strstr(e.err, "no schema_migrations table: run easypost-syncd --migrate"), "%s", e.err);
        run_free(&e);
        admin_exec("DROP SCHEMA %s CASCADE", "eps_status_empty");
}
END_TEST

static size_t
reasons_of(const json_t *root, const char *check)
{
        size_t i, n = 0;
        json_t *r;

        json_array_foreach(json_object_get(root, "reasons"), i, r)
                n += strcmp(json_string_value(json_object_get(r, "check")), check) == 0;
        return n;
}

/* Right after the quick start: migrated, the daemon not yet through its
 * first intervals. Nothing is wrong; the views are "not refreshed yet". Once
 * three intervals have passed since the install, the same rows are stale. */
START_TEST(test_new_install_healthy)
{
        char url[1024];
        PGconn *c = schema_new("eps_status_new", url, sizeof(url));

        struct run j = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(j.code == 0, "exit %d: %s%s", j.code, j.out, j.err);
        ck_assert_str_eq(json_string_value(json_object_get(j.json, "status")), "healthy");
        json_t *views = jget(j.json, "analytics", "views");
        ck_assert_int_eq(json_array_size(views), 4);
        for (size_t i = 0; i < 4; i++)
                ck_assert(json_is_false(json_object_get(json_array_get(views, i), "due")));
        run_free(&j);
        struct run t = run_syncd(url, NULL, TEXT_ARGS);
        ck_assert_msg(t.code == 0 && strstr(t.out, ": healthy\n") && strstr(t.out, "not refreshed yet"),
                      "exit %d: %s", t.code, t.out);
        run_free(&t);

        db_exec(c, "UPDATE schema_migrations SET applied_at = now() - interval '1 hour'");
        struct run o = run_syncd(url, NULL, JSON_ARGS);
        ck_assert_msg(o.code == 1, "exit %d: %s%s", o.code, o.out, o.err);
        ck_assert_int_eq(reasons_of(o.json, "analytics_stale"), 4);
        ck_assert_int_eq(reasons_of(o.json, "system_metrics_stale"), 1);
        run_free(&o);
        schema_drop(c, "eps_status_new");
}
END_TEST

/* PgBouncer (transaction mode, one server connection) between --status and
 * PostgreSQL: after the report, the next client handed that server
 * connection sees the server's own statement_timeout, not the report's. */
START_TEST(test_settings_stay_in_the_transaction_through_pgbouncer)
{
        const char *tmp = getenv("TEST_TMPDIR"), *dir = getenv("TEST_PG_DIR"), *port = getenv("TEST_PG_PORT");
        char d[600], cmd[4000], url[700], pidf[700], path[700];
        unsigned bport = free_port();

        if (system("command -v pgbouncer >/dev/null 2>&1") != 0 || !tmp || !dir || !port) {
                fprintf(stderr, "status: no pgbouncer (or no harness cluster): pooled check skipped\n");
                return;
        }
        PGconn *c = db_open();
        char *db = db_text(c, "SELECT current_database()", NULL);
        PQfinish(c);
        snprintf(d, sizeof(d), "%s/pgbouncer-status", tmp);
        snprintf(pidf, sizeof(pidf), "%s/pgbouncer.pid", d);
        ck_assert_int_eq(mkdir(d, 0755) == 0 || errno == EEXIST, 1);
        snprintf(path, sizeof(path), "%s/users.txt", d);
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "\"postgres\" \"\"\n");
        fclose(f);
        snprintf(path, sizeof(path), "%s/pgbouncer.ini", d);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "[databases]\n%s = host=%s port=%s dbname=%s user=postgres\n[pgbouncer]\n"
                   "listen_addr = 127.0.0.1\nlisten_port = %u\nunix_socket_dir =\nauth_type = trust\n"
                   "auth_file = %s/users.txt\npool_mode = transaction\ndefault_pool_size = 1\n"
                   "logfile = %s/pgbouncer.log\npidfile = %s\n",
                db, dir, port, db, bport, d, d, pidf);
        fclose(f);
        /* PgBouncer refuses to run as root: as root, as the cluster's user */
        snprintf(cmd, sizeof(cmd),
                 "if [ \"$(id -u)\" = 0 ]; then u=$('%s' user '%s') && chown -R \"$u\" '%s' &&"
                 " runuser -u \"$u\" -- pgbouncer -q -d '%s'; else pgbouncer -q -d '%s'; fi",
                 srcdir_path("tests/lib/pg.sh"), dir, d, path, path);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(url, sizeof(url), "host=127.0.0.1 port=%u user=postgres dbname=%s", bport, db);
        PGconn *b = NULL;
        for (int i = 0; i < 200; i++) { /* up to 10 s for PgBouncer to listen */
                b = PQconnectdb(url);
                if (PQstatus(b) == CONNECTION_OK)
                        break;
                PQfinish(b);
                b = NULL;
                usleep(50000);
        }
        ck_assert_msg(b != NULL, "PgBouncer did not start (%s/pgbouncer.log)", d);
        char *before = db_text(b, "SELECT current_setting('statement_timeout')", NULL);

        struct run j = run_syncd(url, NULL, JSON_ARGS);
        char *after = db_text(b, "SELECT current_setting('statement_timeout')", NULL);
        char *pid = itest_slurp(pidf);
        kill((pid_t)atoi(pid), SIGTERM); /* before any assertion: never left running */
        PQfinish(b);
        ck_assert_msg(j.code == 0 || j.code == 1, "exit %d: %s%s", j.code, j.out, j.err);
        ck_assert_msg(strstr(j.out, "\"generated_at\"") != NULL, "%s", j.out);
        run_free(&j);
        ck_assert_str_eq(after, before);
        free(pid);
        free(before);
        free(after);
        free(db);
}
END_TEST

Suite *
status_suite(void)
{
        Suite *s = suite_create("status");
        TCase *tc = tcase_create("status");

        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_healthy);
        tcase_add_test(tc, test_dead_letters);
        tcase_add_test(tc, test_backlog);
        tcase_add_test(tc, test_failed_sync_jobs);
        tcase_add_test(tc, test_stale_timers);
        tcase_add_test(tc, test_backfill_runs);
        tcase_add_test(tc, test_uses_indexes);
        tcase_add_test(tc, test_errors);
        tcase_add_test(tc, test_new_install_healthy);
        tcase_add_test(tc, test_settings_stay_in_the_transaction_through_pgbouncer);
        suite_add_tcase(s, tc);
        return s;
}
