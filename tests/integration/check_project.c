/*
 * check_project.c - tracker events projected into trackers, shipments and
 * shipment_events: fixture by fixture, out of order, repeated histories,
 * hostile events beside good ones in one burst, dead letters and --replay.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"
#include "metrics.h"
#include "util.h"

static struct daemon dm;

static void
up(void)
{
        ck_assert_int_eq(daemon_start(&dm, NULL), 0);
}

static void
down(void)
{
        ck_assert_int_eq(daemon_stop(&dm, SIGTERM), 0);
}

static void
wipe(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue CASCADE");
}

static long
q1(PGconn *c, const char *sql, const char *p)
{
        return db_long(c, sql, p);
}

/* Distinct (datetime, status, message) triples of a tracker's history. */
static long
distinct_details(json_t *result)
{
        json_t *details = json_object_get(result, "tracking_details"), *d, *seen = json_object();
        size_t i;

        json_array_foreach(details, i, d) {
                char key[600];
                snprintf(key, sizeof(key), "%s|%s|%s",
                         json_string_value(json_object_get(d, "datetime")),
                         json_string_value(json_object_get(d, "status")),
                         json_string_value(json_object_get(d, "message")));
                json_object_set_new(seen, key, json_true());
        }
        long n = (long)json_object_size(seen);
        json_decref(seen);
        return n;
}

START_TEST(test_fixture_projection)
{
        SKIP_WITHOUT_FIXTURES();
        static const char *const files[] = {
                "event_tracker_updated_delivered_docs.json", "event_tracker_created_thirdparty.json",
                "hmac_body_tracker_updated.json", "event_batch_created_docs.json",
                "event_batch_updated_docs.json", "event_scan_form_created_docs.json",
                "hmac_body_batch_created.json",
        };
        PGconn *c = db_open();
        char resp[256];

        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
                size_t len;
                char *body = fixture_read(files[i], &len);
                json_t *doc = json_loadb(body, len, 0, NULL);
                const char *desc = json_string_value(json_object_get(doc, "description"));
                const char *evid = json_string_value(json_object_get(doc, "id"));
                json_t *res = json_object_get(doc, "result");
                bool tracker = strncmp(desc, "tracker.", 8) == 0;

                wipe(c);
                ck_assert_int_eq(post_event(dm.port, body, len, resp, sizeof(resp)), 200);
                char *st = db_text(c, "SELECT status FROM webhook_events WHERE event_id = $1", evid);
                ck_assert_msg(strcmp(st, "projected") == 0, "%s: %s", files[i], st);
                free(st);
                if (tracker) {
                        const char *trk = json_string_value(json_object_get(res, "id"));
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers", NULL), 1);
                        char *s = db_text(c, "SELECT status || '/' || coalesce(tracking_code, '') || '/' || "
                                         "coalesce(carrier, '') FROM trackers WHERE easypost_id = $1", trk);
                        char want[300];
                        snprintf(want, sizeof(want), "%s/%s/%s",
                                 json_string_value(json_object_get(res, "status")),
                                 json_string_value(json_object_get(res, "tracking_code")),
                                 json_string_value(json_object_get(res, "carrier")));
                        ck_assert_str_eq(s, want);
                        free(s);
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL),
                                         distinct_details(res));
                        const char *shp = json_string_value(json_object_get(res, "shipment_id"));
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipments", NULL), shp ? 1 : 0);
                        if (shp) {
                                ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipments WHERE easypost_id = $1 "
                                                       "AND synced_at IS NULL", shp), 1);
                                ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events e JOIN shipments s "
                                                       "ON s.id = e.shipment_id WHERE s.easypost_id = $1", shp),
                                                 distinct_details(res));
                        }
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events e JOIN webhook_events w "
                                               "ON w.id = e.webhook_event_id WHERE w.event_id = $1", evid),
                                         distinct_details(res));
                } else {
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers", NULL), 0);
                        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 0);
                }
                json_decref(doc);
                free(body);
        }
        PQfinish(c);
}
END_TEST

/* A tracker.updated with n history entries, updated at `updated`. */
static char *
tracker_event(const char *evid, const char *trk, const char *status, const char *updated, int n)
{
        json_t *details = json_array();
        for (int i = 0; i < n; i++) {
                char dt[40], msg[64];
                snprintf(dt, sizeof(dt), "2025-01-%02dT%02d:%02d:00Z", 1 + i / 1440 % 28, i / 60 % 24, i % 60);
                snprintf(msg, sizeof(msg), "scan %d", i);
                json_array_append_new(details, json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:n}}",
                        "object", "TrackingDetail", "message", msg, "status", "in_transit",
                        "datetime", dt, "source", "USPS", "tracking_location", "city", "CHICAGO",
                        "state", "IL", "country", "US", "zip"));
        }
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}}",
                "id", evid, "object", "Event", "description", "tracker.updated", "mode", "test",
                "created_at", updated,
                "result", "id", trk, "object", "Tracker", "tracking_code", "EZ42", "carrier", "USPS",
                "status", status, "updated_at", updated, "shipment_id", "shp_ooo1",
                "tracking_details", details);
        char *s = json_dumps(ev, JSON_COMPACT);
        json_decref(ev);
        return s;
}

START_TEST(test_out_of_order_newer_wins)
{
        PGconn *c = db_open();
        char *newer = tracker_event("evt_ooo_2", "trk_ooo", "delivered", "2025-01-05T10:00:00Z", 3);
        char *older = tracker_event("evt_ooo_1", "trk_ooo", "in_transit", "2025-01-03T10:00:00Z", 2);

        wipe(c);
        ck_assert_int_eq(post_event(dm.port, newer, strlen(newer), NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, older, strlen(older), NULL, 0), 200);
        char *s = db_text(c, "SELECT status FROM trackers WHERE easypost_id = 'trk_ooo'", NULL);
        ck_assert_str_eq(s, "delivered");
        free(s);
        s = db_text(c, "SELECT status FROM shipments WHERE easypost_id = 'shp_ooo1'", NULL);
        ck_assert_str_eq(s, "delivered");
        free(s);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 3);
        free(newer);
        free(older);
        PQfinish(c);
}
END_TEST

START_TEST(test_growing_history_each_detail_once)
{
        PGconn *c = db_open();
        wipe(c);
        for (int k = 1; k <= 3; k++) {
                char evid[32], upd[40];
                snprintf(evid, sizeof(evid), "evt_grow_%d", k);
                snprintf(upd, sizeof(upd), "2025-02-0%dT00:00:00Z", k);
                char *b = tracker_event(evid, "trk_grow", "in_transit", upd, 4 * k);
                ck_assert_int_eq(post_event(dm.port, b, strlen(b), NULL, 0), 200);
                /* the repeated delivery changes nothing */
                ck_assert_int_eq(post_event(dm.port, b, strlen(b), NULL, 0), 200);
                ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 4 * k);
                free(b);
        }
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM (SELECT tracker_id, event_datetime, status, message "
                               "FROM shipment_events GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d", NULL), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events", NULL), 3);
        PQfinish(c);
}
END_TEST

/* A tracker.updated for trk_same whose history is the n details of d
 * ("message@HH:MM" on 2025-03-01). */
static char *
same_minute_event(const char *evid, const char *updated, const char *const *d, int n)
{
        json_t *details = json_array();
        for (int i = 0; i < n; i++) {
                char msg[32], dt[40];
                snprintf(msg, sizeof(msg), "%.*s", (int)(strchr(d[i], '@') - d[i]), d[i]);
                snprintf(dt, sizeof(dt), "2025-03-01T%s:00Z", strchr(d[i], '@') + 1);
                json_array_append_new(details, json_pack("{s:s,s:s,s:s,s:s}", "object", "TrackingDetail",
                                                         "message", msg, "status", "in_transit", "datetime", dt));
        }
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:o}}",
                "id", evid, "object", "Event", "description", "tracker.updated", "mode", "test",
                "created_at", updated,
                "result", "id", "trk_same", "object", "Tracker", "tracking_code", "EZSAME", "carrier", "USPS",
                "status", "in_transit", "updated_at", updated, "tracking_details", details);
        char *b = json_dumps(ev, JSON_COMPACT);
        json_decref(ev);
        return b;
}

/*
 * A new detail of the same minute as the newest stored one, sorted before
 * it: the snapshot's first two details end at the stored newest time but
 * are not the two stored ones, so none of them is taken as known, and the
 * new detail is written.
 */
START_TEST(test_new_detail_of_the_newest_minute_is_kept)
{
        PGconn *c = db_open();
        const char *first[] = { "A@19:00", "B@19:27" };
        const char *second[] = { "A@19:00", "X@19:27", "B@19:27", "C@20:00" };

        wipe(c);
        char *b1 = same_minute_event("evt_same_1", "2025-03-01T19:30:00Z", first, 2);
        char *b2 = same_minute_event("evt_same_2", "2025-03-01T20:05:00Z", second, 4);
        ck_assert_int_eq(post_event(dm.port, b1, strlen(b1), NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, b2, strlen(b2), NULL, 0), 200);
        char *s = db_text(c, "SELECT string_agg(e.message, ',' ORDER BY e.event_datetime, e.message)"
                             " FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                             " WHERE t.easypost_id = 'trk_same'", NULL);
        ck_assert_str_eq(s, "A,B,X,C");
        free(s);
        ck_assert_int_eq(q1(c, "SELECT details_count FROM trackers WHERE easypost_id = 'trk_same'", NULL), 4);
        free(b1);
        free(b2);
        PQfinish(c);
}
END_TEST

/* Odd events sent together with good ones: every one stored, each outcome recorded. */
START_TEST(test_hostile_events_keep_neighbours)
{
        enum { GOOD = 40 };
        PGconn *c = db_open();
        char *bodies[GOOD + 5];
        size_t lens[GOOD + 5];
        int st[GOOD + 5];
        size_t n = 0;

        wipe(c);
        for (int i = 0; i < GOOD; i++) {
                char evid[32], trk[32];
                snprintf(evid, sizeof(evid), "evt_nb_%02d", i);
                snprintf(trk, sizeof(trk), "trk_nb_%02d", i);
                bodies[n++] = tracker_event(evid, trk, "in_transit", "2025-03-01T00:00:00Z", 2);
        }
        bodies[n++] = xstrdup("{\"id\":\"evt_nul\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                              "\"result\":{\"id\":\"trk_nul\",\"object\":\"Tracker\",\"status\":\"in_transit\","
                              "\"updated_at\":\"2025-03-01T00:00:00Z\",\"tracking_details\":[{\"message\":"
                              "\"bad\\u0000byte\",\"status\":\"in_transit\",\"datetime\":\"2025-03-01T00:00:00Z\"}]}}");
        bodies[n++] = tracker_event("evt_big", "trk_big", "in_transit", "2025-03-02T00:00:00Z", 5000);
        bodies[n++] = xstrdup("{\"id\":\"evt_unknown\",\"object\":\"Event\",\"description\":\"claims.whatever\","
                              "\"result\":{\"id\":\"clm_1\"}}");
        bodies[n++] = xstrdup("{\"id\":\"evt_nullres\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                              "\"result\":null}");
        /* a date PostgreSQL refuses inside the projection: the poison event */
        bodies[n++] = xstrdup("{\"id\":\"evt_poison\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                              "\"result\":{\"id\":\"trk_poison\",\"object\":\"Tracker\",\"status\":\"in_transit\","
                              "\"updated_at\":\"2025-02-30T00:00:00Z\",\"tracking_details\":[]}}");
        for (size_t i = 0; i < n; i++)
                lens[i] = strlen(bodies[i]);
        post_many(dm.port, bodies, lens, n, (unsigned)n, st);
        for (size_t i = 0; i < n; i++)
                ck_assert_msg(st[i] == 200, "event %zu answered %d", i, st[i]);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events", NULL), (long)n);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_nb_%' "
                               "AND status = 'projected'", NULL), GOOD);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events s JOIN trackers t ON t.id = s.tracker_id "
                               "WHERE t.easypost_id LIKE 'trk_nb_%'", NULL), 2 * GOOD);
        char *s = db_text(c, "SELECT w.status || '/' || (body IS NULL) || '/' || coalesce(w.body_error, '') "
                         "FROM webhook_events w JOIN webhook_event_bodies USING (id) "
                         "WHERE w.event_id = 'evt_nul'", NULL);
        ck_assert_msg(strncmp(s, "projected/true/contains", 23) == 0, "%s", s);
        free(s);
        s = db_text(c, "SELECT message FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                   "WHERE t.easypost_id = 'trk_nul'", NULL);
        ck_assert_str_eq(s, "badbyte");
        free(s);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                               "WHERE t.easypost_id = 'trk_big'", NULL), 5000);
        s = db_text(c, "SELECT status FROM webhook_events WHERE event_id = 'evt_unknown'", NULL);
        ck_assert_str_eq(s, "stored");
        free(s);
        s = db_text(c, "SELECT status || ': ' || error FROM webhook_events WHERE event_id = 'evt_nullres'", NULL);
        ck_assert_str_eq(s, "failed: tracker event without a result object");
        free(s);
        s = db_text(c, "SELECT status || ': ' || error FROM webhook_events WHERE event_id = 'evt_poison'", NULL);
        ck_assert_msg(strncmp(s, "failed: 22008", 13) == 0, "%s", s);
        free(s);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_poison'", NULL), 0);
        for (size_t i = 0; i < n; i++)
                free(bodies[i]);
        PQfinish(c);
}
END_TEST

static int
run_replay(const char *what)
{
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' '%s/easypost-syncd' --replay '%s' 2>>'%s/replay.log'",
                 getenv("TEST_PG_CONNINFO"), getenv("abs_top_builddir"), what,
                 getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp");
        return system(cmd);
}

/* A projection that fails because of the schema becomes a dead letter;
 * after the fix, --replay failed projects it through the same code. */
START_TEST(test_dead_letter_then_replay)
{
        PGconn *c = db_open();
        char *b = tracker_event("evt_replay", "trk_replay", "delivered", "2025-04-01T00:00:00Z", 3);

        wipe(c);
        db_exec(c, "ALTER TABLE trackers ADD CONSTRAINT no_replay CHECK (easypost_id <> 'trk_replay')");
        ck_assert_int_eq(post_event(dm.port, b, strlen(b), NULL, 0), 200);
        char *s = db_text(c, "SELECT status || ' ' || left(error, 5) FROM webhook_events WHERE event_id = 'evt_replay'", NULL);
        ck_assert_str_eq(s, "failed 23514");
        free(s);
        ck_assert_int_eq(run_replay("failed"), 0);
        s = db_text(c, "SELECT status FROM webhook_events WHERE event_id = 'evt_replay'", NULL);
        ck_assert_str_eq(s, "failed"); /* still broken: recorded, not raised */
        free(s);
        db_exec(c, "ALTER TABLE trackers DROP CONSTRAINT no_replay");
        ck_assert_int_eq(run_replay("failed"), 0);
        s = db_text(c, "SELECT status || '/' || (error IS NULL) FROM webhook_events WHERE event_id = 'evt_replay'", NULL);
        ck_assert_str_eq(s, "projected/true");
        free(s);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 3);
        s = db_text(c, "SELECT status FROM trackers WHERE easypost_id = 'trk_replay'", NULL);
        ck_assert_str_eq(s, "delivered");
        free(s);
        ck_assert_int_eq(run_replay("evt_replay"), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 3);
        ck_assert_int_ne(run_replay("evt_does_not_exist"), 0);
        free(b);
        PQfinish(c);
}
END_TEST

/* What a deferred daemon left queued (stored 'projected', its key in
 * projection_queue, as ingest stores it): an inline daemon warns about it
 * and leaves it; --replay queued projects it: every good event once, the
 * poison one a dead letter, the queue empty; a second run finds nothing. */
START_TEST(test_replay_queued_projects_what_deferred_left)
{
        PGconn *c = db_open();
        char *ev[3] = {
                tracker_event("evt_q_1", "trk_q_1", "in_transit", "2025-03-01T00:00:00Z", 4),
                tracker_event("evt_q_2", "trk_q_2", "delivered", "2025-03-02T00:00:00Z", 2),
                xstrdup("{\"id\":\"evt_q_poison\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                        "\"result\":{\"id\":\"trk_q_p\",\"object\":\"Tracker\",\"status\":\"x\","
                        "\"updated_at\":\"2025-02-30T00:00:00Z\",\"tracking_details\":[]}}"),
        };
        const char *ids[3][2] = { { "evt_q_1", "trk_q_1" }, { "evt_q_2", "trk_q_2" }, { "evt_q_poison", "trk_q_p" } };

        wipe(c);
        for (int i = 0; i < 3; i++) {
                const char *pv[3] = { ids[i][0], ids[i][1], ev[i] };
                PGresult *r = PQexecParams(c,
                        "WITH w AS (INSERT INTO webhook_events (id, event_id, description, object_id, raw, status)"
                        " VALUES (eps_uuid7(), $1, 'tracker.updated', $2, $3, 'projected') RETURNING id, received_at)"
                        " INSERT INTO projection_queue (received_at, id) SELECT received_at, id FROM w",
                        3, NULL, pv, NULL, NULL, 0);
                ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
                PQclear(r);
        }
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM projection_queue", NULL), 3);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers", NULL), 0);
        /* an inline daemon started on them says, once, how they get projected */
        struct daemon d;
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        uint64_t end = clock_mono_us() + 60u * 1000000u;
        char *log = NULL;
        for (;;) {
                log = itest_slurp(d.log);
                if (strstr(log, "3 event(s) queued by a deferred daemon") != NULL || clock_mono_us() > end)
                        break;
                free(log);
                usleep(50 * 1000);
        }
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        ck_assert_msg(strstr(log, "3 event(s) queued by a deferred daemon") != NULL &&
                              strstr(log, "--replay queued") != NULL,
                      "no warning in %s", d.log);
        free(log);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM projection_queue", NULL), 3); /* it projects none */
        ck_assert_int_eq(run_replay("queued"), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM projection_queue", NULL), 0);
        char *st = db_text(c, "SELECT string_agg(easypost_id || '=' || status, ',' ORDER BY easypost_id) FROM trackers",
                           NULL);
        ck_assert_str_eq(st, "trk_q_1=in_transit,trk_q_2=delivered");
        free(st);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 6);
        st = db_text(c, "SELECT string_agg(event_id || '=' || status || coalesce(':' || left(error, 5), ''), ','"
                        " ORDER BY event_id) FROM webhook_events", NULL);
        ck_assert_str_eq(st, "evt_q_1=projected,evt_q_2=projected,evt_q_poison=failed:22008");
        free(st);
        /* nothing left: a second run changes nothing */
        ck_assert_int_eq(run_replay("queued"), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events", NULL), 6);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers", NULL), 2);
        wipe(c);
        for (int i = 0; i < 3; i++)
                free(ev[i]);
        PQfinish(c);
}
END_TEST

/* projection = deferred: acknowledged once stored, projected right after
 * through the same code; a poison event is recorded, the others projected. */
START_TEST(test_deferred_projection)
{
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_PROJECTION=deferred", NULL };
        PGconn *c = db_open();

        wipe(c);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        char *newer = tracker_event("evt_def_2", "trk_def", "delivered", "2025-01-05T10:00:00Z", 5);
        char *older = tracker_event("evt_def_1", "trk_def", "in_transit", "2025-01-03T10:00:00Z", 3);
        char *poison = xstrdup("{\"id\":\"evt_def_poison\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                               "\"result\":{\"id\":\"trk_def_p\",\"object\":\"Tracker\",\"status\":\"x\","
                               "\"updated_at\":\"2025-02-30T00:00:00Z\",\"tracking_details\":[]}}");
        char resp[256];
        ck_assert_int_eq(post_event(d.port, newer, strlen(newer), resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"stored\""));
        ck_assert_int_eq(post_event(d.port, poison, strlen(poison), NULL, 0), 200);
        ck_assert_int_eq(post_event(d.port, older, strlen(older), NULL, 0), 200);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM projection_queue", 0, 10000), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL), 2);
        char *st = db_text(c, "SELECT status || ' ' || left(error, 5) FROM webhook_events WHERE event_id = 'evt_def_poison'", NULL);
        ck_assert_str_eq(st, "failed 22008");
        free(st);
        st = db_text(c, "SELECT status FROM trackers WHERE easypost_id = 'trk_def'", NULL);
        ck_assert_str_eq(st, "delivered");
        free(st);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), 5);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(newer);
        free(older);
        free(poison);
        PQfinish(c);
}
END_TEST

/* What the projection made, as text: every column an event decides (no
 * generated ids, no clock of ours), trackers, shipments, their history and
 * the sync jobs, in a fixed order. */
static const char PROJECTION_TEXT[] =
        "SELECT concat_ws(E'\\n',"
        " (SELECT string_agg(concat_ws('|', t.easypost_id, t.tracking_code, t.carrier, t.mode, t.status,"
        "   t.status_detail, t.est_delivery_date, t.signed_by, t.public_url, t.shipment_easypost_id,"
        "   (SELECT s.easypost_id FROM shipments s WHERE s.id = t.shipment_id), t.carrier_detail,"
        "   t.ep_created_at, t.ep_updated_at, t.newest_detail_at, t.details_count,"
        "   (SELECT w.event_id FROM webhook_events w WHERE w.id = t.last_webhook_event_id)),"
        "   E'\\n' ORDER BY t.easypost_id) FROM trackers t),"
        " (SELECT string_agg(concat_ws('|', s.easypost_id, s.mode, s.tracking_code, s.carrier, s.status,"
        "   s.status_at, s.status_detail_at, s.status_details), E'\\n' ORDER BY s.easypost_id) FROM shipments s),"
        " (SELECT string_agg(x, E'\\n' ORDER BY x) FROM (SELECT concat_ws('|', t.easypost_id,"
        "   (SELECT s.easypost_id FROM shipments s WHERE s.id = e.shipment_id),"
        "   (SELECT w.event_id FROM webhook_events w WHERE w.id = e.webhook_event_id), e.status,"
        "   e.status_detail, e.message, e.description, e.carrier_code, e.source, e.event_datetime,"
        "   e.tracking_location) AS x FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id) h),"
        " (SELECT string_agg(kind || ':' || object_id, ',' ORDER BY kind, object_id) FROM sync_jobs))";

/* The daemon hands the projection the tracker fields its scanner typed, so
 * PostgreSQL parses no JSON for them; the same events projected from their
 * stored raw bodies as jsonb (the path of the projector, --replay, the sync
 * worker, --reproject) must give exactly the same rows. Bodies with every
 * shape the scanner types, and some it leaves to jsonb. */
START_TEST(test_typed_snapshot_equals_jsonb)
{
        static const char *const results[] = {
                /* escapes, nulls, no shipment, carrier_detail null, locations of each kind */
                "{\"id\":\"trk_ty1\",\"object\":\"Tracker\",\"mode\":\"test\",\"tracking_code\":\"EZ\\u00e9\\\"1\","
                "\"carrier\":\"US\\/PS\",\"status\":\"in_transit\",\"status_detail\":null,\"signed_by\":null,"
                "\"est_delivery_date\":\"2025-03-09T00:00:00Z\",\"public_url\":\"https://t.example/\\u2603\","
                "\"carrier_detail\":null,\"created_at\":\"2025-03-01T00:00:00Z\",\"updated_at\":\"2025-03-02T00:00:00Z\","
                "\"tracking_details\":[{\"object\":\"TrackingDetail\",\"message\":\"a\\nb \\ud83d\\ude00\","
                "\"status\":\"pre_transit\",\"datetime\":\"2025-03-01T01:00:00Z\",\"source\":\"USPS\","
                "\"tracking_location\":{\"city\":\"X\",\"zip\":null,\"n\":1.50}},"
                "{\"message\":\"b\",\"status\":\"in_transit\",\"datetime\":\"2025-03-01T02:00:00Z\","
                "\"tracking_location\":\"nowhere\",\"description\":\"d\",\"carrier_code\":\"C1\",\"status_detail\":\"x\"},"
                "{\"message\":null,\"status\":null,\"datetime\":null,\"tracking_location\":null},"
                "{\"message\":\"late\",\"datetime\":\"2025-03-01T03:00:00+02:00\"}]}",
                /* the next snapshot of the same tracker: two details more, a shipment, carrier_detail */
                "{\"id\":\"trk_ty1\",\"mode\":\"test\",\"tracking_code\":\"EZ\\u00e9\\\"1\",\"carrier\":\"USPS\","
                "\"status\":\"out_for_delivery\",\"shipment_id\":\"shp_ty1\",\"updated_at\":\"2025-03-03T00:00:00Z\","
                "\"carrier_detail\":{\"service\":\"First\",\"x\":[1,true,null]},"
                "\"tracking_details\":[{\"object\":\"TrackingDetail\",\"message\":\"a\\nb \\ud83d\\ude00\","
                "\"status\":\"pre_transit\",\"datetime\":\"2025-03-01T01:00:00Z\",\"source\":\"USPS\","
                "\"tracking_location\":{\"city\":\"X\",\"zip\":null,\"n\":1.50}},"
                "{\"message\":\"b\",\"status\":\"in_transit\",\"datetime\":\"2025-03-01T02:00:00Z\","
                "\"tracking_location\":\"nowhere\",\"description\":\"d\",\"carrier_code\":\"C1\",\"status_detail\":\"x\"},"
                "{\"message\":null,\"status\":null,\"datetime\":null,\"tracking_location\":null},"
                "{\"message\":\"late\",\"datetime\":\"2025-03-01T03:00:00+02:00\"},"
                "{\"message\":\"c\",\"status\":\"out_for_delivery\",\"datetime\":\"2025-03-02T09:00:00Z\"},"
                "{\"message\":\"c2\",\"status\":\"out_for_delivery\",\"datetime\":\"not a time\"}]}",
                /* an older snapshot after a newer one: kept out of the row, its details merged */
                "{\"id\":\"trk_ty1\",\"status\":\"in_transit\",\"shipment_id\":\"shp_ty1\","
                "\"updated_at\":\"2025-03-02T12:00:00Z\",\"tracking_details\":[{\"message\":\"other\","
                "\"status\":\"in_transit\",\"datetime\":\"2025-03-01T05:00:00Z\"}]}",
                /* no updated_at in the result (the event's), shipment_id empty, tracking_details null */
                "{\"id\":\"trk_ty2\",\"status\":\"unknown\",\"shipment_id\":\"\",\"tracking_details\":null}",
                /* no tracking_details at all */
                "{\"id\":\"trk_ty3\",\"status\":\"unknown\",\"updated_at\":\"2025-03-04T00:00:00Z\"}",
                /* shapes the scanner leaves to jsonb: a number where text is expected, an
                 * element that is no object, an object where text is expected */
                "{\"id\":\"trk_ty4\",\"status\":7,\"updated_at\":\"2025-03-04T00:00:00Z\","
                "\"tracking_details\":[{\"message\":\"m\",\"datetime\":\"2025-03-04T00:00:00Z\"}]}",
                "{\"id\":\"trk_ty5\",\"status\":\"in_transit\",\"tracking_details\":[1,{\"message\":\"m\","
                "\"datetime\":\"2025-03-04T00:00:00Z\"},\"x\"]}",
                "{\"id\":\"trk_ty6\",\"status\":\"in_transit\",\"tracking_details\":[{\"message\":{\"a\":1},"
                "\"source\":[\"x\"],\"datetime\":\"2025-03-04T00:00:00Z\"}]}",
        };
        enum { N = sizeof(results) / sizeof(results[0]) };
        PGconn *c = db_open();

        wipe(c);
        db_exec(c, "TRUNCATE sync_jobs");
        for (int i = 0; i < N; i++) {
                char evid[32];
                snprintf(evid, sizeof(evid), "evt_typed_%d", i);
                char *b = make_event(evid, i % 2 ? "tracker.updated" : "tracker.created", results[i]);
                ck_assert_int_eq(post_event(dm.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL), N);
        /* the typed path did the work: the history is there */
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                               " WHERE t.easypost_id = 'trk_ty1'", NULL), 7);
        char *typed = db_text(c, PROJECTION_TEXT, NULL);

        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, sync_jobs");
        db_exec(c, "DO $$ DECLARE r record; BEGIN FOR r IN SELECT id, raw FROM webhook_events"
                   " ORDER BY received_at, id LOOP PERFORM eps_project_trackers(ARRAY[r.id], ARRAY[r.raw::jsonb]);"
                   " END LOOP; END $$");
        char *json = db_text(c, PROJECTION_TEXT, NULL);
        ck_assert_str_eq(typed, json);
        free(typed);
        free(json);
        PQfinish(c);
}
END_TEST

static void
notice_to_buf(void *arg, const char *msg)
{
        strbuf_printf(arg, "%s", msg);
}

/* The projector reads each queued row, and writes back a failure, by its
 * whole key: a probe of the partition's primary key, even in a month's
 * partition PostgreSQL has not analyzed yet (by id alone that partition was
 * read whole for every batch, slower the fuller the month). Every plan of
 * eps_project_pending is shown (auto_explain) and none reads the filled
 * partition whole. A projected row is not written again (its xmin stays);
 * a failed one is, and so is a row stored 'pending' before 0016. */
START_TEST(test_queued_rows_read_by_key_and_written_once)
{
        PGconn *c = db_open();
        struct strbuf plans = { 0 };

        wipe(c);
        /* next month's partition: nothing has written there, nothing analyzed it */
        char *part = db_text(c, "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                " WHERE i.inhparent = 'webhook_events'::regclass"
                                " AND c.relname = 'webhook_events_' || to_char(now() + interval '1 month', 'YYYY_MM')",
                             NULL);
        ck_assert_ptr_nonnull(part);
        db_exec(c, "INSERT INTO webhook_events (id, event_id, description, object_id, raw, status, received_at)"
                   " SELECT eps_uuid7(), 'evt_pk_' || g, 'tracker.updated', 'trk_pk_' || g, '{}', 'projected',"
                   " date_trunc('month', now() + interval '1 month') + g * interval '1 ms'"
                   " FROM generate_series(1, 20000) g");
        /* a projector's batch of queued tracker events after them: 197 as
         * ingest stores them, one a poison, two stored 'pending' before 0016 */
        db_exec(c, "INSERT INTO webhook_events (id, event_id, description, object_id, raw, status, received_at)"
                   " SELECT eps_uuid7(), 'evt_pkp_' || g, 'tracker.updated', 'trk_pkp_' || g,"
                   " format('{\"id\":\"evt_pkp_%s\",\"object\":\"Event\",\"description\":\"tracker.updated\","
                   "\"result\":{\"id\":\"trk_pkp_%s\",\"status\":\"in_transit\",%s\"tracking_details\":[]}}', g, g,"
                   " CASE WHEN g = 7 THEN '\"updated_at\":\"2025-02-30T00:00:00Z\",' ELSE '' END),"
                   " CASE WHEN g > 198 THEN 'pending' ELSE 'projected' END,"
                   " date_trunc('month', now() + interval '1 month') + interval '1 hour' + g * interval '1 ms'"
                   " FROM generate_series(1, 200) g");
        db_exec(c, "INSERT INTO projection_queue (received_at, id) SELECT received_at, id FROM webhook_events"
                   " WHERE event_id LIKE 'evt\\_pkp\\_%'");
        char *xmin = db_text(c, "SELECT xmin::text FROM webhook_events WHERE event_id = 'evt_pkp_1'", NULL);
        PQsetNoticeProcessor(c, notice_to_buf, &plans);
        db_exec(c, "LOAD 'auto_explain'");
        db_exec(c, "SET auto_explain.log_min_duration = 0");
        db_exec(c, "SET auto_explain.log_nested_statements = on");
        db_exec(c, "SET auto_explain.log_level = notice");
        db_exec(c, "SET client_min_messages = notice");
        char *out = db_text(c, "SELECT taken || '/' || projected FROM eps_project_pending(200)", NULL);
        ck_assert_str_eq(out, "200/199");
        free(out);
        db_exec(c, "SET client_min_messages = warning");
        PQsetNoticeProcessor(c, NULL, NULL);
        const char *upd = strstr(plans.data, "UPDATE webhook_events");
        ck_assert_msg(upd != NULL, "no plan of the write-back shown: %.800s", plans.data);
        ck_assert_msg(strstr(plans.data, "DELETE FROM projection_queue") != NULL, "no plan of the take shown: %.800s",
                      plans.data);
        char seq[160];
        snprintf(seq, sizeof(seq), "Seq Scan on %s ", part);
        const char *at = strstr(plans.data, seq);
        ck_assert_msg(at == NULL, "%s read whole: %.800s", part,
                      at && at - plans.data > 600 ? at - 600 : plans.data);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM projection_queue", NULL), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE status = 'pending'", NULL), 0);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM trackers WHERE easypost_id LIKE 'trk\\_pkp\\_%'", NULL), 199);
        /* written once: the 197 projected as stored; the poison and the two old ones again */
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt\\_pkp\\_%'"
                               " AND xmin::text = $1 AND status = 'projected'", xmin), 197);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt\\_pkp\\_%'"
                               " AND xmin::text <> $1 AND status = 'projected'", xmin), 2);
        ck_assert_int_eq(q1(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_pkp_7'"
                               " AND status = 'failed' AND error LIKE '22008%'", NULL), 1);
        free(xmin);
        wipe(c);
        free(part);
        free(plans.data);
        PQfinish(c);
}
END_TEST

Suite *
project_suite(void)
{
        Suite *s = suite_create("project");
        TCase *tc = tcase_create("projection");

        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, up, down);
        tcase_add_test(tc, test_fixture_projection);
        tcase_add_test(tc, test_out_of_order_newer_wins);
        tcase_add_test(tc, test_growing_history_each_detail_once);
        tcase_add_test(tc, test_new_detail_of_the_newest_minute_is_kept);
        tcase_add_test(tc, test_hostile_events_keep_neighbours);
        tcase_add_test(tc, test_dead_letter_then_replay);
        tcase_add_test(tc, test_replay_queued_projects_what_deferred_left);
        tcase_add_test(tc, test_deferred_projection);
        tcase_add_test(tc, test_typed_snapshot_equals_jsonb);
        tcase_add_test(tc, test_queued_rows_read_by_key_and_written_once);
        suite_add_tcase(s, tc);
        return s;
}
