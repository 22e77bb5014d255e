/*
 * check_partitions.c - monthly partitions of webhook_events and
 * shipment_events: made ahead by --migrate and by the analytics tick, an
 * event whose month has no partition answered 503 (never a dead letter),
 * dedup across partitions, retention that drops whole months but keeps
 * pending events and dead letters, old sync jobs deleted in batches, the
 * conversion of an unpartitioned database with data, and the query plans
 * over three filled months.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db_migrate.h"
#include "itest.h"
#include "metrics.h"
#include "util.h"

/* SQL: how many of the current UTC month and the `ahead` months after it
 * have a partition of parent covering them. */
static void
covered_sql(char *buf, size_t cap, const char *parent, int ahead)
{
        snprintf(buf, cap,
                 "SELECT count(*) FROM generate_series(0, %d) m "
                 "CROSS JOIN LATERAL (SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
                 " + make_interval(months => m) AS lo) b "
                 "WHERE EXISTS (SELECT 1 FROM eps_partitions('%s') p WHERE p.lo <= b.lo"
                 " AND p.hi >= b.lo + interval '1 month' AND NOT p.detaching)",
                 ahead, parent);
}

static long
months_covered(PGconn *c, const char *parent, int ahead)
{
        char sql[600];
        covered_sql(sql, sizeof(sql), parent, ahead);
        return db_long(c, sql, NULL);
}

/* The name of parent's partition for the month `m` months from now. */
static char *
month_part(PGconn *c, const char *parent, int m)
{
        char sql[400];
        snprintf(sql, sizeof(sql),
                 "SELECT part::text FROM eps_partitions('%s') p WHERE p.lo = (date_trunc('month', "
                 "now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + make_interval(months => %d)",
                 parent, m);
        return db_text(c, sql, NULL);
}

static int run_migrate(const char *conninfo, const char *sql_dir);

static long
rel_exists(PGconn *c, const char *name)
{
        return db_long(c, "SELECT count(*) FROM pg_class WHERE relname = $1", name);
}

START_TEST(test_partitions_ahead_after_migrate_and_tick)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };

        /* --migrate (tests/integration/integration.sh) made this month and three more */
        ck_assert_int_eq(months_covered(c, "webhook_events", 3), 4);
        ck_assert_int_eq(months_covered(c, "shipment_events", 3), 4);
        /* shipment_events is keyed by the tracker's first write: no partition below the months */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM eps_partitions('shipment_events') "
                                    "WHERE lo = '-infinity'", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_partitioned_table t JOIN pg_class c "
                                    "ON c.oid = t.partrelid WHERE c.relname IN "
                                    "('webhook_events', 'shipment_events') AND t.partdefid <> 0", NULL), 0);

        /* the furthest months go; the tick makes them again, once per slot */
        for (int i = 0; i < 2; i++) {
                const char *parent = i == 0 ? "webhook_events" : "shipment_events";
                char *part = month_part(c, parent, 3), sql[300];
                ck_assert_str_ne(part, "<none>");
                snprintf(sql, sizeof(sql), "ALTER TABLE %s DETACH PARTITION %s", parent, part);
                db_exec(c, sql);
                snprintf(sql, sizeof(sql), "DROP TABLE %s", part);
                db_exec(c, sql);
                free(part);
        }
        ck_assert_int_eq(months_covered(c, "webhook_events", 3), 3);
        db_exec(c, "TRUNCATE partition_maintenance");
        ck_assert_int_eq(daemon_start(&d, env), 0);
        char sql[700];
        covered_sql(sql, sizeof(sql), "webhook_events", 3);
        ck_assert_int_eq(db_wait_long(c, sql, 4, 20000), 4);
        covered_sql(sql, sizeof(sql), "shipment_events", 3);
        ck_assert_int_eq(db_wait_long(c, sql, 4, 20000), 4);
        /* a few more ticks: each slot's run is recorded once, by this instance */
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 3) FROM partition_maintenance", 3, 20000), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM partition_maintenance WHERE created > 0", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM partition_maintenance WHERE instance_id = ''", NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

static char *
tracker_body(const char *evt, const char *trk, const char *detail_time)
{
        char res[600];
        snprintf(res, sizeof(res),
                 "{\"id\":\"%s\",\"object\":\"Tracker\",\"carrier\":\"USPS\",\"status\":\"in_transit\","
                 "\"tracking_code\":\"TC%s\",\"updated_at\":\"%s\",\"tracking_details\":["
                 "{\"object\":\"TrackingDetail\",\"status\":\"in_transit\",\"message\":\"scan\","
                 "\"datetime\":\"%s\"}]}",
                 trk, trk, detail_time, detail_time);
        return make_event(evt, "tracker.updated", res);
}

/* A tracking detail dated 2099 (a carrier's clock) is stored as sent,
 * projected, answered 200 and counted in easypost_sync_history_odd_dates;
 * its neighbours too. An event whose own month has no raw events partition
 * (the upkeep stopped for months) is answered 503, counted, reported by
 * /readyz and never stored as a dead letter; once the month is back the
 * retry is stored. */
START_TEST(test_carrier_date_2099_stored_and_counted)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };
        char resp[512];

        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"partitions\":\"ok\""));

        /* a tracking detail in 2099 among ordinary events */
        enum { N = 24 };
        char *bodies[N];
        size_t lens[N];
        int st[N];
        for (int i = 0; i < N; i++) {
                char evt[48], trk[48];
                snprintf(evt, sizeof(evt), "evt_nopart_%02d", i);
                snprintf(trk, sizeof(trk), "trk_nopart_%02d", i);
                bodies[i] = tracker_body(evt, trk, i == 7 ? "2099-01-15T10:00:00Z" : "2025-03-01T10:00:00Z");
                lens[i] = strlen(bodies[i]);
        }
        post_many(d.port, bodies, lens, N, N, st);
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(st[i], 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_nopart_%' "
                                    "AND status = 'projected'", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                                    "WHERE t.easypost_id = 'trk_nopart_07' AND e.event_datetime = '2099-01-15T10:00:00Z'"
                                    " AND e.tracker_at = t.created_at", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                                    "WHERE t.easypost_id LIKE 'trk_nopart_%'", NULL), N);
        ck_assert(daemon_metric(d.port, "easypost_sync_partition_missing_total") == 0);
        ck_assert(daemon_metric(d.port, "easypost_sync_dead_letters_total") == 0);
        ck_assert(daemon_metric_wait(d.port, "easypost_sync_history_odd_dates", 1, 20000) >= 1);

        /* this month's raw events partition gone: every event 503, none lost */
        char *cur = month_part(c, "webhook_events", 0), sql[400];
        char *lo = db_text(c, "SELECT lo::text FROM eps_partitions('webhook_events') WHERE part::text = $1", cur);
        char *hi = db_text(c, "SELECT hi::text FROM eps_partitions('webhook_events') WHERE part::text = $1", cur);
        snprintf(sql, sizeof(sql), "ALTER TABLE webhook_events DETACH PARTITION %s", cur);
        db_exec(c, sql);
        char *b = make_event("evt_nopart_month", "batch.created", "{\"id\":\"batch_np\",\"object\":\"Batch\"}");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 503);
        ck_assert(daemon_metric(d.port, "easypost_sync_partition_missing_total") >= 1);
        ck_assert(daemon_metric(d.port, "easypost_sync_dead_letters_total") == 0);
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_msg(strstr(resp, "\"partitions\":\"missing\"") != NULL, "%s", resp);
        snprintf(sql, sizeof(sql), "ALTER TABLE webhook_events ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
                 cur, lo, hi);
        db_exec(c, sql);
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"stored\""));
        free(b);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        for (int i = 0; i < N; i++)
                free(bodies[i]);
        free(cur);
        free(lo);
        free(hi);
        PQfinish(c);
}
END_TEST

/* One tracking detail is one row, however often and in whichever event it
 * comes: the same history (a 2099 detail among them) in two events, the
 * tracker row forgotten in between so that every detail is offered again,
 * and a replay of the first event. */
START_TEST(test_history_dedup_exact_across_events_and_replays)
{
        PGconn *c = db_open();
        struct daemon d;
        char *b1 = tracker_body("evt_dd_1", "trk_dd", "2099-02-03T04:05:06Z");
        char *b2 = tracker_body("evt_dd_2", "trk_dd", "2099-02-03T04:05:06Z");
        const char *rows = "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                           "WHERE t.easypost_id = 'trk_dd'";

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        ck_assert_int_eq(post_event(d.port, b1, strlen(b1), NULL, 0), 200);
        ck_assert_int_eq(db_long(c, rows, NULL), 1);
        /* another event with the same history, every detail offered again */
        db_exec(c, "UPDATE trackers SET details_count = NULL, newest_detail_at = NULL, ep_updated_at = NULL "
                   "WHERE easypost_id = 'trk_dd'");
        ck_assert_int_eq(post_event(d.port, b2, strlen(b2), NULL, 0), 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_dd_2' "
                                    "AND status = 'projected'", NULL), 1);
        ck_assert_int_eq(db_long(c, rows, NULL), 1);
        /* a replay (--replay): the first event projected again */
        db_exec(c, "UPDATE trackers SET details_count = NULL, newest_detail_at = NULL, ep_updated_at = NULL "
                   "WHERE easypost_id = 'trk_dd'");
        char *st = db_text(c, "SELECT eps_replay(id) FROM webhook_events WHERE event_id = 'evt_dd_1'", NULL);
        ck_assert_str_eq(st, "projected");
        free(st);
        ck_assert_int_eq(db_long(c, rows, NULL), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(b1);
        free(b2);
        PQfinish(c);
}
END_TEST

/* Old months of raw events, made by hand: 2020-01 (projected events only),
 * 2020-02 (one pending event: queued, as stored before 0016), 2020-03 (one
 * dead letter). */
static void
old_months(PGconn *c)
{
        static const char *const status[3] = { "projected", "pending", "failed" };

        for (int m = 1; m <= 3; m++) {
                char sql[1200];
                snprintf(sql, sizeof(sql),
                         "DROP TABLE IF EXISTS webhook_events_2020_0%d;"
                         "DELETE FROM webhook_event_ids WHERE event_id LIKE 'evt\\_old\\_%d\\_%%';"
                         "SELECT eps_partition_attach('webhook_events', 'webhook_events_2020_0%d', "
                         "'2020-0%d-01Z', '2020-0%d-01Z');"
                         "INSERT INTO webhook_event_ids (event_id, received_at)"
                         " SELECT 'evt_old_%d_' || g, '2020-0%d-10Z' FROM generate_series(1, 50) g;"
                         "INSERT INTO webhook_events (id, event_id, description, raw, status, received_at)"
                         " SELECT eps_uuid7(), 'evt_old_%d_' || g, 'tracker.updated', '{}',"
                         " CASE WHEN g = 1 THEN '%s' ELSE 'projected' END, '2020-0%d-10Z'"
                         " FROM generate_series(1, 50) g;"
                         "INSERT INTO projection_queue (received_at, id) SELECT received_at, id"
                         " FROM webhook_events_2020_0%d WHERE status = 'pending'",
                         m, m, m, m, m + 1, m, m, m, status[m - 1], m, m);
                db_exec(c, sql);
        }
}

START_TEST(test_duplicate_across_partitions_refused)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[256];

        old_months(c);
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        /* stored in 2020-01, delivered again now (another month's partition) */
        char *b = make_event("evt_old_1_5", "tracker.updated", "{\"id\":\"trk_old\",\"object\":\"Tracker\"}");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_msg(strstr(resp, "\"duplicate\"") != NULL, "%s", resp);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_old_1_5'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events_2020_01 WHERE event_id = 'evt_old_1_5'",
                                 NULL), 1);
        free(b);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/* A month of history made by hand (tracker_at in 2020-mm) holding one row
 * of a tracker first written then. */
static void
old_history(PGconn *c, int m, const char *trk)
{
        char sql[1200];
        snprintf(sql, sizeof(sql),
                 "DROP TABLE IF EXISTS shipment_events_2020_0%d;"
                 "DELETE FROM trackers WHERE easypost_id = '%s';"
                 "SELECT eps_partition_attach('shipment_events', 'shipment_events_2020_0%d', "
                 "'2020-0%d-01Z', '2020-0%d-01Z');"
                 "INSERT INTO trackers (easypost_id, carrier, status, created_at)"
                 " VALUES ('%s', 'USPS', 'in_transit', '2020-0%d-10Z');"
                 "INSERT INTO shipment_events (tracker_id, tracker_at, status, message, event_datetime)"
                 " SELECT id, created_at, 'in_transit', 'old scan', '2020-0%d-11Z' FROM trackers"
                 " WHERE easypost_id = '%s'",
                 m, trk, m, m, m + 1, trk, m, m, trk);
        db_exec(c, sql);
}

/* Retention drops a month once all of it is older, keeps a month holding a
 * pending event or a dead letter, forgets the ids of the dropped events,
 * and drops old history, raising the history floor to the lowest month
 * kept. */
START_TEST(test_retention_drops_old_months_keeps_pending_and_dead_letters)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_EVENT_RETENTION_DAYS=90",
                              "EASYPOST_SYNC_HISTORY_RETENTION_DAYS=1",
                              "EASYPOST_SYNC_DEAD_LETTER_RETENTION_DAYS=0", NULL };

        old_months(c);
        old_history(c, 5, "trk_oldhist");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_%'", NULL),
                         150);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_class WHERE relname = 'webhook_events_2020_01'",
                                      0, 20000),
                         0);
        ck_assert_int_eq(rel_exists(c, "webhook_events_2020_02"), 1);
        ck_assert_int_eq(rel_exists(c, "webhook_events_2020_03"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_old_%'", NULL),
                         100);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_%'",
                                      100, 20000),
                         100);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_1_%'",
                                 NULL), 0);
        /* history: the old month went, the floor is the lowest month kept */
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_class WHERE relname = 'shipment_events_2020_05'",
                                      0, 20000),
                         0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM partition_floor f WHERE f.history = "
                                    "(SELECT min(lo) FROM eps_partitions('shipment_events'))", NULL), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM partition_drops", 0, 20000), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        /* the months kept go once their pending event is projected and the dead letter replayed */
        db_exec(c, "UPDATE webhook_events SET status = 'projected' WHERE event_id LIKE 'evt_old_%'");
        db_exec(c, "DELETE FROM projection_queue WHERE received_at < '2021-01-01Z'");
        db_exec(c, "TRUNCATE partition_maintenance");
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_class WHERE relname IN "
                                         "('webhook_events_2020_02', 'webhook_events_2020_03')",
                                      0, 20000),
                         0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_%'",
                                      0, 20000),
                         0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        db_exec(c, "DELETE FROM trackers WHERE easypost_id = 'trk_oldhist'");
        PQfinish(c);
}
END_TEST

/* A raw events partition A whose dead letter has passed
 * dead_letter_retention_days but not event_retention_days +
 * dead_letter_retention_days stays; one past both goes; one holding a
 * pending event stays whatever its age. */
START_TEST(test_dead_letter_keeps_its_month_past_event_retention)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_EVENT_RETENTION_DAYS=90",
                              "EASYPOST_SYNC_DEAD_LETTER_RETENTION_DAYS=30", NULL };
        static const char *const parts[3][4] = {
                /* name, from, to (days ago), status of the one odd event */
                { "webhook_events_dl_young", "140", "105", "failed" },
                { "webhook_events_dl_old", "200", "141", "failed" },
                { "webhook_events_dl_pending", "400", "300", "pending" },
        };

        db_exec(c, "TRUNCATE partition_maintenance");
        for (int i = 0; i < 3; i++) {
                char sql[1200];
                snprintf(sql, sizeof(sql),
                         "DROP TABLE IF EXISTS %s;"
                         "SELECT eps_partition_attach('webhook_events', '%s', now() - interval '%s days',"
                         " now() - interval '%s days');"
                         "INSERT INTO webhook_events (id, event_id, description, raw, status, received_at)"
                         " SELECT eps_uuid7(), '%s_' || g, 'tracker.updated', '{}',"
                         " CASE WHEN g = 1 THEN '%s' ELSE 'projected' END, now() - interval '%s days' + interval '1 hour'"
                         " FROM generate_series(1, 3) g;"
                         "INSERT INTO projection_queue (received_at, id) SELECT received_at, id FROM %s"
                         " WHERE status = 'pending'",
                         parts[i][0], parts[i][0], parts[i][1], parts[i][2], parts[i][0], parts[i][3], parts[i][1],
                         parts[i][0]);
                db_exec(c, sql);
        }
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_class WHERE relname = 'webhook_events_dl_old'",
                                      0, 20000),
                         0);
        /* two more runs after it */
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 3) FROM partition_maintenance", 3, 20000), 3);
        ck_assert_int_eq(rel_exists(c, "webhook_events_dl_young"), 1);
        ck_assert_int_eq(rel_exists(c, "webhook_events_dl_pending"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        for (int i = 0; i < 3; i++) {
                char sql[200];
                snprintf(sql, sizeof(sql), "ALTER TABLE webhook_events DETACH PARTITION %s; DROP TABLE %s",
                         parts[i][0], parts[i][0]);
                if (i != 1)
                        db_exec(c, sql);
        }
        PQfinish(c);
}
END_TEST

/* The upkeep finishes what a run killed between its steps began. A test
 * session holds a lock on the parent, so the daemon's DETACH ... CONCURRENTLY
 * waits; the daemon is killed (kill -9) there:
 *  - with its connection ended too (finalize = true): the detach stays
 *    pending, and the next run finishes it (FINALIZE) and drops the table;
 *  - with its connection left waiting, which completes the detach once the
 *    lock goes and then finds its client gone: the table is detached but
 *    never dropped, and the next run drops it.
 * Meanwhile the month's event ids are kept (they go only after the drop),
 * --migrate works, partitions are made ahead, and a webhook whose tracking
 * detail falls in the dropped month is answered 200 and stored. */
static void
killed_between_steps(const char *parent, const char *part, bool finalize)
{
        PGconn *c = db_open(), *hold = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_EVENT_RETENTION_DAYS=90",
                              "EASYPOST_SYNC_HISTORY_RETENTION_DAYS=1",
                              "EASYPOST_SYNC_DEAD_LETTER_RETENTION_DAYS=0", NULL };
        char sql[600], trk[48], evt[48];

        snprintf(trk, sizeof(trk), "trk_killed_%s", finalize ? "fin" : "drop");
        snprintf(evt, sizeof(evt), "evt_killed_%s", finalize ? "fin" : "drop");
        old_months(c);
        old_history(c, 1, trk);
        db_exec(c, "TRUNCATE partition_drops");
        snprintf(sql, sizeof(sql), "BEGIN; LOCK TABLE %s IN ACCESS SHARE MODE", parent);
        db_exec(hold, sql);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                   "AND query = 'ALTER TABLE %s DETACH PARTITION %s CONCURRENTLY'", parent, part);
        ck_assert_int_eq(db_wait_long(c, sql, 1, 30000), 1);
        long backend = db_long(c, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE % DETACH %' "
                                  "AND wait_event_type = 'Lock'", NULL);
        /* the ledger has it; the month's ids stay while its events do */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM partition_drops WHERE part = $1", part), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_1_%'",
                                 NULL), 50);
        daemon_stop(&d, SIGKILL);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %ld", backend);
        if (finalize) {
                char term[100];
                snprintf(term, sizeof(term), "SELECT pg_terminate_backend(%ld)", backend);
                db_exec(c, term);
                ck_assert_int_eq(db_wait_long(c, sql, 0, 20000), 0);
        } else {
                ck_assert_int_eq(db_long(c, sql, NULL), 1);
        }
        db_exec(hold, "COMMIT");
        ck_assert_int_eq(db_wait_long(c, sql, 0, 20000), 0);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_inherits WHERE inhrelid = '%s'::regclass%s", part,
                 finalize ? " AND inhdetachpending" : "");
        ck_assert_int_eq(db_long(c, sql, NULL), finalize ? 1 : 0);
        ck_assert_int_eq(rel_exists(c, part), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_1_%'",
                                 NULL), 50);

        /* --migrate does not trip on what was left, the months ahead are there */
        snprintf(sql, sizeof(sql), "%s/sql", getenv("abs_top_srcdir"));
        ck_assert_int_eq(run_migrate(getenv("TEST_PG_CONNINFO"), sql), 0);
        ck_assert_int_eq(months_covered(c, "webhook_events", 3), 4);
        ck_assert_int_eq(months_covered(c, "shipment_events", 3), 4);

        ck_assert_int_eq(daemon_start(&d, env), 0);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_class WHERE relname = '%s'", part);
        ck_assert_int_eq(db_wait_long(c, sql, 0, 20000), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM partition_drops", 0, 20000), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_event_ids WHERE event_id LIKE 'evt_old_1_%'",
                                      0, 20000),
                         0);
        ck_assert_int_eq(months_covered(c, "webhook_events", 3), 4);
        ck_assert_int_eq(months_covered(c, "shipment_events", 3), 4);
        /* a detail in the dropped month: stored, in the lowest month kept */
        char *b = tracker_body(evt, trk, "2020-01-20T10:00:00Z");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
        free(b);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1 AND status = 'projected'",
                                 evt), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                                    "WHERE t.easypost_id = $1 AND e.event_datetime = '2020-01-20T10:00:00Z' AND "
                                    "e.tracker_at = (SELECT history FROM partition_floor)", trk), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(hold);
        PQfinish(c);
}

START_TEST(test_killed_while_detaching_finished_by_next_run)
{
        killed_between_steps("webhook_events", "webhook_events_2020_01", true);
}
END_TEST

START_TEST(test_killed_before_drop_finished_by_next_run)
{
        killed_between_steps("shipment_events", "shipment_events_2020_01", false);
}
END_TEST

/* The retention is reloaded with the configuration (SIGHUP): a month kept
 * while event_retention_days = 0 goes at a tick after the file says 90. */
START_TEST(test_retention_follows_reload)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", NULL };
        char *conf = tmpfile_with("event_retention_days = 0\n");

        old_months(c);
        db_exec(c, "TRUNCATE partition_maintenance");
        itest_config = conf;
        ck_assert_int_eq(daemon_start(&d, env), 0);
        itest_config = NULL;
        /* two upkeep runs that kept every month */
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 2) FROM partition_maintenance", 2, 20000), 2);
        ck_assert_int_eq(rel_exists(c, "webhook_events_2020_01"), 1);
        rewrite(conf, "event_retention_days = 90\n");
        kill(d.pid, SIGHUP);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_class WHERE relname = 'webhook_events_2020_01'",
                                      0, 20000),
                         0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        unlink(conf);
        free(conf);
        PQfinish(c);
}
END_TEST

/* Sync jobs rows made at `age` ago, last updated `updated` ago, with ids of their creation time. */
static void
old_jobs(PGconn *c, int n, const char *prefix, const char *status, const char *age, const char *updated)
{
        char sql[1024];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO sync_jobs (id, kind, object_id, status, created_at, updated_at)"
                 " SELECT (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::int8), 12, '0')"
                 " || substr(md5(random()::text || i), 1, 20))::uuid, 'shipment', '%s' || i, '%s', t,"
                 " now() - interval '%s'"
                 " FROM generate_series(1, %d) i, LATERAL (SELECT now() - interval '%s' AS t) x",
                 prefix, status, updated, n, age);
        db_exec(c, sql);
}

/* Sync jobs that ended before sync_job_retention_days go, more than one
 * batch of them in one slot; those still open, or ended within it, stay. */
START_TEST(test_old_sync_jobs_deleted_in_batches)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_ANALYTICS_INTERVAL=1", "EASYPOST_SYNC_SYNC_JOB_RETENTION_DAYS=30",
                              NULL };

        db_exec(c, "TRUNCATE sync_jobs");
        db_exec(c, "DELETE FROM sync_state WHERE key = 'sync_jobs_prune_slot'");
        old_jobs(c, 2500, "shp_olddone", "done", "40 days", "40 days");
        old_jobs(c, 10, "shp_oldfailed", "failed", "40 days", "39 days");
        old_jobs(c, 5, "shp_oldpending", "pending", "40 days", "40 days");
        old_jobs(c, 5, "shp_lateupdate", "failed", "40 days", "10 days");
        old_jobs(c, 5, "shp_newdone", "done", "2 days", "1 day");
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_old%'"
                                         " AND status IN ('done', 'failed')", 0, 30000), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_oldpending%'", NULL),
                         5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_lateupdate%'", NULL),
                         5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_newdone%'", NULL), 5);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        /* one batch is at most 1000 jobs, and a slot elects one replica */
        ck_assert_int_eq(db_long(c, "SELECT eps_sync_jobs_prune(NULL, 0, 1000)", NULL), 0);
        old_jobs(c, 1500, "shp_again", "done", "40 days", "40 days");
        ck_assert_int_eq(db_long(c, "SELECT eps_sync_jobs_prune(NULL, 30, 1000)", NULL), 1000);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_again%'", NULL), 500);
        long slot = db_long(c, "SELECT value::int8 FROM sync_state WHERE key = 'sync_jobs_prune_slot'", NULL);
        ck_assert_int_gt(slot, 0);
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM (SELECT eps_sync_jobs_prune(%ld, 30, 1000) n) x"
                                   " WHERE n IS NULL", slot);
        ck_assert_int_eq(db_long(c, sql, NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id LIKE 'shp_again%'", NULL), 500);
        db_exec(c, "TRUNCATE sync_jobs");
        PQfinish(c);
}
END_TEST

/* ---- conversion of an unpartitioned database ---- */

#define CONV_EVENTS 200000

static int
run_migrate(const char *conninfo, const char *sql_dir)
{
        char cmd[2048];
        snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' '%s/easypost-syncd' --migrate --sql_dir='%s' 2>>'%s/migrate-conv.log'",
                 conninfo, getenv("abs_top_builddir"), sql_dir,
                 getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp");
        return system(cmd);
}

START_TEST(test_migrate_converts_200k_events)
{
        const char *tmp = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
        const char *src = getenv("abs_top_srcdir");
        char ci[1024], dir[512], cmd[4096];
        PGconn *c = db_open();

        db_exec(c, "DROP DATABASE IF EXISTS eps_conv");
        db_exec(c, "CREATE DATABASE eps_conv");
        PQfinish(c);
        snprintf(ci, sizeof(ci), "%s dbname=eps_conv", getenv("TEST_PG_CONNINFO"));
        /* the schema as it was before 0007 */
        snprintf(dir, sizeof(dir), "%s/sql6", tmp);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s' && ln -s '%s'/sql/000[1-6]_*.sql '%s'/ && "
                                   "ln -s '%s/sql/functions' '%s/functions'",
                 dir, dir, src, dir, src, dir);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_int_eq(run_migrate(ci, dir), 0);
        c = PQconnectdb(ci);
        ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
        ck_assert_int_eq(db_long(c, "SELECT max(version) FROM schema_migrations", NULL), 6);

        /* CONV_EVENTS events over three months, a tracker and shipment per 4, two details each */
        char fill[3000];
        snprintf(fill, sizeof(fill),
                 "INSERT INTO shipments (easypost_id, carrier, service, status, tracking_code, created_at)"
                 " SELECT 'shp_conv' || g, 'USPS', 'Priority', 'in_transit', 'TC' || g, now() - (g %% 90) * interval '1 day'"
                 " FROM generate_series(1, %d) g;"
                 "INSERT INTO trackers (easypost_id, tracking_code, carrier, status, shipment_easypost_id, shipment_id)"
                 " SELECT 'trk_conv' || substr(s.easypost_id, 9), s.tracking_code, 'USPS', 'in_transit', s.easypost_id, s.id"
                 " FROM shipments s;"
                 "INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, status, received_at)"
                 " SELECT eps_uuid7(), 'evt_conv' || g, 'tracker.updated', 'test', 'trk_conv' || (g %% %d + 1),"
                 " '{\"object\":\"Event\",\"id\":\"evt_conv' || g || '\",\"description\":\"tracker.updated\"}',"
                 " CASE WHEN g %% 1000 = 0 THEN 'failed' WHEN g %% 1000 = 500 THEN 'pending' ELSE 'projected' END,"
                 " now() - (g %% 90) * interval '1 day' - (g %% 1440) * interval '1 minute'"
                 " FROM generate_series(1, %d) g;"
                 "INSERT INTO shipment_events (tracker_id, shipment_id, status, message, event_datetime)"
                 " SELECT t.id, t.shipment_id, 'in_transit', 'scan ' || d || '/' || k,"
                 "  now() - (k %% 90) * interval '1 day' - d * interval '1 hour'"
                 " FROM trackers t CROSS JOIN generate_series(1, 2) d CROSS JOIN generate_series(1, 4) k;",
                 CONV_EVENTS / 4, CONV_EVENTS / 4, CONV_EVENTS);
        db_exec(c, fill);
        long events = db_long(c, "SELECT count(*) FROM webhook_events", NULL);
        long history = db_long(c, "SELECT count(*) FROM shipment_events", NULL);
        char *sum_before = db_text(c, "SELECT md5(string_agg(event_id || status || raw || received_at::text, ',' "
                                      "ORDER BY event_id)) FROM webhook_events", NULL);
        ck_assert_int_eq(events, CONV_EVENTS);
        ck_assert_int_eq(history, CONV_EVENTS * 2);
        PQfinish(c);

        uint64_t t0 = clock_mono_us();
        snprintf(dir, sizeof(dir), "%s/sql", src);
        ck_assert_int_eq(run_migrate(ci, dir), 0);
        fprintf(stderr, "partitions: --migrate converted %d events and %d history rows in %.1f s\n",
                CONV_EVENTS, CONV_EVENTS * 2, (double)(clock_mono_us() - t0) / 1e6);

        c = PQconnectdb(ci);
        ck_assert_int_eq(db_long(c, "SELECT max(version) FROM schema_migrations", NULL), DB_SCHEMA_VERSION);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_class WHERE relkind = 'p' AND relname IN "
                                    "('webhook_events', 'shipment_events')", NULL), 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events", NULL), events);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), history);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_event_ids", NULL), events);
        char *sum_after = db_text(c, "SELECT md5(string_agg(event_id || status || raw || received_at::text, ',' "
                                     "ORDER BY event_id)) FROM webhook_events", NULL);
        ck_assert_str_eq(sum_before, sum_after);
        /* the deferred events still pending are queued for the projector (0016) */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue q JOIN webhook_events w"
                                    " ON w.id = q.id AND w.received_at = q.received_at AND w.status = 'pending'",
                                 NULL), CONV_EVENTS / 1000);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue", NULL), CONV_EVENTS / 1000);
        ck_assert_int_eq(months_covered(c, "webhook_events", 3), 4);
        ck_assert_int_eq(months_covered(c, "shipment_events", 3), 4);
        /* duplicates still refused, new events stored, history still unique */
        char *out = db_text(c, "SELECT string_agg(status, ',' ORDER BY ord) FROM eps_ingest_batch("
                               "ARRAY[eps_uuid7(), eps_uuid7(), eps_uuid7()], ARRAY['evt_conv5', 'evt_conv77', $1],"
                               " ARRAY['batch.created', 'batch.created', 'batch.created'], ARRAY['test', 'test', 'test'],"
                               " ARRAY[NULL, NULL, NULL]::text[], ARRAY['{}', '{}', '{}'],"
                               " ARRAY['webhook', 'webhook', 'webhook'], ARRAY[NULL, NULL, NULL]::text[],"
                               " NULL, NULL, NULL, false)",
                            "evt_conv_new");
        ck_assert_str_eq(out, "duplicate,duplicate,stored");
        free(out);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                                    "WHERE e.tracker_at <> t.created_at", NULL), 0);
        PGresult *r = PQexec(c, "INSERT INTO shipment_events (tracker_id, tracker_at, status, message, event_datetime)"
                                " SELECT tracker_id, tracker_at, status, message, event_datetime FROM shipment_events"
                                " LIMIT 1");
        ck_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23505");
        PQclear(r);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status = 'failed'", NULL),
                         CONV_EVENTS / 1000);
        /* the analytics view over the converted history */
        db_exec(c, "REFRESH MATERIALIZED VIEW CONCURRENTLY analytics_carrier_performance");
        PQfinish(c);
        free(sum_before);
        free(sum_after);
        c = db_open();
        db_exec(c, "DROP DATABASE eps_conv");
        PQfinish(c);
}
END_TEST

/*
 * Partitions are UTC months whatever the TimeZone the database gives its
 * sessions: --migrate runs in UTC like the daemon, and the months made ahead
 * from a session in another zone (an operator's psql) are UTC months too.
 * Counted in America/New_York, a month after 1 December 00:00 UTC would be
 * 31 December 00:00 UTC.
 */
START_TEST(test_partition_months_are_utc_months_whatever_the_time_zone)
{
        char ci[1024], dir[512];
        PGconn *c = db_open();

        db_exec(c, "DROP DATABASE IF EXISTS eps_tz");
        db_exec(c, "CREATE DATABASE eps_tz");
        db_exec(c, "ALTER DATABASE eps_tz SET TimeZone = 'America/New_York'");
        PQfinish(c);
        snprintf(ci, sizeof(ci), "%s dbname=eps_tz", getenv("TEST_PG_CONNINFO"));
        snprintf(dir, sizeof(dir), "%s/sql", getenv("abs_top_srcdir"));
        ck_assert_int_eq(run_migrate(ci, dir), 0);
        c = PQconnectdb(ci);
        ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
        const char *odd = "SELECT count(*) FROM (SELECT * FROM eps_partitions('webhook_events')"
                          " UNION ALL SELECT * FROM eps_partitions('shipment_events')) p"
                          " WHERE (p.lo <> '-infinity' AND p.lo <> date_trunc('month', p.lo AT TIME ZONE 'UTC')"
                          " AT TIME ZONE 'UTC') OR p.hi <> date_trunc('month', p.hi AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";
        ck_assert_int_eq(db_long(c, odd, NULL), 0);
        db_exec(c, "SET TimeZone = 'America/New_York'");
        db_exec(c, "SELECT eps_partitions_create(14)");
        ck_assert_int_ge(db_long(c, "SELECT count(*) FROM eps_partitions('webhook_events')", NULL), 15);
        ck_assert_int_eq(db_long(c, odd, NULL), 0);
        db_exec(c, "SET TimeZone = 'UTC'"); /* covered_sql counts months in the session's zone */
        ck_assert_int_eq(months_covered(c, "webhook_events", 14), 15);
        ck_assert_int_eq(months_covered(c, "shipment_events", 14), 15);
        PQfinish(c);
        c = db_open();
        db_exec(c, "DROP DATABASE eps_tz");
        PQfinish(c);
}
END_TEST

/* ---- plans over three filled months ---- */

static char *
explain(PGconn *c, const char *sql)
{
        char q[2048];
        struct strbuf b = { 0 };

        snprintf(q, sizeof(q), "EXPLAIN (COSTS OFF) %s", sql);
        PGresult *r = PQexec(c, q);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
        for (int i = 0; i < PQntuples(r); i++)
                strbuf_printf(&b, "%s\n", PQgetvalue(r, i, 0));
        PQclear(r);
        fprintf(stderr, "partitions: EXPLAIN %s\n%s", sql, b.data);
        return b.data;
}

/* The plan of sql reads every table of filled (the ones with data) through
 * an index; empty partitions may be scanned, at no cost. */
static void
assert_indexed(PGconn *c, const char *sql, char *const *filled)
{
        char *plan = explain(c, sql);
        char seq[200];

        for (char *const *f = filled; *f; f++)
                for (int end = 0; end < 2; end++) {
                        snprintf(seq, sizeof(seq), "Seq Scan on %s%c", *f, end ? '\n' : ' ');
                        ck_assert_msg(strstr(plan, seq) == NULL, "%s read sequentially in the plan of %s:\n%s",
                                      *f, sql, plan);
                }
        ck_assert_msg(strstr(plan, "Index") != NULL, "no index in the plan of %s:\n%s", sql, plan);
        free(plan);
}

START_TEST(test_query_plans_use_indexes_with_three_months)
{
        PGconn *c = db_open();

        /* three months of raw events and history: this one and the next two */
        db_exec(c, "INSERT INTO webhook_events (id, event_id, description, object_id, raw, status, received_at)"
                   " SELECT eps_uuid7(), 'evt_plan_' || m || '_' || g, 'tracker.updated', 'trk_plan_' || (g % 3000),"
                   " '{}', CASE WHEN g % 500 = 0 THEN 'failed' ELSE 'projected' END,"
                   " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + make_interval(months => m)"
                   "  + (g % 20) * interval '1 day'"
                   " FROM generate_series(0, 2) m CROSS JOIN generate_series(1, 15000) g");
        db_exec(c, "INSERT INTO webhook_event_ids (event_id, received_at)"
                   " SELECT event_id, received_at FROM webhook_events WHERE event_id LIKE 'evt_plan_%'");
        db_exec(c, "INSERT INTO shipments (easypost_id, carrier, service, status, tracking_code, created_at)"
                   " SELECT 'shp_plan_' || g, CASE WHEN g % 2 = 0 THEN 'USPS' ELSE 'UPS' END, 'Ground',"
                   " CASE WHEN g % 7 = 0 THEN 'delivered' ELSE 'in_transit' END, 'TCP' || g, now() - g * interval '1 minute'"
                   " FROM generate_series(1, 3000) g ON CONFLICT DO NOTHING;"
                   "INSERT INTO trackers (easypost_id, tracking_code, carrier, status, shipment_easypost_id, shipment_id)"
                   " SELECT 'trk_plan_' || substr(s.easypost_id, 10), s.tracking_code, s.carrier, s.status, s.easypost_id, s.id"
                   " FROM shipments s WHERE s.easypost_id LIKE 'shp_plan_%' ON CONFLICT DO NOTHING;"
                   "INSERT INTO shipment_events (tracker_id, tracker_at, shipment_id, status, message, event_datetime)"
                   " SELECT t.id, (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
                   "  + make_interval(months => abs(hashtext(t.easypost_id)) % 3) + interval '1 hour',"
                   " t.shipment_id, CASE WHEN k = 15 THEN 'delivered' ELSE 'in_transit' END, 'scan ' || k,"
                   " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + make_interval(months => k % 3)"
                   "  + k * interval '1 hour'"
                   " FROM trackers t CROSS JOIN generate_series(1, 15) k WHERE t.easypost_id LIKE 'trk_plan_%'"
                   " ON CONFLICT DO NOTHING");
        db_exec(c, "ANALYZE webhook_events; ANALYZE webhook_event_ids; ANALYZE shipment_events; ANALYZE trackers;"
                   " ANALYZE shipments");
        ck_assert_int_eq(db_long(c, "SELECT count(DISTINCT tableoid) FROM shipment_events WHERE message LIKE 'scan %'",
                                 NULL), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(DISTINCT tableoid) FROM webhook_events WHERE event_id LIKE 'evt_plan_%'",
                                 NULL), 3);

        char *filled[10] = { "webhook_event_ids", "trackers", "shipments" };
        for (int m = 0; m < 3; m++) {
                filled[3 + m] = month_part(c, "webhook_events", m);
                filled[6 + m] = month_part(c, "shipment_events", m);
        }
        filled[9] = NULL;

        /* README's query patterns */
        assert_indexed(c, "SELECT * FROM webhook_events WHERE object_id = 'trk_plan_17'", filled);
        assert_indexed(c, "SELECT * FROM webhook_events WHERE event_id = 'evt_plan_1_77'", filled);
        assert_indexed(c, "SELECT 1 FROM webhook_event_ids WHERE event_id = 'evt_plan_1_77'", filled);
        assert_indexed(c, "SELECT * FROM webhook_events WHERE status = 'failed' ORDER BY received_at", filled);
        assert_indexed(c, "SELECT e.* FROM trackers t JOIN shipment_events e ON e.tracker_id = t.id "
                          "WHERE t.easypost_id = 'trk_plan_17' ORDER BY e.event_datetime", filled);
        assert_indexed(c, "SELECT e.* FROM trackers t JOIN shipment_events e ON e.tracker_id = t.id "
                          "WHERE t.shipment_id = (SELECT id FROM shipments WHERE easypost_id = 'shp_plan_17') "
                          "ORDER BY e.event_datetime", filled);
        assert_indexed(c, "SELECT status, carrier, service FROM shipments WHERE tracking_code = 'TCP17'", filled);
        /* a time range reads only its months */
        char *next = month_part(c, "webhook_events", 1);
        char *plan = explain(c, "SELECT count(*) FROM webhook_events WHERE received_at < "
                                "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 month'");
        ck_assert_msg(strstr(plan, next) == NULL, "%s scanned:\n%s", next, plan);
        free(plan);
        free(next);
        /* The views aggregate whole tables, before as after partitioning: what
         * the refresh of the history view reads is each partition once */
        free(explain(c, "SELECT t.id, min(e.event_datetime) FROM trackers t JOIN shipment_events e "
                        "ON e.tracker_id = t.id GROUP BY t.id"));
        db_exec(c, "DELETE FROM webhook_events WHERE event_id LIKE 'evt_plan_%'");
        for (int i = 3; i < 9; i++)
                free(filled[i]);
        PQfinish(c);
}
END_TEST

Suite *
partitions_suite(void)
{
        Suite *s = suite_create("partitions");
        TCase *tc = tcase_create("partitions");

        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_partitions_ahead_after_migrate_and_tick);
        tcase_add_test(tc, test_carrier_date_2099_stored_and_counted);
        tcase_add_test(tc, test_history_dedup_exact_across_events_and_replays);
        tcase_add_test(tc, test_duplicate_across_partitions_refused);
        tcase_add_test(tc, test_retention_drops_old_months_keeps_pending_and_dead_letters);
        tcase_add_test(tc, test_dead_letter_keeps_its_month_past_event_retention);
        tcase_add_test(tc, test_killed_while_detaching_finished_by_next_run);
        tcase_add_test(tc, test_killed_before_drop_finished_by_next_run);
        tcase_add_test(tc, test_retention_follows_reload);
        tcase_add_test(tc, test_old_sync_jobs_deleted_in_batches);
        tcase_add_test(tc, test_query_plans_use_indexes_with_three_months);
        tcase_add_test(tc, test_migrate_converts_200k_events);
        tcase_add_test(tc, test_partition_months_are_utc_months_whatever_the_time_zone);
        suite_add_tcase(s, tc);
        return s;
}
