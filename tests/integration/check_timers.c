/*
 * check_timers.c - system_metrics rows, analytics refreshes (one per view and
 * slot across two daemons), timers under a database outage, a lock on a
 * view's base table that stalls the refresh but not the webhooks, and a
 * system_metrics row stuck on a lock that is given up, not waited for.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

static void
wipe(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, sync_jobs, "
                   "system_metrics, analytics_refreshes, refunds CASCADE");
}

static double
q_double(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQerrorMessage(c));
        double v = PQgetisnull(r, 0, 0) ? -1 : atof(PQgetvalue(r, 0, 0));
        PQclear(r);
        return v;
}

static char *
event_n(const char *prefix, int i, const char *desc, const char *status)
{
        char id[64], res[300];
        snprintf(id, sizeof(id), "evt_%s_%04d", prefix, i);
        snprintf(res, sizeof(res),
                 "{\"id\":\"trk_%s_%04d\",\"object\":\"Tracker\",\"carrier\":\"%s\",\"status\":\"%s\","
                 "\"tracking_code\":\"T%d\",\"updated_at\":\"2025-07-01T00:00:00Z\",\"tracking_details\":[]}",
                 prefix, i, i % 2 ? "UPS" : "USPS", status, i);
        return make_event(id, desc, res);
}

START_TEST(test_system_metrics_rows)
{
        enum { N = 40 };
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_METRICS_INTERVAL=1", NULL };

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        /* the mark: the second row written after daemon_start() returned, so
         * its /readyz polls are in rows up to the mark, whenever the first
         * row's sample was taken */
        db_exec(c, "CREATE TEMP TABLE started AS SELECT clock_timestamp() AS ts");
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 2) FROM system_metrics "
                                         "WHERE ts > (SELECT ts FROM started)", 2, 20000), 2);
        db_exec(c, "CREATE TEMP TABLE mark AS SELECT max(ts) AS ts FROM system_metrics");
        for (int i = 0; i < N; i++) {
                char *b = event_n("met", i, "batch.created", "x");
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        /* every event stored after the mark shows up in the rates of the following rows */
        ck_assert_int_eq(db_wait_long(c, "SELECT round(sum(events_stored_ps * interval_s)) FROM system_metrics "
                                         "WHERE ts > (SELECT ts FROM mark)", N, 20000), N);
        double req = q_double(c, "SELECT sum(http_requests_ps * interval_s) FROM system_metrics "
                                 "WHERE ts > (SELECT ts FROM mark)");
        ck_assert_msg(req >= N - 0.5 && req <= N + 5, "requests counted %.1f for %d sent", req, N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM system_metrics WHERE rss_bytes <= 0 OR open_fds <= 0 "
                                    "OR cpu_pct < 0 OR queue_limit <= 0 OR db_conns_configured <> 2 "
                                    "OR uptime_s <= 0", NULL), 0);
        ck_assert_int_ge(db_long(c, "SELECT count(*) FROM system_metrics WHERE ack_p50_ms > 0 AND "
                                    "ack_p99_ms >= ack_p50_ms AND ack_max_ms > 0", NULL), 1);
        PGresult *r = PQexec(c, "SELECT ts, instance_id, interval_s, rss_bytes, cpu_pct, open_fds, queue_depth, "
                                "queue_limit, db_conns_configured, db_conns_up, db_conns_busy, http_requests_ps, "
                                "events_stored_ps, duplicates_ps, http_4xx_ps, http_5xx_ps, ack_p50_ms, "
                                "ack_p99_ms, ack_max_ms, api_in_flight, uptime_s FROM system_metrics "
                                "WHERE events_stored_ps > 0 ORDER BY ts LIMIT 1");
        if (PQntuples(r) == 1) {
                fprintf(stderr, "sample system_metrics row:");
                for (int i = 0; i < PQnfields(r); i++)
                        fprintf(stderr, " %s=%s", PQfname(r, i), PQgetvalue(r, 0, i));
                fprintf(stderr, "\n");
        }
        PQclear(r);
        /* retention: a row older than metrics_retention_days goes at the next tick */
        db_exec(c, "INSERT INTO system_metrics (ts, instance_id, interval_s, rss_bytes, cpu_pct, open_fds, "
                   "queue_depth, queue_limit, db_conns_configured, db_conns_up, db_conns_busy, http_requests_ps, "
                   "events_stored_ps, duplicates_ps, http_4xx_ps, http_5xx_ps, uptime_s) VALUES "
                   "(now() - interval '31 days', 'old', 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1)");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM system_metrics WHERE instance_id = 'old'", 0, 20000), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_views_reflect_events_before_refresh)
{
        enum { N = 12 };
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        for (int i = 0; i < N; i++) {
                char *b = event_n("view", i, "tracker.updated", i < 8 ? "delivered" : "in_transit");
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        /* two refunds of a shipment with its postage, one of a shipment not fetched */
        db_exec(c, "INSERT INTO shipments (easypost_id, carrier, rate, currency)"
                   " VALUES ('shp_view_refunded', 'USPS', 7.25, 'USD')");
        for (int i = 0; i < 3; i++) {
                char id[32], res[300];
                snprintf(id, sizeof(id), "evt_view_rfnd_%d", i);
                snprintf(res, sizeof(res),
                         "{\"id\":\"rfnd_view_%d\",\"object\":\"Refund\",\"status\":\"refunded\","
                         "\"carrier\":\"USPS\",\"shipment_id\":\"%s\",\"tracking_code\":\"R%d\","
                         "\"created_at\":\"2025-07-02T10:00:00Z\",\"updated_at\":\"2025-07-02T10:00:00Z\"}",
                         i, i < 2 ? "shp_view_refunded" : "shp_view_unfetched", i);
                char *b = make_event(id, "refund.successful", res);
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        db_exec(c, "CREATE TEMP TABLE sent AS SELECT clock_timestamp() AS at");
        /* every view refreshed at least once since (refreshes go on every
         * second: a count of refreshes would be overtaken) */
        ck_assert_int_eq(db_wait_long(c, "SELECT count(DISTINCT view_name) FROM analytics_refreshes "
                                         "WHERE outcome = 'ok' AND started_at > (SELECT at FROM sent)",
                                      4, 30000), 4);
        ck_assert_int_eq(db_long(c, "SELECT refunds FROM analytics_refunds WHERE day = '2025-07-02' "
                                    "AND carrier = 'USPS' AND status = 'refunded'", NULL), 3);
        ck_assert_int_eq(db_long(c, "SELECT (postage * 100)::bigint FROM analytics_refunds "
                                    "WHERE day = '2025-07-02' AND carrier = 'USPS'", NULL), 1450);
        ck_assert_int_eq(db_long(c, "SELECT without_postage FROM analytics_refunds "
                                    "WHERE day = '2025-07-02' AND carrier = 'USPS'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT sum(trackers) FROM analytics_status_funnel", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT trackers FROM analytics_status_funnel WHERE carrier = 'USPS' "
                                    "AND status = 'delivered'", NULL), 4);
        ck_assert_int_eq(db_long(c, "SELECT trackers FROM analytics_status_funnel WHERE carrier = 'UPS' "
                                    "AND status = 'in_transit'", NULL), 2);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/* A refresh reads the whole history; with parallel workers it takes every
 * core PostgreSQL has while webhooks wait (bench/refresh.sh: at 3,000
 * events/s, thousands of late requests with workers, none without). The
 * refresh function runs with none, whatever the server's default. */
START_TEST(test_refresh_runs_without_parallel_workers)
{
        PGconn *c = db_open();

        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_proc"
                                    " WHERE oid = 'eps_refresh_view(text, bigint, text)'::regprocedure"
                                    " AND 'max_parallel_workers_per_gather=0' = ANY (proconfig)", NULL), 1);
        PQfinish(c);
}
END_TEST

START_TEST(test_two_daemons_one_refresh_per_view_and_slot)
{
        PGconn *c = db_open();
        struct daemon d1, d2;
        const char *e1[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=replica-a", NULL };
        const char *e2[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=replica-b", NULL };

        wipe(c);
        double t0 = (double)(clock_real_ms() / 1000u);
        ck_assert_int_eq(daemon_start(&d1, e1), 0);
        ck_assert_int_eq(daemon_start(&d2, e2), 0);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(DISTINCT tick), 5) FROM analytics_refreshes",
                                      5, 30000), 5);
        /* each replica reports every view's last refresh, whichever replica did it */
        const char *views[] = { "analytics_daily_volume", "analytics_carrier_performance",
                                "analytics_status_funnel", "analytics_refunds" };
        unsigned ports[] = { d1.port, d2.port };
        for (int i = 0; i < 2; i++)
                for (int v = 0; v < 4; v++) {
                        char name[160];
                        snprintf(name, sizeof(name),
                                 "easypost_sync_analytics_last_refresh_timestamp_seconds{view=\"%s\"}", views[v]);
                        double ts = daemon_metric_wait(ports[i], name, t0, 15000);
                        ck_assert_msg(ts >= t0 && ts <= (double)(clock_real_ms() / 1000u) + 1,
                                      "%s on replica %d: %.0f, started %.0f", name, i, ts, t0);
                }
        /* and the duration of its own last refresh of it: one replica at least refreshed each view */
        for (int v = 0; v < 4; v++) {
                char name[160];
                snprintf(name, sizeof(name),
                         "easypost_sync_analytics_last_refresh_duration_seconds{view=\"%s\"}", views[v]);
                double s1 = daemon_metric(d1.port, name), s2 = daemon_metric(d2.port, name);
                ck_assert_msg(s1 >= 0 && s2 >= 0 && s1 + s2 > 0 && s1 + s2 < 60, "%s: %f %f", name, s1, s2);
        }
        ck_assert_int_eq(daemon_stop(&d1, SIGTERM), 0);
        ck_assert_int_eq(daemon_stop(&d2, SIGTERM), 0);
        PGresult *r = PQexec(c, "SELECT tick, view_name, instance_id, outcome, rows, round(duration_ms::numeric, 1) "
                                "FROM analytics_refreshes ORDER BY tick, view_name");
        fprintf(stderr, "refresh log of two daemons (tick view instance outcome rows ms):\n");
        for (int i = 0; i < PQntuples(r); i++)
                fprintf(stderr, "  %s %s %s %s %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                        PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5));
        PQclear(r);
        /* every view at most once per slot */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM (SELECT view_name, tick FROM analytics_refreshes "
                                    "GROUP BY 1, 2 HAVING count(*) <> 1) d", NULL), 0);
        /* every slot begun (but the last, which the stop may cut) has all three
         * views. A slot may be missing altogether when a run outlasts the
         * interval on a loaded machine; one view of a slot only when the lock
         * of that view was held past the 5 s eps_refresh_view() waits for it,
         * by a refresh of an earlier slot still running 3 s (plus its commit)
         * into this one. */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM (SELECT DISTINCT tick FROM analytics_refreshes "
                                    "WHERE tick < (SELECT max(tick) FROM analytics_refreshes)) s "
                                    "CROSS JOIN unnest(ARRAY['analytics_daily_volume', "
                                    "'analytics_carrier_performance', 'analytics_status_funnel', "
                                    "'analytics_refunds']) v(name) "
                                    "WHERE NOT EXISTS (SELECT 1 FROM analytics_refreshes r "
                                    "WHERE r.tick = s.tick AND r.view_name = v.name) "
                                    "AND NOT EXISTS (SELECT 1 FROM analytics_refreshes p "
                                    "WHERE p.view_name = v.name AND p.tick < s.tick "
                                    "AND p.started_at + p.duration_ms * interval '1 millisecond' "
                                    "> to_timestamp(s.tick) + interval '3 s')", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(DISTINCT view_name) FROM analytics_refreshes", NULL), 4);
        PQfinish(c);
}
END_TEST

/* Sends n webhooks one after another; returns p50 and max latency in ms. */
static void
measure(unsigned port, const char *prefix, int n, double *p50, double *max)
{
        double *lat = xcalloc((size_t)n, sizeof(double));
        for (int i = 0; i < n; i++) {
                char *b = event_n(prefix, i, "batch.created", "x");
                uint64_t t0 = clock_mono_us();
                ck_assert_int_eq(post_event(port, b, strlen(b), NULL, 0), 200);
                lat[i] = (double)(clock_mono_us() - t0) / 1000.0;
                free(b);
        }
        for (int i = 1; i < n; i++)
                for (int k = i; k > 0 && lat[k - 1] > lat[k]; k--) {
                        double t = lat[k];
                        lat[k] = lat[k - 1];
                        lat[k - 1] = t;
                }
        *p50 = lat[n / 2];
        *max = lat[n - 1];
        free(lat);
}

/*
 * A new analytics_interval whose slots meet those of an old one: records
 * named by slot number (epoch / interval, as a daemon before this one named
 * them; here a year old, under the numbers a 2 s interval gives for the next
 * minute) would have every refresh skipped as done. Slots are named by the
 * second they start, so the views are refreshed; records past 30 days go.
 */
START_TEST(test_new_interval_refreshes_despite_old_records)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=2", NULL };

        wipe(c);
        db_exec(c, "INSERT INTO analytics_refreshes (view_name, tick, started_at, duration_ms, outcome, instance_id)"
                   " SELECT v, floor(extract(epoch FROM now()) / 2)::bigint + k, now() - interval '400 days', 1, 'ok',"
                   " 'old' FROM unnest(ARRAY['analytics_daily_volume', 'analytics_carrier_performance',"
                   " 'analytics_status_funnel', 'analytics_refunds']) v CROSS JOIN generate_series(0, 60) k");
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(DISTINCT view_name) FROM analytics_refreshes"
                                         " WHERE instance_id <> 'old' AND outcome = 'ok'", 4, 30000), 4);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM analytics_refreshes WHERE instance_id = 'old'"
                                    " AND view_name = 'analytics_daily_volume'", NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_locked_base_table_does_not_slow_webhooks)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };
        double p50a, maxa, p50b, maxb;

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        measure(d.port, "base", 100, &p50a, &maxa);
        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE trackers IN ACCESS EXCLUSIVE MODE");
        uint64_t t_lock = clock_mono_us();
        /* the refresh now waits on the lock on its own connection */
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE '%eps_refresh_view%'", 1, 20000), 1);
        measure(d.port, "locked", 100, &p50b, &maxb);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND query LIKE '%eps_refresh_view%'", NULL), 1);
        int held = 0;
        while (clock_mono_us() - t_lock < 10000000u) { /* hold it the full 10 s */
                double p, m;
                char prefix[32];
                snprintf(prefix, sizeof(prefix), "hold%d", held++);
                measure(d.port, prefix, 1, &p, &m);
                if (m > maxb)
                        maxb = m;
        }
        db_exec(locker, "COMMIT");
        fprintf(stderr, "webhook latency: p50 %.2f ms max %.2f ms before; p50 %.2f ms max %.2f ms "
                        "while a refresh waited on a 10 s lock (%d more sent during the hold)\n",
                p50a, maxa, p50b, maxb, 100 + held);
        ck_assert_msg(p50b < p50a * 3 + 5, "p50 rose from %.2f to %.2f ms", p50a, p50b);
        /* a webhook behind the blocked refresh would wait out the 10 s lock;
         * 5 s leaves room for an fsync stall on a busy disk */
        ck_assert_msg(maxb < 5000, "max latency %.2f ms while the refresh was blocked", maxb);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE '%eps_refresh_view%'", 0, 20000), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

/* A replica still refreshing a view for the slot before holds the view's
 * lock as the next slot begins: the next slot's refresh waits for it (up to
 * 5 s) instead of leaving that slot without the view. The test holds the
 * lock across two slot boundaries, as such a replica would. */
START_TEST(test_refresh_waits_for_a_refresh_of_the_slot_before)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM analytics_refreshes", 1, 20000), 1);
        db_exec(locker, "BEGIN");
        db_exec(locker, "SELECT pg_advisory_xact_lock(hashtext('easypost-sync refresh'), "
                        "hashtext('analytics_daily_volume'))");
        long k0 = db_long(locker, "SELECT floor(extract(epoch FROM clock_timestamp()))::int8", NULL);
        /* held until the slot after next has begun */
        ck_assert_int_eq(db_wait_long(c, "SELECT least(count(*), 1) FROM pg_stat_activity "
                                         "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
                                         "AND query LIKE '%eps_refresh_view%'", 1, 20000), 1);
        uint64_t until = (uint64_t)(k0 + 2) * 1000u + 200u, now = clock_real_ms();
        if (now < until)
                usleep((useconds_t)(until - now) * 1000u);
        char *release = db_text(locker, "SELECT clock_timestamp()::text", NULL);
        db_exec(locker, "COMMIT");
        char sql[512];
        snprintf(sql, sizeof(sql), "SELECT least(count(*), 1) FROM analytics_refreshes "
                                   "WHERE view_name = 'analytics_daily_volume' AND outcome = 'ok' "
                                   "AND tick > %ld AND to_timestamp(tick) < '%s'::timestamptz "
                                   "AND started_at >= '%s'::timestamptz", k0, release, release);
        ck_assert_msg(db_wait_long(c, sql, 1, 20000) == 1,
                      "no slot begun while the lock was held (after %ld, until %s) has the view", k0,
                      release);
        free(release);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

START_TEST(test_timers_skip_while_database_down)
{
        PGconn *c;
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_METRICS_INTERVAL=1", "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };

        c = db_open();
        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        /* the timers' own connection is up before the database goes */
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM system_metrics", 1, 20000), 1);
        PQfinish(c);
        pg_ctl("stop");
        ck_assert(wait_status(d.port, "/readyz", 503, 20000));
        /* a few ticks pass with the database down */
        ck_assert(!wait_status(d.port, "/readyz", 200, 2500));
        pg_ctl("start");
        c = db_open();
        db_exec(c, "CREATE TEMP TABLE back AS SELECT now() AS at");
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM system_metrics "
                                         "WHERE ts > (SELECT at FROM back)", 1, 30000), 1);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM analytics_refreshes "
                                         "WHERE started_at > (SELECT at FROM back)", 1, 30000), 1);
        ck_assert_int_eq(kill(d.pid, 0), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        /* one log line per state change, not one per skipped tick */
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "test $(grep -c 'skipping system_metrics ticks' '%s') -le 1", d.log);
        ck_assert_int_eq(system(cmd), 0);
        PQfinish(c);
}
END_TEST

/* The timers' connection has per-transaction limits: an INSERT stuck on a
 * lock is cancelled (lock_timeout) while the lock is still held, the tick is
 * logged as failed, and rows come again once the lock is gone. */
START_TEST(test_metrics_row_stuck_on_lock_is_given_up)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_METRICS_INTERVAL=1", NULL };
        static const char waiting[] = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE '%INSERT INTO system_metrics%'";

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM system_metrics", 1, 20000), 1);
        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE system_metrics IN ACCESS EXCLUSIVE MODE");
        ck_assert_int_eq(db_wait_long(c, waiting, 1, 20000), 1);
        /* given up while the lock is still held */
        ck_assert_msg(db_wait_long(c, waiting, 0, 20000) == 0,
                      "the system_metrics INSERT still waits on the lock after 20 s");
        db_exec(locker, "COMMIT");
        db_exec(c, "CREATE TEMP TABLE released AS SELECT clock_timestamp() AS at");
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 1) FROM system_metrics "
                                         "WHERE ts > (SELECT at FROM released)", 1, 20000), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "grep -q 'system_metrics row not written: .*lock timeout' '%s'", d.log);
        ck_assert_msg(system(cmd) == 0, "no log line for the cancelled row in %s", d.log);
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

Suite *
timers_suite(void)
{
        Suite *s = suite_create("timers");
        TCase *tc = tcase_create("timers");

        tcase_set_timeout(tc, 90);
        tcase_add_test(tc, test_system_metrics_rows);
        tcase_add_test(tc, test_views_reflect_events_before_refresh);
        tcase_add_test(tc, test_refresh_runs_without_parallel_workers);
        tcase_add_test(tc, test_two_daemons_one_refresh_per_view_and_slot);
        tcase_add_test(tc, test_new_interval_refreshes_despite_old_records);
        tcase_add_test(tc, test_locked_base_table_does_not_slow_webhooks);
        tcase_add_test(tc, test_refresh_waits_for_a_refresh_of_the_slot_before);
        tcase_add_test(tc, test_timers_skip_while_database_down);
        tcase_add_test(tc, test_metrics_row_stuck_on_lock_is_given_up);
        suite_add_tcase(s, tc);
        return s;
}
