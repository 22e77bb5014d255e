/*
 * check_contention.c - the batch writer under contention and faults:
 * hot trackers from many connections (no deadlock, newest snapshot wins),
 * newer-wins ties broken by the snapshot, an error one event causes kept
 * from its batch neighbours, an error nobody's answering the batch 503.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
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
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, sync_jobs CASCADE");
}

/*
 * A tracker.updated snapshot as EasyPost sends it: the whole history so far
 * (n details, one minute apart from 2025-01-01T00:00Z, the last one with
 * last_status), the tracker's updated_at, its shipment shp_<trk suffix>.
 */
static char *
snapshot(const char *evid, const char *trk, const char *status, const char *updated, int n)
{
        json_t *details = json_array();
        for (int i = 0; i < n; i++) {
                char dt[40], msg[64];
                snprintf(dt, sizeof(dt), "2025-01-%02dT%02d:%02d:00Z", 1 + i / 1440 % 28, i / 60 % 24,
                         i % 60);
                snprintf(msg, sizeof(msg), "scan %d", i);
                json_array_append_new(details,
                                      json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s}}", "object", "TrackingDetail",
                                                "message", msg, "status",
                                                i == n - 1 ? status : "in_transit", "datetime", dt,
                                                "tracking_location", "city", "CHICAGO", "state", "IL"));
        }
        char shp[64];
        snprintf(shp, sizeof(shp), "shp_%s", trk + 4);
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}}", "id", evid,
                               "object", "Event", "description", "tracker.updated", "mode", "test",
                               "created_at", updated, "result", "id", trk, "object", "Tracker",
                               "tracking_code", "EZ42", "carrier", "USPS", "status", status,
                               "updated_at", updated, "shipment_id", shp, "tracking_details", details);
        char *s = json_dumps(ev, JSON_COMPACT);
        json_decref(ev);
        return s;
}

/*
 * 30 trackers advancing in turn, every delivery the whole history plus one
 * detail, sent from 64 connections, a tenth of them delivered twice: no
 * deadlock, no 503, every tracker at its newest snapshot, each detail once.
 */
#define HOT_TRACKERS 30
#define HOT_ROUNDS 20
START_TEST(test_hot_trackers_no_deadlock)
{
        enum { N = HOT_TRACKERS * HOT_ROUNDS, EXTRA = N / 10 };
        PGconn *c = db_open();
        char **bodies = xcalloc(N + EXTRA, sizeof(*bodies));
        size_t *lens = xcalloc(N + EXTRA, sizeof(*lens));
        int *st = xcalloc(N + EXTRA, sizeof(*st));
        size_t n = 0;

        wipe(c);
        long dl0 = db_long(c, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                           NULL);
        for (int r = 0; r < HOT_ROUNDS; r++)
                for (int k = 0; k < HOT_TRACKERS; k++) {
                        char evid[48], trk[48], upd[40];
                        snprintf(evid, sizeof(evid), "evt_hot_%02d_%02d", k, r);
                        snprintf(trk, sizeof(trk), "trk_hot%02d", k);
                        snprintf(upd, sizeof(upd), "2025-01-01T00:%02d:00Z", r);
                        bodies[n] = snapshot(evid, trk, r == HOT_ROUNDS - 1 ? "delivered" : "in_transit",
                                             upd, r + 1);
                        lens[n] = strlen(bodies[n]);
                        n++;
                        if (n % 10 == 0 && n / 10 <= EXTRA) { /* a redelivery, a little later */
                                bodies[N + n / 10 - 1] = xstrdup(bodies[n - 5]);
                                lens[N + n / 10 - 1] = lens[n - 5];
                        }
                }
        /* interleave the redeliveries with the stream */
        for (size_t i = 0; i < EXTRA; i++) {
                size_t j = 20 + i * 10 + 3, m = N + i;
                char *b = bodies[m];
                size_t l = lens[m];
                memmove(bodies + j + 1, bodies + j, (m - j) * sizeof(*bodies));
                memmove(lens + j + 1, lens + j, (m - j) * sizeof(*lens));
                bodies[j] = b;
                lens[j] = l;
        }
        /* more connections than the default 2: more batches meet in PostgreSQL */
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_DB_CONNECTIONS=8", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        post_many(d.port, bodies, lens, N + EXTRA, 64, st);
        int non200 = 0;
        for (size_t i = 0; i < N + EXTRA; i++)
                non200 += st[i] != 200;
        ck_assert_int_eq(non200, 0);
        long dl = db_long(c, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                          NULL) - dl0;
        ck_assert_int_eq(dl, 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL),
                         N);
        char sql[200];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM trackers WHERE status = 'delivered' "
                                   "AND details_count = %d", HOT_ROUNDS);
        ck_assert_int_eq(db_long(c, sql, NULL), HOT_TRACKERS);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE status = 'delivered'", NULL),
                         HOT_TRACKERS);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs", NULL), HOT_TRACKERS);
        printf("hot trackers: %d deliveries (+%d repeated) from 64 connections, %ld deadlocks, "
               "%.0f batch retries\n", N, EXTRA, dl, daemon_metric(d.port, "easypost_sync_batch_retries_total"));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        for (size_t i = 0; i < N + EXTRA; i++)
                free(bodies[i]);
        free(bodies);
        free(lens);
        free(st);
        PQfinish(c);
}
END_TEST

/*
 * Newer wins by the snapshot: EasyPost sends two snapshots of a tracker with
 * the same updated_at (unknown with no detail, then pre_transit with two).
 * Whatever the arrival order, the one with the newer detail stays; a full
 * tie keeps what is stored. The shipment's status follows the same rule.
 */
START_TEST(test_same_updated_at_tie_broken_by_snapshot)
{
        PGconn *c = db_open();
        const char *at = "2025-01-01T00:05:00Z";
        char *empty1 = snapshot("evt_tie_a1", "trk_tie1", "unknown", at, 0);
        char *full1 = snapshot("evt_tie_b1", "trk_tie1", "pre_transit", at, 2);
        char *twin1 = snapshot("evt_tie_c1", "trk_tie1", "in_transit", at, 2); /* full tie */
        char *empty2 = snapshot("evt_tie_a2", "trk_tie2", "unknown", at, 0);
        char *full2 = snapshot("evt_tie_b2", "trk_tie2", "pre_transit", at, 2);

        wipe(c);
        /* newer snapshot first, the older one retried after it */
        ck_assert_int_eq(post_event(dm.port, full1, strlen(full1), NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, empty1, strlen(empty1), NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, twin1, strlen(twin1), NULL, 0), 200);
        /* and in arrival order */
        ck_assert_int_eq(post_event(dm.port, empty2, strlen(empty2), NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, full2, strlen(full2), NULL, 0), 200);

        char *s = db_text(c, "SELECT t.status || '/' || s.status || '/' || w.event_id FROM trackers t "
                         "JOIN shipments s ON s.easypost_id = t.shipment_easypost_id "
                         "JOIN webhook_events w ON w.id = t.last_webhook_event_id "
                         "WHERE t.easypost_id = $1", "trk_tie1");
        ck_assert_str_eq(s, "pre_transit/pre_transit/evt_tie_b1");
        free(s);
        s = db_text(c, "SELECT t.status || '/' || s.status FROM trackers t "
                   "JOIN shipments s ON s.easypost_id = t.shipment_easypost_id WHERE t.easypost_id = $1",
                "trk_tie2");
        ck_assert_str_eq(s, "pre_transit/pre_transit");
        free(s);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), 4);
        free(empty1);
        free(full1);
        free(twin1);
        free(empty2);
        free(full2);
        PQfinish(c);
}
END_TEST

/* post_many in a child process; statuses in memory shared with the parent. */
static pid_t
post_async(char **bodies, const size_t *lens, size_t n, int *shared_st)
{
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                post_many(dm.port, bodies, lens, n, (unsigned)n, shared_st);
                _exit(0);
        }
        return pid;
}

static void
wait_metric(const char *name, double want)
{
        for (int i = 0; i < 1000; i++) {
                if (daemon_metric(dm.port, name) >= want)
                        return;
                usleep(10000);
        }
        ck_abort_msg("%s never reached %.0f", name, want);
}

/*
 * Sends bodies so that they reach PostgreSQL as one batch: a lock holds the
 * daemon's connections on two plug events while the bodies queue up behind
 * them; releasing it lets the queue go as one transaction.
 */
static void
send_as_one_batch(PGconn *c, char **bodies, const size_t *lens, size_t n, int *st, const char *tag)
{
        int *shared = mmap(NULL, (n + 2) * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                           -1, 0);
        ck_assert_ptr_ne(shared, MAP_FAILED);
        char *plug[2];
        size_t plen[2];
        for (int i = 0; i < 2; i++) {
                char id[64];
                snprintf(id, sizeof(id), "evt_plug_%s_%d", tag, i);
                plug[i] = make_event(id, "batch.updated", "{\"id\":\"batch_plug\",\"object\":\"Batch\"}");
                plen[i] = strlen(plug[i]);
        }
        double q0 = daemon_metric(dm.port, "easypost_sync_queue_depth");
        db_exec(c, "BEGIN");
        db_exec(c, "LOCK TABLE webhook_events IN EXCLUSIVE MODE");
        /* one plug per connection, so that both are held */
        pid_t p0 = post_async(plug, plen, 1, shared);
        wait_metric("easypost_sync_db_connections{state=\"busy\"}", 1);
        pid_t p1 = post_async(plug + 1, plen + 1, 1, shared + 1);
        wait_metric("easypost_sync_db_connections{state=\"busy\"}", 2);
        pid_t p2 = post_async(bodies, lens, n, shared + 2);
        wait_metric("easypost_sync_queue_depth", q0 + 2 + (double)n);
        db_exec(c, "COMMIT");
        int ws;
        ck_assert_int_eq(waitpid(p0, &ws, 0), p0);
        ck_assert_int_eq(waitpid(p1, &ws, 0), p1);
        ck_assert_int_eq(waitpid(p2, &ws, 0), p2);
        ck_assert_int_eq(shared[0], 200);
        ck_assert_int_eq(shared[1], 200);
        memcpy(st, shared + 2, n * sizeof(int));
        munmap(shared, (n + 2) * sizeof(int));
        free(plug[0]);
        free(plug[1]);
}

/*
 * An error that one event causes (here a data exception, 22023, raised by a
 * trigger for that event) fails its batch; the batch goes again one event
 * at a time: the neighbours commit, the event is stored raw as 'failed'.
 * Errors that are nobody's answer the whole batch 503: disk full, and a
 * statement timeout (57014: a batch that waited on a lock is no event's
 * fault; stored as a dead letter, its redelivery would be a duplicate).
 */
START_TEST(test_event_error_isolated_other_error_503)
{
        enum { N = 20 };
        PGconn *c = db_open();
        char *bodies[N];
        size_t lens[N];
        int st[N];

        wipe(c);
        db_exec(c, "CREATE OR REPLACE FUNCTION test_fail_on() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN "
                   "IF NEW.event_id = 'evt_iso_bad' AND NEW.status <> 'failed' THEN "
                   "RAISE EXCEPTION 'a value this event holds is refused' USING ERRCODE = 'invalid_parameter_value'; "
                   "END IF; "
                   "IF NEW.event_id LIKE 'evt_slow_%' THEN "
                   "RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled'; "
                   "END IF; "
                   "IF NEW.event_id LIKE 'evt_disk_%' THEN "
                   "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; "
                   "END IF; RETURN NEW; END $$");
        db_exec(c, "CREATE TRIGGER test_fail BEFORE INSERT ON webhook_events "
                   "FOR EACH ROW EXECUTE FUNCTION test_fail_on()");

        for (int i = 0; i < N; i++) {
                char evid[32], trk[32];
                snprintf(evid, sizeof(evid), i == 7 ? "evt_iso_bad" : "evt_iso_%02d", i);
                snprintf(trk, sizeof(trk), "trk_iso%02d", i);
                bodies[i] = snapshot(evid, trk, "in_transit", "2025-01-01T00:03:00Z", 3);
                lens[i] = strlen(bodies[i]);
        }
        double iso0 = daemon_metric(dm.port, "easypost_sync_batch_isolations_total");
        send_as_one_batch(c, bodies, lens, N, st, "iso");
        for (int i = 0; i < N; i++)
                ck_assert_msg(st[i] == 200, "event %d: %d", i, st[i]);
        ck_assert_double_ge(daemon_metric(dm.port, "easypost_sync_batch_isolations_total"), iso0 + 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_iso_%' "
                                    "AND status = 'projected'", NULL), N - 1);
        char *s = db_text(c, "SELECT status || ' ' || left(error, 5) FROM webhook_events WHERE event_id = $1",
                      "evt_iso_bad");
        ck_assert_str_eq(s, "failed 22023");
        free(s);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id LIKE 'trk_iso%'", NULL),
                         N - 1);

        /* nobody's error: the whole batch is answered 503 and nothing of it is stored */
        for (int round = 0; round < 2; round++) {
                const char *bad = round == 0 ? "evt_disk_%02d" : "evt_slow_%02d";
                for (int i = 0; i < N; i++) {
                        free(bodies[i]);
                        char evid[32], trk[32];
                        snprintf(evid, sizeof(evid), i == 3 ? bad : "evt_near_%02d", i);
                        snprintf(trk, sizeof(trk), "trk_near%02d", i);
                        bodies[i] = snapshot(evid, trk, "in_transit", "2025-01-01T00:03:00Z", 2);
                        lens[i] = strlen(bodies[i]);
                }
                send_as_one_batch(c, bodies, lens, N, st, round == 0 ? "disk" : "slow");
                for (int i = 0; i < N; i++)
                        ck_assert_msg(st[i] == 503, "%s, event %d: %d", bad, i, st[i]);
                ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_near_%' "
                                            "OR event_id LIKE 'evt_disk_%' OR event_id LIKE 'evt_slow_%'",
                                         NULL), 0);
        }
        db_exec(c, "DROP TRIGGER test_fail ON webhook_events");
        db_exec(c, "DROP FUNCTION test_fail_on()");
        /* EasyPost's retry then succeeds */
        post_many(dm.port, bodies, lens, N, 8, st);
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(st[i], 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_near_%' "
                                    "OR event_id LIKE 'evt_slow_%'", NULL), N);
        for (int i = 0; i < N; i++)
                free(bodies[i]);
        PQfinish(c);
}
END_TEST

Suite *
contention_suite(void)
{
        Suite *s = suite_create("contention");
        TCase *tc = tcase_create("contention");

        tcase_set_timeout(tc, 180);
        tcase_add_unchecked_fixture(tc, up, down);
        tcase_add_test(tc, test_hot_trackers_no_deadlock);
        tcase_add_test(tc, test_same_updated_at_tie_broken_by_snapshot);
        tcase_add_test(tc, test_event_error_isolated_other_error_503);
        suite_add_tcase(s, tc);
        return s;
}
