/*
 * check_ingest.c - the webhook path end to end: real daemon, real PostgreSQL.
 * Fixtures stored byte for byte, every refusal with nothing stored, duplicates
 * stored once, 2,000 events from 32 clients, PostgreSQL outages; a delivery
 * racing the backfill's open partial copy, a dead-letter tracker event healed
 * from the API, Basic auth, batches bounded by bytes.
 */
#include <jansson.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

static struct daemon dm;

static void
up(void)
{
        const char *env[] = { "EASYPOST_SYNC_MAX_BODY_BYTES=65536", NULL };
        ck_assert_int_eq(daemon_start(&dm, env), 0);
}

static void
down(void)
{
        ck_assert_int_eq(daemon_stop(&dm, SIGTERM), 0);
}

static long
rows_for(PGconn *c, const char *event_id)
{
        return db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1", event_id);
}

START_TEST(test_fixtures_stored_byte_exact)
{
        SKIP_WITHOUT_FIXTURES();
        static const char *const files[] = {
                "hmac_body_tracker_updated.json", "hmac_body_tracker_updated_weight136.json",
                "hmac_body_batch_created.json", "event_tracker_updated_delivered_docs.json",
                "event_tracker_created_thirdparty.json", "event_batch_created_docs.json",
                "event_batch_updated_docs.json", "event_scan_form_created_docs.json",
                "event_retrieve.json",
        };
        PGconn *c = db_open();
        char resp[512];

        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
                size_t len;
                char *body = fixture_read(files[i], &len);
                /* fixtures share ids ("evt_..."): each starts from a clean slate */
                json_t *doc = json_loadb(body, len, 0, NULL);
                ck_assert_ptr_nonnull(doc);
                struct { char id[80]; } ev;
                snprintf(ev.id, sizeof(ev.id), "%s", json_string_value(json_object_get(doc, "id")));
                json_decref(doc);
                const char *pv[1] = { ev.id };
                db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue CASCADE");
                int st = post_event(dm.port, body, len, resp, sizeof(resp));
                ck_assert_msg(st == 200, "%s: %d %s", files[i], st, resp);
                ck_assert_msg(strstr(resp, "\"stored\"") != NULL, "%s: %s", files[i], resp);
                PGresult *r = PQexecParams(c,
                                           "SELECT raw, body IS NOT NULL, w.source, "
                                           "id::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7' "
                                           "FROM webhook_events w JOIN webhook_event_bodies "
                                           "USING (id) WHERE w.event_id = $1",
                                           1, NULL, pv, NULL, NULL, 0);
                ck_assert_int_eq(PQntuples(r), 1);
                ck_assert_uint_eq((size_t)PQgetlength(r, 0, 0), len);
                ck_assert_msg(memcmp(PQgetvalue(r, 0, 0), body, len) == 0, "%s not byte-exact",
                              files[i]);
                ck_assert_str_eq(PQgetvalue(r, 0, 1), "t");
                ck_assert_str_eq(PQgetvalue(r, 0, 2), "webhook");
                ck_assert_str_eq(PQgetvalue(r, 0, 3), "t"); /* UUID v7 key */
                PQclear(r);
                free(body);
        }
        PQfinish(c);
}
END_TEST

/* The official vector: the signature EasyPost computed verifies here. */
START_TEST(test_official_signature_end_to_end)
{
        SKIP_WITHOUT_FIXTURES();
        size_t len;
        char *body = fixture_read("hmac_body_tracker_updated.json", &len);
        const char *h[] = { "Content-Type: application/json",
                            "X-Hmac-Signature: hmac-sha256-hex="
                            "38f3f53c103713df81616a0a186d77141957323ec21d5fe9363db93840f527db",
                            NULL };
        int st = http_req(dm.port, "POST", "/webhooks/easypost", h, body, len, NULL, 0);
        ck_assert_int_eq(st, 200);
        body[100] ^= 1;
        st = http_req(dm.port, "POST", "/webhooks/easypost", h, body, len, NULL, 0);
        ck_assert_int_eq(st, 401);
        free(body);
}
END_TEST

/* Each refusal: its status, a JSON error body, and no row. */
START_TEST(test_error_statuses_store_nothing)
{
        PGconn *c = db_open();
        char *good = make_event("evt_err_1", "tracker.updated", "{\"id\":\"trk_e1\"}");
        char sig[81], sighdr[120], resp[512];
        sign_body(ITEST_SECRET, good, strlen(good), sig);
        snprintf(sighdr, sizeof(sighdr), "X-Hmac-Signature: %s", sig);
        const char *json_signed[] = { "Content-Type: application/json", sighdr, NULL };
        const char *text_signed[] = { "Content-Type: text/plain", sighdr, NULL };
        const char *no_sig[] = { "Content-Type: application/json", NULL };
        const char *bad_sig[] = { "Content-Type: application/json",
                                  "X-Hmac-Signature: hmac-sha256-hex=00", NULL };

        ck_assert_int_eq(http_req(dm.port, "GET", "/webhooks/easypost", NULL, NULL, 0, resp,
                                  sizeof(resp)), 405);
        ck_assert_ptr_nonnull(strstr(resp, "\"error\""));
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/nope", json_signed, good,
                                  strlen(good), resp, sizeof(resp)), 404);
        ck_assert_ptr_nonnull(strstr(resp, "\"error\""));
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/easypost", text_signed, good,
                                  strlen(good), resp, sizeof(resp)), 415);
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/easypost", no_sig, good,
                                  strlen(good), resp, sizeof(resp)), 401);
        ck_assert_ptr_nonnull(strstr(resp, "\"error\""));
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/easypost", bad_sig, good,
                                  strlen(good), resp, sizeof(resp)), 401);
        /* over the limit (64 KiB for this daemon) */
        size_t big = 65537;
        char *huge = xmalloc(big);
        memset(huge, ' ', big);
        memcpy(huge, good, strlen(good));
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/easypost", json_signed, huge, big,
                                  NULL, 0), 413);
        free(huge);
        /* signed, but not an Event: 400 */
        static const char *const not_events[] = {
                "not json", "[1,2]", "{\"id\":\"evt_err_1\",\"object\":\"Tracker\",\"description\":\"x\"}",
                "{\"id\":12,\"object\":\"Event\",\"description\":\"x\"}",
                "{\"id\":\"evt_err_1\",\"object\":\"Event\"}",
        };
        for (size_t i = 0; i < sizeof(not_events) / sizeof(not_events[0]); i++) {
                ck_assert_int_eq(post_event(dm.port, not_events[i], strlen(not_events[i]), resp,
                                            sizeof(resp)), 400);
                ck_assert_ptr_nonnull(strstr(resp, "\"error\""));
        }
        ck_assert_int_eq(rows_for(c, "evt_err_1"), 0);
        /* and the same event, correctly sent, is stored */
        ck_assert_int_eq(http_req(dm.port, "POST", "/webhooks/easypost", json_signed, good,
                                  strlen(good), resp, sizeof(resp)), 200);
        ck_assert_int_eq(rows_for(c, "evt_err_1"), 1);
        free(good);
        PQfinish(c);
}
END_TEST

START_TEST(test_same_event_20_concurrently)
{
        PGconn *c = db_open();
        char *body = make_event("evt_dup_20", "tracker.updated", "{\"id\":\"trk_d20\"}");
        char *bodies[20];
        size_t lens[20];
        int st[20];

        for (int i = 0; i < 20; i++) {
                bodies[i] = body;
                lens[i] = strlen(body);
        }
        post_many(dm.port, bodies, lens, 20, 20, st);
        for (int i = 0; i < 20; i++)
                ck_assert_int_eq(st[i], 200);
        ck_assert_int_eq(rows_for(c, "evt_dup_20"), 1);
        free(body);
        PQfinish(c);
}
END_TEST

START_TEST(test_2000_events_32_clients)
{
        enum { N = 2000 };
        PGconn *c = db_open();
        char **bodies = xcalloc(N, sizeof(char *));
        size_t *lens = xcalloc(N, sizeof(size_t));
        int *st = xcalloc(N, sizeof(int));
        char id[64];

        db_exec(c, "DELETE FROM webhook_events WHERE event_id LIKE 'evt_load_%'");
        for (int i = 0; i < N; i++) {
                snprintf(id, sizeof(id), "evt_load_%05d", i);
                bodies[i] = make_event(id, "tracker.updated", "{\"id\":\"trk_load\"}");
                lens[i] = strlen(bodies[i]);
        }
        uint64_t t0 = clock_mono_us();
        post_many(dm.port, bodies, lens, N, 32, st);
        double secs = (double)(clock_mono_us() - t0) / 1e6;
        long ok = 0;
        for (int i = 0; i < N; i++) {
                ok += st[i] == 200;
                if (st[i] == 200) {
                        snprintf(id, sizeof(id), "evt_load_%05d", i);
                        ck_assert_msg(rows_for(c, id) == 1, "%s answered 200 but not stored", id);
                }
        }
        ck_assert_int_eq(ok, N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE "
                                    "'evt_load_%'", NULL), N);
        fprintf(stderr, "2000 events from 32 clients: %.0f events/s (%.2f s)\n", N / secs, secs);
        for (int i = 0; i < N; i++)
                free(bodies[i]);
        free(bodies);
        free(lens);
        free(st);
        PQfinish(c);
}
END_TEST

/* PostgreSQL stopped under a running daemon: 503; back: 200, same process. */
START_TEST(test_db_outage_and_recovery)
{
        char *b1 = make_event("evt_outage_1", "tracker.updated", NULL);
        char *b2 = make_event("evt_outage_2", "tracker.updated", NULL);
        char resp[256];
        pid_t pid = dm.pid;

        ck_assert_int_eq(post_event(dm.port, b1, strlen(b1), resp, sizeof(resp)), 200);
        pg_ctl("stop");
        ck_assert_int_eq(post_event(dm.port, b2, strlen(b2), resp, sizeof(resp)), 503);
        ck_assert(wait_status(dm.port, "/readyz", 503, 10000));
        pg_ctl("start");
        uint64_t end = clock_mono_us() + 20000000u;
        int st = 0;
        while (clock_mono_us() < end &&
               (st = post_event(dm.port, b2, strlen(b2), resp, sizeof(resp))) != 200)
                ck_assert_int_eq(st, 503);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(kill(pid, 0), 0); /* no restart needed */
        PGconn *c = db_open();
        ck_assert_int_eq(rows_for(c, "evt_outage_2"), 1);
        PQfinish(c);
        free(b1);
        free(b2);
}
END_TEST

/* Started while PostgreSQL is down: alive, 503, then 200 once it is up. */
START_TEST(test_db_down_at_start)
{
        struct daemon d2;
        char *b = make_event("evt_late_db", "tracker.updated", NULL);
        char resp[256];

        pg_ctl("stop");
        itest_wait_ready = false;
        ck_assert_int_eq(daemon_start(&d2, NULL), 0);
        itest_wait_ready = true;
        ck_assert_int_eq(post_event(d2.port, b, strlen(b), resp, sizeof(resp)), 503);
        ck_assert_ptr_nonnull(strstr(resp, "\"error\""));
        pg_ctl("start");
        ck_assert(wait_status(d2.port, "/readyz", 200, 20000));
        ck_assert_int_eq(post_event(d2.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_int_eq(daemon_stop(&d2, SIGTERM), 0);
        free(b);
}
END_TEST

/* eps_ingest_batch with one event, as the daemon calls it (not deferred). */
static const char SQL_ONE[] =
        "SELECT ord, status FROM eps_ingest_batch(ARRAY[eps_uuid7()], ARRAY[$1::text], "
        "ARRAY['tracker.updated'], ARRAY['test'], ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::text], "
        "ARRAY['2025-01-02T03:04:05.678Z'], NULL, NULL, ARRAY[$5::text], false)";

/* The same, deferred (projection = deferred). */
static const char SQL_ONE_DEFERRED[] =
        "SELECT ord, status FROM eps_ingest_batch(ARRAY[eps_uuid7()], ARRAY[$1::text], "
        "ARRAY['tracker.updated'], ARRAY['test'], ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::text], "
        "ARRAY['2025-01-02T03:04:05.678Z'], NULL, NULL, ARRAY[$5::text], true)";

static void
send_sql(PGconn *c, const char *sql, const char *id, const char *object_id, const char *body, const char *source,
         bool partial)
{
        const char *pv[5] = { id, object_id, body, source, partial ? "t" : NULL };

        ck_assert_msg(PQsendQueryParams(c, sql, 5, NULL, pv, NULL, NULL, 0) == 1, "send: %s", PQerrorMessage(c));
}

static void
send_one(PGconn *c, const char *id, const char *object_id, const char *body, const char *source,
         bool partial)
{
        send_sql(c, SQL_ONE, id, object_id, body, source, partial);
}

/* The outcome of the call sent on c (caller frees). */
static char *
one_outcome(PGconn *c)
{
        PGresult *r = PQgetResult(c);
        char *out;

        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "batch: %s", PQerrorMessage(c));
        ck_assert_int_eq(PQntuples(r), 1);
        out = xstrdup(PQgetvalue(r, 0, 1));
        PQclear(r);
        while ((r = PQgetResult(c)) != NULL)
                PQclear(r);
        return out;
}

/* A tracker event with its result: trk_ID's first detail (caller frees). */
static char *
full_event(const char *evt, const char *trk)
{
        char result[512];
        snprintf(result, sizeof(result),
                 "{\"id\":\"%s\",\"object\":\"Tracker\",\"mode\":\"test\",\"tracking_code\":\"EZ%s\","
                 "\"carrier\":\"USPS\",\"status\":\"in_transit\",\"updated_at\":\"2025-01-02T03:04:05Z\","
                 "\"tracking_details\":[{\"message\":\"Accepted\",\"status\":\"pre_transit\","
                 "\"datetime\":\"2025-01-02T03:00:00Z\"}]}",
                 trk, trk + 4);
        return make_event(evt, "tracker.updated", result);
}

/* Forgets the event and its tracker, as if neither had been seen. */
static void
forget(PGconn *c, const char *evt, const char *trk)
{
        const char *e[1] = { evt }, *t[1] = { trk };
        static const char *const by_event[] = { "DELETE FROM webhook_event_ids WHERE event_id = $1",
                                                "DELETE FROM webhook_events WHERE event_id = $1" };
        static const char *const by_tracker[] = { "DELETE FROM shipment_events WHERE tracker_id IN "
                                                  "(SELECT id FROM trackers WHERE easypost_id = $1)",
                                                  "DELETE FROM trackers WHERE easypost_id = $1" };

        for (int i = 0; i < 4; i++) {
                PGresult *r = PQexecParams(c, i < 2 ? by_event[i] : by_tracker[i - 2], 1, NULL, i < 2 ? e : t,
                                           NULL, NULL, 0);
                ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQerrorMessage(c));
                PQclear(r);
        }
}

/* Waits until waiter's statement waits on a lock. */
static void
assert_waits(PGconn *c, PGconn *waiter, const char *what)
{
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %d "
                                   "AND wait_event_type = 'Lock'", PQbackendPID(waiter));
        ck_assert_msg(db_wait_long(c, sql, 1, 30000) == 1, "%s never waited", what);
}

/* The event's one row holds the full copy, 'projected' with no error. */
static void
assert_replaced(PGconn *c, const char *evt, const char *full)
{
        const char *pv[1] = { evt };
        PGresult *r = PQexecParams(c, "SELECT raw, status, coalesce(error, ''), partial FROM webhook_events "
                                      "WHERE event_id = $1", 1, NULL, pv, NULL, NULL, 0);
        ck_assert_int_eq(PQntuples(r), 1);
        ck_assert_str_eq(PQgetvalue(r, 0, 0), full);
        ck_assert_str_eq(PQgetvalue(r, 0, 1), "projected");
        ck_assert_str_eq(PQgetvalue(r, 0, 2), "");
        ck_assert_str_eq(PQgetvalue(r, 0, 3), "f");
        PQclear(r);
}

/*
 * The backfill's list-only copy of an event (partial, no result) is being
 * stored in a transaction still open when the real delivery of the same event
 * arrives. The delivery waits on the event's dedup key; once the backfill
 * commits, it must replace the partial row (whose commit its first snapshot
 * did not see), not answer "duplicate": the row holds the delivered body, is
 * projected, and the tracker exists.
 */
START_TEST(test_delivery_racing_the_partial_copy_replaces_it)
{
        PGconn *a = db_open(), *b = db_open(), *c = db_open();
        char *listed = make_event("evt_race_1", "tracker.updated", NULL);
        char *full = full_event("evt_race_1", "trk_race_1");
        char *st;

        forget(c, "evt_race_1", "trk_race_1");

        /* A: the backfill's partial copy, held open */
        db_exec(a, "BEGIN");
        send_one(a, "evt_race_1", NULL, listed, "backfill", true);
        st = one_outcome(a);
        ck_assert_str_eq(st, "failed"); /* no result: cannot be projected */
        free(st);

        /* B: the delivery, waiting on A's dedup key */
        send_one(b, "evt_race_1", "trk_race_1", full, "webhook", false);
        assert_waits(c, b, "the delivery");
        db_exec(a, "COMMIT");

        st = one_outcome(b);
        ck_assert_msg(strcmp(st, "projected") == 0, "the delivery was answered %s", st);
        free(st);
        assert_replaced(c, "evt_race_1", full);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_race_1'"
                                    " AND source = 'webhook' AND object_id = 'trk_race_1'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_race_1' "
                                    "AND status = 'in_transit'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = "
                                    "e.tracker_id WHERE t.easypost_id = 'trk_race_1'", NULL), 1);
        /* once full, another copy is a duplicate again */
        send_one(b, "evt_race_1", "trk_race_1", full, "webhook", false);
        st = one_outcome(b);
        ck_assert_str_eq(st, "duplicate");
        free(st);
        free(listed);
        free(full);
        PQfinish(a);
        PQfinish(b);
        PQfinish(c);
}
END_TEST

/* Deferred: the backfill's partial copy of evt (no result), queued. */
static void
queue_partial_copy(PGconn *c, const char *evt, const char *trk, const char *listed)
{
        forget(c, evt, trk);
        db_exec(c, "TRUNCATE projection_queue");
        send_sql(c, SQL_ONE_DEFERRED, evt, NULL, listed, "backfill", true);
        char *st = one_outcome(c);
        ck_assert_str_eq(st, "pending");
        free(st);
}

/* The full copy replaced the partial one, and the next projector run
 * projects it: its key taken, the tracker written, the row projected. */
static void
assert_full_copy_projected(PGconn *c, const char *evt, const char *trk, const char *full)
{
        assert_replaced(c, evt, full);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT taken * 10 + projected FROM eps_project_pending(10)", NULL), 11);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = $1 AND status = 'in_transit'",
                                 trk), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1 AND status = 'projected'",
                                 evt), 1);
}

/*
 * Deferred: the backfill's partial copy is queued; a projector takes its key
 * and fails it (no result) in a transaction still open when the full copy
 * arrives. The full copy queues the event again before it touches the row,
 * so it waits for that projector's commit instead of deadlocking with it,
 * then replaces the row; the next projector run projects the full body.
 */
START_TEST(test_deferred_full_copy_requeues_after_a_projector_holding_its_key)
{
        PGconn *a = db_open(), *b = db_open(), *c = db_open();
        char *listed = make_event("evt_dq_1", "tracker.updated", NULL);
        char *full = full_event("evt_dq_1", "trk_dq_1");
        char *st;

        queue_partial_copy(c, "evt_dq_1", "trk_dq_1", listed);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue q JOIN webhook_events w ON w.id = q.id"
                                    " AND w.received_at = q.received_at WHERE w.event_id = 'evt_dq_1'"
                                    " AND w.status = 'projected' AND w.partial", NULL), 1);

        /* A: a projector takes the key and fails the partial copy, held open */
        db_exec(a, "BEGIN");
        ck_assert_int_eq(db_long(a, "SELECT taken * 10 + projected FROM eps_project_pending(10)", NULL), 10);
        /* B: the full copy, waiting on the key A took */
        send_sql(b, SQL_ONE_DEFERRED, "evt_dq_1", "trk_dq_1", full, "webhook", false);
        assert_waits(c, b, "the full copy");
        db_exec(a, "COMMIT");
        st = one_outcome(b);
        ck_assert_msg(strcmp(st, "pending") == 0, "the full copy was answered %s", st);
        free(st);
        assert_full_copy_projected(c, "evt_dq_1", "trk_dq_1", full);
        free(listed);
        free(full);
        PQfinish(a);
        PQfinish(b);
        PQfinish(c);
}
END_TEST

/*
 * The other order: the full copy has replaced the partial row in a
 * transaction still open when a projector runs. The key it queued again is
 * held by that transaction, so the projector skips it instead of taking it,
 * reading the partial copy and, once the full copy commits, storing it
 * 'failed' onto the full one (then never projected). The next run projects
 * the full body. (lock_timeout: the old way, the projector waits on the row.)
 */
START_TEST(test_deferred_projector_skips_a_key_a_full_copy_holds)
{
        PGconn *a = db_open(), *b = db_open(), *c = db_open();
        char *listed = make_event("evt_dq_2", "tracker.updated", NULL);
        char *full = full_event("evt_dq_2", "trk_dq_2");
        char *st;

        queue_partial_copy(c, "evt_dq_2", "trk_dq_2", listed);
        /* B: the full copy, held open */
        db_exec(b, "BEGIN");
        send_sql(b, SQL_ONE_DEFERRED, "evt_dq_2", "trk_dq_2", full, "webhook", false);
        st = one_outcome(b);
        ck_assert_msg(strcmp(st, "pending") == 0, "the full copy was answered %s", st);
        free(st);
        /* A: a projector meanwhile takes nothing */
        db_exec(a, "SET lock_timeout = '5s'");
        ck_assert_int_eq(db_long(a, "SELECT taken * 10 + projected FROM eps_project_pending(10)", NULL), 0);
        db_exec(b, "COMMIT");
        assert_full_copy_projected(c, "evt_dq_2", "trk_dq_2", full);
        free(listed);
        free(full);
        PQfinish(a);
        PQfinish(b);
        PQfinish(c);
}
END_TEST

/*
 * A full copy that comes back duplicate looks for a partial copy to replace.
 * The plan of that lookup is cached for the connection's life, made at its
 * first duplicate while the table was small: it must probe the event_id
 * index, never scan the partitions (a scan costs more with every event
 * stored; it doubled PostgreSQL's time per event over a long run). Counted
 * by PostgreSQL for this transaction (pg_stat_xact_user_tables).
 */
START_TEST(test_duplicate_probes_the_index)
{
        PGconn *c = db_open();
        const char *scans = "SELECT coalesce(sum(s.seq_scan), 0) FROM pg_stat_xact_user_tables s "
                            "JOIN pg_inherits i ON i.inhrelid = s.relid "
                            "WHERE i.inhparent = 'webhook_events'::regclass";
        char *body = make_event("evt_probe_1", "tracker.updated", NULL);
        char *st;
        long before;

        db_exec(c, "DELETE FROM webhook_event_ids WHERE event_id = 'evt_probe_1'");
        db_exec(c, "DELETE FROM webhook_events WHERE event_id = 'evt_probe_1'");
        db_exec(c, "BEGIN");
        send_one(c, "evt_probe_1", NULL, body, "webhook", false);
        st = one_outcome(c);
        ck_assert_str_eq(st, "failed"); /* no result: stored, not projected */
        free(st);
        for (int i = 0; i < 3; i++) {
                before = db_long(c, scans, NULL);
                send_one(c, "evt_probe_1", NULL, body, "webhook", false);
                st = one_outcome(c);
                ck_assert_str_eq(st, "duplicate");
                free(st);
                ck_assert_msg(db_long(c, scans, NULL) == before,
                              "duplicate %d scanned webhook_events' partitions", i + 1);
        }
        db_exec(c, "ROLLBACK");
        free(body);
        PQfinish(c);
}
END_TEST

#define HEAL_API_KEY "EZTKtestkey0123456789" /* integration.sh checks that no log shows it */

/*
 * A tracker event that breaks its batch (a tracking detail dated
 * 2024-13-45, which PostgreSQL refuses) is isolated and stored raw as a dead
 * letter; like a structurally broken one, it queues a fetch of its tracker,
 * so the tracker row and its history still come from the API. In deferred
 * mode the projector's one-at-a-time fallback stores it failed and queues
 * the same fetch. n names the event and the tracker.
 */
static void
dead_letter_fetches_the_tracker(const char *projection, int n)
{
        PGconn *c = db_open();
        struct fake_api fk;
        struct daemon d;
        char url[128], mode[64], resp[256], trk[32], evt[32], obj[600], res[400], q[300];

        snprintf(trk, sizeof(trk), "trk_dead%d", n);
        snprintf(evt, sizeof(evt), "evt_dead%d", n);
        db_exec(c, "DELETE FROM sync_jobs WHERE object_id LIKE 'trk\\_dead%'");
        db_exec(c, "DELETE FROM shipment_events WHERE tracker_id IN "
                   "(SELECT id FROM trackers WHERE easypost_id LIKE 'trk\\_dead%')");
        db_exec(c, "DELETE FROM trackers WHERE easypost_id LIKE 'trk\\_dead%'");
        ck_assert_int_eq(fake_start(&fk, HEAL_API_KEY), 0);
        snprintf(obj, sizeof(obj),
                 "{\"id\":\"%s\",\"object\":\"Tracker\",\"mode\":\"test\","
                 "\"tracking_code\":\"EZDEAD%d\",\"carrier\":\"USPS\",\"status\":\"delivered\","
                 "\"updated_at\":\"2025-05-03T09:00:00Z\",\"tracking_details\":["
                 "{\"message\":\"Accepted\",\"status\":\"pre_transit\",\"datetime\":\"2025-05-01T09:00:00Z\"},"
                 "{\"message\":\"Delivered\",\"status\":\"delivered\",\"datetime\":\"2025-05-03T09:00:00Z\"}]}",
                 trk, n);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", obj, NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(mode, sizeof(mode), "EASYPOST_SYNC_PROJECTION=%s", projection);
        const char *env[] = { url, mode, "EASYPOST_API_KEY=" HEAL_API_KEY, "EASYPOST_SYNC_API_RATE=5",
                              "EASYPOST_SYNC_BACKFILL_INTERVAL=0", "EASYPOST_SYNC_API_TIMEOUT=2",
                              "EASYPOST_SYNC_SYNC_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);

        snprintf(res, sizeof(res),
                 "{\"id\":\"%s\",\"object\":\"Tracker\",\"status\":\"in_transit\","
                 "\"updated_at\":\"2025-05-02T09:00:00Z\",\"tracking_details\":["
                 "{\"message\":\"Scanned\",\"status\":\"in_transit\","
                 "\"datetime\":\"2024-13-45T10:00:00Z\"}]}", trk);
        char *bad = make_event(evt, "tracker.updated", res);
        ck_assert_int_eq(post_event(d.port, bad, strlen(bad), resp, sizeof(resp)), 200);
        if (strcmp(projection, "inline") == 0) {
                /* stored raw as a dead letter, with the fetch queued in the same commit */
                ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1 "
                                            "AND status = 'failed' AND body_error = 'not parsed: dead letter'",
                                         evt), 1);
                ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'tracker' "
                                            "AND object_id = $1", trk), 1);
        } else {
                snprintf(q, sizeof(q), "SELECT count(*) FROM webhook_events WHERE event_id = '%s'"
                                       " AND status = 'failed'", evt);
                ck_assert_int_eq(db_wait_long(c, q, 1, 30000), 1);
        }
        snprintf(q, sizeof(q), "SELECT count(*) FROM trackers WHERE easypost_id = '%s' AND status = 'delivered'",
                 trk);
        ck_assert_int_eq(db_wait_long(c, q, 1, 30000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = "
                                    "e.tracker_id WHERE t.easypost_id = $1", trk), 2);
        snprintf(q, sizeof(q), "SELECT count(*) FROM sync_jobs WHERE kind = 'tracker' AND object_id = '%s'"
                               " AND status = 'done'", trk);
        ck_assert_int_eq(db_wait_long(c, q, 1, 30000), 1);
        free(bad);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        fake_stop(&fk);
        PQfinish(c);
}

START_TEST(test_dead_letter_tracker_event_fetches_the_tracker)
{
        dead_letter_fetches_the_tracker("inline", 1);
}
END_TEST

START_TEST(test_deferred_failed_tracker_event_fetches_the_tracker)
{
        dead_letter_fetches_the_tracker("deferred", 2);
}
END_TEST

/*
 * Basic auth on top of the signature: only the exact header passes; a wrong
 * user, a wrong password, a header one byte shorter or longer, another
 * scheme and none at all get 401 and store nothing. (The comparison is of
 * fixed-length digests, so its time depends on neither length nor prefix.)
 */
START_TEST(test_basic_auth_exact_header_only)
{
        const char *env[] = { "EASYPOST_SYNC_BASIC_AUTH_USER=hook",
                              "EASYPOST_SYNC_BASIC_AUTH_PASSWORD=pw-for-tests", NULL };
        static const char *const wrong[] = {
                "Authorization: Basic aG9vYzpwdy1mb3ItdGVzdHM=",     /* hooc:pw-for-tests */
                "Authorization: Basic aG9va3g6cHctZm9yLXRlc3Rz",     /* hookx:pw-for-tests */
                "Authorization: Basic aG9vazpwdy1mb3ItdGVzdA==",     /* hook:pw-for-test */
                "Authorization: Basic aG9vazpwdy1mb3ItdGVzdHNY",     /* hook:pw-for-testsX */
                "Authorization: Basic aG9vazpwdy1mb3ItdGVzdHM",      /* one byte short */
                "Authorization: Basic aG9vazpwdy1mb3ItdGVzdHM==",    /* one byte long */
                "Authorization: Bearer aG9vazpwdy1mb3ItdGVzdHM=",
                "Authorization: ",
                NULL,                                                /* no header */
        };
        struct daemon d;
        PGconn *c = db_open();
        char *body = make_event("evt_auth_1", "tracker.updated", NULL), sig[81], sighdr[120];

        db_exec(c, "DELETE FROM webhook_events WHERE event_id = 'evt_auth_1'");
        db_exec(c, "DELETE FROM webhook_event_ids WHERE event_id = 'evt_auth_1'");
        ck_assert_int_eq(daemon_start(&d, env), 0);
        sign_body(ITEST_SECRET, body, strlen(body), sig);
        snprintf(sighdr, sizeof(sighdr), "X-Hmac-Signature: %s", sig);
        for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
                const char *h[] = { "Content-Type: application/json", sighdr, wrong[i], NULL };
                ck_assert_msg(http_req(d.port, "POST", "/webhooks/easypost", h, body, strlen(body),
                                       NULL, 0) == 401, "%s: not 401", wrong[i] ? wrong[i] : "none");
        }
        ck_assert_int_eq(rows_for(c, "evt_auth_1"), 0);
        ck_assert_int_eq((long)daemon_metric(d.port, "easypost_sync_webhooks_rejected_total{reason=\"auth\"}"),
                         (long)(sizeof(wrong) / sizeof(wrong[0])));
        const char *right[] = { "Content-Type: application/json", sighdr,
                                "Authorization: Basic aG9vazpwdy1mb3ItdGVzdHM=", NULL };
        ck_assert_int_eq(http_req(d.port, "POST", "/webhooks/easypost", right, body, strlen(body), NULL, 0),
                         200);
        ck_assert_int_eq(rows_for(c, "evt_auth_1"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(body);
        PQfinish(c);
}
END_TEST

/*
 * Sends the n bodies from a child process (post_many, n at once) and writes
 * their statuses to fd, so the parent can hold the database meanwhile.
 */
static pid_t
post_many_in_child(unsigned port, char **bodies, const size_t *lens, int n, int *st, int fd)
{
        pid_t pid = fork();

        if (pid != 0)
                return pid;
        post_many(port, bodies, lens, (size_t)n, (unsigned)n, st);
        size_t want = (size_t)n * sizeof(*st);
        _exit(write(fd, st, want) == (ssize_t)want ? 0 : 2);
}

/*
 * A batch is bounded by the bytes of its bodies too (batch_max_bytes), not
 * only by its number of events: big bodies that wait together go in several
 * batches, one larger than the bound goes alone, and all are stored and
 * answered 200.
 */
START_TEST(test_batches_bounded_by_bytes)
{
        enum { N = 7, BIG = 100 * 1024 };
        const char *env[] = { "EASYPOST_SYNC_BATCH_MAX_BYTES=262144", "EASYPOST_SYNC_DB_CONNECTIONS=1",
                              "EASYPOST_SYNC_REQUEST_TIMEOUT=120", "EASYPOST_SYNC_DB_TIMEOUT=120",
                              NULL };
        PGconn *c = db_open();
        struct daemon d;
        char *bodies[N], id[32];
        size_t lens[N];
        int st[N], fds[2], status = -1;

        db_exec(c, "DELETE FROM webhook_events WHERE event_id LIKE 'evt_bytes_%'");
        db_exec(c, "DELETE FROM webhook_event_ids WHERE event_id LIKE 'evt_bytes_%'");
        for (int i = 0; i < N; i++) {
                /* six of 100 KiB, one of 300 KiB: more than the bound alone */
                size_t pad = i == N - 1 ? 3 * BIG : BIG;
                char *result = xmalloc(pad + 128);
                int k = snprintf(result, pad + 128, "{\"id\":\"batch_bytes_%d\",\"object\":\"Batch\","
                                                    "\"reference\":\"", i);
                memset(result + k, 'x', pad);
                strcpy(result + k + pad, "\"}");
                snprintf(id, sizeof(id), "evt_bytes_%d", i);
                bodies[i] = make_event(id, "batch.updated", result);
                lens[i] = strlen(bodies[i]);
                free(result);
        }
        ck_assert_int_eq(daemon_start(&d, env), 0);
        /* every batch's first insert waits on this lock until all N wait */
        PGconn *lock = db_open();
        db_exec(lock, "BEGIN");
        db_exec(lock, "LOCK TABLE webhook_event_ids IN SHARE MODE");
        ck_assert_int_eq(pipe(fds), 0);
        pid_t poster = post_many_in_child(d.port, bodies, lens, N, st, fds[1]);
        ck_assert_int_gt(poster, 0);
        ck_assert_int_ge(daemon_metric_wait(d.port, "easypost_sync_queue_depth", N, 60000), N);
        db_exec(lock, "COMMIT");
        PQfinish(lock);
        size_t got = 0;
        while (got < sizeof(st)) {
                ssize_t r = read(fds[0], (char *)st + got, sizeof(st) - got);
                ck_assert_int_gt(r, 0);
                got += (size_t)r;
        }
        ck_assert_int_eq(waitpid(poster, &status, 0), poster);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "poster: status %d", status);
        for (int i = 0; i < N; i++) {
                snprintf(id, sizeof(id), "evt_bytes_%d", i);
                ck_assert_msg(st[i] == 200, "%s: %d", id, st[i]);
                ck_assert_int_eq(rows_for(c, id), 1);
        }
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_bytes_%' "
                                    "AND length(raw) > 102400", NULL), N);
        /* rows committed together share their xmin: no transaction of more than one of
         * them holds more than the bound, so the 900 KiB took at least four */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM (SELECT xmin::text FROM webhook_events "
                                    "WHERE event_id LIKE 'evt_bytes_%' GROUP BY 1 "
                                    "HAVING count(*) > 1 AND sum(length(raw)) > 262144) t", NULL), 0);
        ck_assert_int_ge(db_long(c, "SELECT count(DISTINCT xmin::text) FROM webhook_events "
                                    "WHERE event_id LIKE 'evt_bytes_%'", NULL), 4);
        /* and the metrics say so (this daemon stored nothing else) */
        double cuts = daemon_metric(d.port, "easypost_sync_batch_byte_limited_total");
        double batches = daemon_metric(d.port, "easypost_sync_batches_total");
        ck_assert_msg(cuts >= 2, "%.0f batches closed by bytes", cuts);
        ck_assert_msg(batches >= 4, "%.0f batches", batches);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        close(fds[0]);
        close(fds[1]);
        for (int i = 0; i < N; i++)
                free(bodies[i]);
        PQfinish(c);
}
END_TEST

/* A tracker event the daemon typed is projected from its typed snapshot:
 * PostgreSQL does not parse its body at all (here a body that is no JSON,
 * which ::jsonb would refuse), and the raw text is stored as sent. */
START_TEST(test_typed_tracker_event_is_not_parsed)
{
        PGconn *c = db_open();
        char *out = db_text(c,
                "SELECT string_agg(ord || ':' || status, ',') FROM eps_ingest_batch("
                " ARRAY[eps_uuid7()], ARRAY['evt_typed_np'], ARRAY['tracker.updated'], ARRAY['test'],"
                " ARRAY['trk_typed_np'], ARRAY[$1::text], ARRAY['webhook'], ARRAY['2025-01-02T03:04:05Z'],"
                " NULL, NULL, NULL, false,"
                " t_shp => ARRAY['shp_typed_np'], t_mode => ARRAY['test'], t_code => ARRAY['EZNP'],"
                " t_carrier => ARRAY['USPS'], t_status => ARRAY['in_transit'], t_status_detail => ARRAY[NULL::text],"
                " t_est => ARRAY[NULL::text], t_signed => ARRAY[NULL::text], t_url => ARRAY[NULL::text],"
                " t_cdetail => ARRAY['{\"a\":1}'::jsonb], t_created => ARRAY['2025-01-01T00:00:00Z'],"
                " t_updated => ARRAY['2025-01-02T00:00:00Z'], t_ev_updated => ARRAY[NULL::text],"
                " t_ev_created => ARRAY['2025-01-02T03:04:05Z'], t_details => ARRAY[2],"
                " d_key => ARRAY[1, 1], d_pos => ARRAY[1, 2], d_status => ARRAY['pre_transit', 'in_transit'],"
                " d_status_detail => ARRAY[NULL, NULL]::text[], d_message => ARRAY['one', 'two'],"
                " d_description => ARRAY[NULL, NULL]::text[], d_carrier_code => ARRAY[NULL, NULL]::text[],"
                " d_source => ARRAY['USPS', 'USPS'], d_datetime => ARRAY['2025-01-01T01:00:00Z', '2025-01-01T02:00:00Z'],"
                " d_location => ARRAY['{\"city\":\"X\"}'::jsonb, NULL])",
                "this is not JSON");
        ck_assert_str_eq(out, "1:projected");
        free(out);
        out = db_text(c, "SELECT concat_ws('|', status, tracking_code, shipment_easypost_id, details_count,"
                         " carrier_detail, newest_detail_at AT TIME ZONE 'UTC') FROM trackers"
                         " WHERE easypost_id = 'trk_typed_np'", NULL);
        ck_assert_str_eq(out, "in_transit|EZNP|shp_typed_np|2|{\"a\": 1}|2025-01-01 02:00:00");
        free(out);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                                    " WHERE t.easypost_id = 'trk_typed_np' AND (e.tracking_location IS NOT NULL)"
                                    " = (e.message = 'one')", NULL), 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_typed_np'"
                                    " AND raw = $1 AND status = 'projected'", "this is not JSON"), 1);
        /* the daemon never stores such a body: the JSON view must stay readable */
        db_exec(c, "DELETE FROM webhook_events WHERE event_id = 'evt_typed_np'");
        PQfinish(c);
}
END_TEST

/* One typed tracker event, batch statement text: tracking locations as JSON
 * text (d_location_text), as the daemon sends them. */
#define TYPED_LOC_BATCH(EVT, DETAILS, POS, MSGS, TIMES, LOCS)                                            \
        "SELECT string_agg(ord || ':' || status, ',') FROM eps_ingest_batch("                              \
        " ARRAY[eps_uuid7()], ARRAY['" EVT "'], ARRAY['tracker.updated'], ARRAY['test'],"                    \
        " ARRAY['trk_typed_loc'], ARRAY['{}'], ARRAY['webhook'], ARRAY['2025-01-02T03:04:05Z'],"           \
        " NULL, NULL, NULL, false, t_shp => ARRAY[NULL::text], t_mode => ARRAY['test'],"                    \
        " t_code => ARRAY['EZLOC'], t_carrier => ARRAY['USPS'], t_status => ARRAY['in_transit'],"          \
        " t_status_detail => ARRAY[NULL::text], t_est => ARRAY[NULL::text], t_signed => ARRAY[NULL::text]," \
        " t_url => ARRAY[NULL::text], t_cdetail => ARRAY[NULL::jsonb], t_created => ARRAY[NULL::text],"     \
        " t_updated => ARRAY[NULL::text], t_ev_updated => ARRAY[NULL::text],"                              \
        " t_ev_created => ARRAY['2025-01-02T03:04:05Z'], t_details => ARRAY[" DETAILS "],"                  \
        " d_key => array_fill(1, ARRAY[" DETAILS "]), d_pos => ARRAY[" POS "],"                             \
        " d_status => array_fill('in_transit'::text, ARRAY[" DETAILS "]),"                                  \
        " d_status_detail => array_fill(NULL::text, ARRAY[" DETAILS "]), d_message => ARRAY[" MSGS "],"     \
        " d_description => array_fill(NULL::text, ARRAY[" DETAILS "]),"                                    \
        " d_carrier_code => array_fill(NULL::text, ARRAY[" DETAILS "]),"                                   \
        " d_source => array_fill(NULL::text, ARRAY[" DETAILS "]), d_datetime => ARRAY[" TIMES "],"          \
        " d_location_text => ARRAY[" LOCS "]::text[])"

/* An update repeats the tracker's whole history, and the daemon sends every
 * detail's tracking_location as JSON text: PostgreSQL parses only those of
 * the details it writes. Here the known detail's location is no JSON at all,
 * so parsing it would break the batch. And where one call holds typed
 * snapshots and jsonb ones (a full copy replacing a partial one in a typed
 * batch), each detail keeps its own location. */
START_TEST(test_typed_locations_parsed_only_when_written)
{
        PGconn *c = db_open();
        char *out = db_text(c, TYPED_LOC_BATCH("evt_typed_loc1", "1", "1", "'one'", "'2025-01-01T01:00:00Z'",
                                               "'{\"city\":\"A\"}'"), NULL);
        ck_assert_str_eq(out, "1:projected");
        free(out);
        out = db_text(c, TYPED_LOC_BATCH("evt_typed_loc2", "3", "1, 2, 3", "'one', 'two', 'three'",
                                         "'2025-01-01T01:00:00Z', '2025-01-01T02:00:00Z', '2025-01-01T03:00:00Z'",
                                         "'not JSON', NULL, '{\"city\":\"B\"}'"), NULL);
        ck_assert_str_eq(out, "1:projected");
        free(out);
        out = db_text(c, "SELECT string_agg(e.message || '=' || coalesce(e.tracking_location ->> 'city', '-'), ','"
                         " ORDER BY e.event_datetime) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                         " WHERE t.easypost_id = 'trk_typed_loc'", NULL);
        ck_assert_str_eq(out, "one=A,two=-,three=B");
        free(out);

        /* typed key 1 and a jsonb snapshot (key 2) in one projection */
        db_exec(c, "SELECT eps_project_trackers(ARRAY[1], ARRAY[NULL::uuid], ARRAY['trk_typed_mix1'],"
                   " ARRAY[NULL::text], ARRAY['test'], ARRAY['EZMIX'], ARRAY['USPS'], ARRAY['in_transit'],"
                   " ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::text],"
                   " ARRAY[NULL::jsonb], ARRAY[NULL::text], ARRAY['2025-01-03T00:00:00Z'], ARRAY[NULL::text],"
                   " ARRAY[NULL::text], ARRAY[2], ARRAY[1, 1], ARRAY[1, 2], ARRAY['in_transit', 'in_transit'],"
                   " ARRAY[NULL, NULL]::text[], ARRAY['t1', 't2'], ARRAY[NULL, NULL]::text[],"
                   " ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[],"
                   " ARRAY['2025-01-03T01:00:00Z', '2025-01-03T02:00:00Z'], NULL,"
                   " ARRAY['{\"city\":\"T1\"}', '{\"city\":\"T2\"}'], ARRAY[2], ARRAY[NULL::uuid],"
                   " ARRAY['{\"result\":{\"id\":\"trk_typed_mix2\",\"tracking_details\":[{\"message\":\"j1\","
                   "\"datetime\":\"2025-01-03T01:00:00Z\",\"tracking_location\":{\"city\":\"J1\"}}]}}'::jsonb])");
        out = db_text(c, "SELECT string_agg(e.message || '=' || coalesce(e.tracking_location ->> 'city', '-'), ','"
                         " ORDER BY e.message) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                         " WHERE t.easypost_id LIKE 'trk\\_typed\\_mix_'", NULL);
        ck_assert_str_eq(out, "j1=J1,t1=T1,t2=T2");
        free(out);
        PQfinish(c);
}
END_TEST

Suite *
ingest_suite(void)
{
        Suite *s = suite_create("ingest");
        TCase *tc = tcase_create("webhook");
        TCase *out = tcase_create("outage");
        TCase *race = tcase_create("delivery");

        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, up, down);
        tcase_add_test(tc, test_fixtures_stored_byte_exact);
        tcase_add_test(tc, test_official_signature_end_to_end);
        tcase_add_test(tc, test_error_statuses_store_nothing);
        tcase_add_test(tc, test_same_event_20_concurrently);
        tcase_add_test(tc, test_2000_events_32_clients);
        suite_add_tcase(s, tc);

        tcase_set_timeout(out, 120);
        tcase_add_unchecked_fixture(out, up, down);
        tcase_add_test(out, test_db_outage_and_recovery);
        tcase_add_test(out, test_db_down_at_start);
        suite_add_tcase(s, out);

        tcase_set_timeout(race, 120);
        tcase_add_test(race, test_delivery_racing_the_partial_copy_replaces_it);
        tcase_add_test(race, test_deferred_full_copy_requeues_after_a_projector_holding_its_key);
        tcase_add_test(race, test_deferred_projector_skips_a_key_a_full_copy_holds);
        tcase_add_test(race, test_duplicate_probes_the_index);
        tcase_add_test(race, test_dead_letter_tracker_event_fetches_the_tracker);
        tcase_add_test(race, test_deferred_failed_tracker_event_fetches_the_tracker);
        tcase_add_test(race, test_basic_auth_exact_header_only);
        tcase_add_test(race, test_batches_bounded_by_bytes);
        tcase_add_test(race, test_typed_tracker_event_is_not_parsed);
        tcase_add_test(race, test_typed_locations_parsed_only_when_written);
        suite_add_tcase(s, race);
        return s;
}
