/*
 * check_reproject.c - easypost-syncd --reproject: events posted signed to the
 * real daemon, the tables damaged (history rows deleted, statuses changed, a
 * tracker and a shipment row deleted, a tracker moved "ahead"), --reproject,
 * then every projected row compared (natural columns, no surrogate keys or
 * write times) with a fresh database of the same cluster that ingested the
 * same events; a run killed with SIGKILL in the middle resumes where it
 * stopped, and webhooks are answered 200 while it runs; a tracker the
 * projection refuses is isolated; the other events rebuild the typed tables.
 */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

/* The natural columns of every projected table, one md5 per database.
 * Surrogate keys are replaced by what they point at (EasyPost ids, event ids). */
#define ROWS_SQL                                                                                  \
        " SELECT 'T' || ROW(t.easypost_id, t.tracking_code, t.carrier, t.mode, t.status, t.status_detail," \
        "  t.est_delivery_date, t.signed_by, t.public_url, t.shipment_easypost_id, s.easypost_id," \
        "  t.carrier_detail, t.ep_created_at, t.ep_updated_at, t.newest_detail_at, t.details_count," \
        "  w.event_id)::text AS x" \
        " FROM trackers t LEFT JOIN shipments s ON s.id = t.shipment_id" \
        " LEFT JOIN webhook_events w ON w.id = t.last_webhook_event_id" \
        " UNION ALL" \
        " SELECT 'S' || ROW(s.easypost_id, s.mode, s.status, s.tracking_code, s.reference, s.carrier," \
        "  s.service, s.status_at, s.status_detail_at, s.status_details, s.synced_at IS NULL)::text" \
        " FROM shipments s" \
        " UNION ALL" \
        " SELECT 'H' || ROW(t.easypost_id, s.easypost_id, w.event_id, e.status, e.status_detail, e.message," \
        "  e.description, e.carrier_code, e.source, e.event_datetime, e.tracking_location)::text" \
        " FROM shipment_events e LEFT JOIN trackers t ON t.id = e.tracker_id" \
        " LEFT JOIN shipments s ON s.id = e.shipment_id" \
        " LEFT JOIN webhook_events w ON w.id = e.webhook_event_id" \
        " UNION ALL" \
        " SELECT 'W' || ROW(event_id, description, status, error)::text FROM webhook_events" \
        " UNION ALL" \
        " SELECT DISTINCT 'J' || ROW(kind, object_id)::text FROM sync_jobs WHERE kind = 'shipment'"
static const char COMPARE_SQL[] = "SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM (" ROWS_SQL ") y";

static char fresh_url[1024];
static char fresh_name[64];

static void
reset(PGconn *c)
{
        db_exec(c, "DROP TRIGGER IF EXISTS eps_test_refuse ON trackers");
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, sync_jobs, sync_state"
                   " CASCADE");
}

/* A tracker.created/updated event of tracker n at step k (1..3): k details, a
 * fixed time per step, delivered at step 3 for even n. Caller frees. */
static char *
tracker_event(const char *evt, int n, int k, const char *prefix)
{
        size_t len;
        char *raw = fixture_read("tracker_retrieve.json", &len);
        char id[64], shp[64], code[64], ts[32];

        ck_assert_ptr_nonnull(raw);
        json_t *t = json_loadb(raw, len, 0, NULL);
        free(raw);
        ck_assert_ptr_nonnull(t);
        snprintf(id, sizeof(id), "trk_%s%04d", prefix, n);
        snprintf(shp, sizeof(shp), "shp_%s%04d", prefix, n);
        snprintf(code, sizeof(code), "9400%s%04d", prefix, n);
        json_t *d0 = json_deep_copy(json_array_get(json_object_get(t, "tracking_details"), 0));
        json_t *details = json_array();
        const char *last = k == 3 && n % 2 == 0 ? "delivered" : k == 1 ? "pre_transit" : "in_transit";
        for (int i = 0; i < k; i++) {
                json_t *d = json_deep_copy(d0);
                snprintf(ts, sizeof(ts), "2026-11-%02dT%02d:00:00Z", 1 + i, 8 + n % 10);
                json_object_set_new(d, "datetime", json_string(ts));
                json_object_set_new(d, "status", json_string(i == k - 1 ? last : "in_transit"));
                json_object_set_new(d, "message", json_string(i == 0 ? "accepted" : i == 1 ? "moving" : last));
                json_array_append_new(details, d);
        }
        json_decref(d0);
        json_object_set_new(t, "tracking_details", details);
        json_object_set_new(t, "id", json_string(id));
        json_object_set_new(t, "tracking_code", json_string(code));
        json_object_set_new(t, "status", json_string(last));
        json_object_set_new(t, "created_at", json_string("2026-11-01T07:00:00Z"));
        snprintf(ts, sizeof(ts), "2026-11-%02dT%02d:30:00Z", k, 8 + n % 10);
        json_object_set_new(t, "updated_at", json_string(ts));
        json_object_set_new(t, "shipment_id", json_string(shp));
        char *r = json_dumps(t, JSON_COMPACT);
        json_decref(t);
        char *b = make_event(evt, k == 1 ? "tracker.created" : "tracker.updated", r);
        free(r);
        return b;
}

/* The event set: ntrk trackers, three events each, posted in an order that
 * puts some older snapshots after newer ones, plus a duplicate. */
struct evset {
        char **bodies;
        size_t n;
};

static void
evset_make(struct evset *s, int ntrk, const char *prefix)
{
        char evt[64];

        s->bodies = xcalloc((size_t)ntrk * 3 + 1, sizeof(char *));
        s->n = 0;
        for (int k = 1; k <= 3; k++)
                for (int n = 0; n < ntrk; n++) {
                        int step = n % 3 == 0 ? 4 - k : k; /* every third tracker: newest first */
                        snprintf(evt, sizeof(evt), "evt_%s%04d_%d", prefix, n, step);
                        s->bodies[s->n++] = tracker_event(evt, n, step, prefix);
                }
        s->bodies[s->n] = xstrdup(s->bodies[1]); /* a duplicate delivery */
        s->n++;
}

static void
evset_free(struct evset *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->bodies[i]);
        free(s->bodies);
}

static void
post_all(unsigned port, const struct evset *s)
{
        for (size_t i = 0; i < s->n; i++)
                ck_assert_int_eq(post_event(port, s->bodies[i], strlen(s->bodies[i]), NULL, 0), 200);
}

/* easypost-syncd with args (NULL-terminated) against database url; stderr to
 * *err (caller frees) when err is not NULL. wait false: returns the pid. */
static int
run_syncd(const char *url, const char *const *args, bool wait, char **err)
{
        char outp[ITEST_PATH];
        pid_t pid = syncd_spawn(url, NULL, args, outp, NULL);

        if (!wait)
                return pid;
        int rc = syncd_wait(pid);
        if (err)
                *err = itest_slurp(outp);
        return rc;
}

/* A new empty database beside the test one, migrated. */
static PGconn *
fresh_db(PGconn *c)
{
        char sql[200], sqldir[600];
        const char *args[] = { "--migrate", sqldir, NULL };

        snprintf(fresh_name, sizeof(fresh_name), "eps_fresh_%d", (int)getpid());
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", fresh_name);
        db_exec(c, sql);
        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", fresh_name);
        db_exec(c, sql);
        snprintf(fresh_url, sizeof(fresh_url), "%s dbname=%s", getenv("TEST_PG_CONNINFO"), fresh_name);
        snprintf(sqldir, sizeof(sqldir), "--sql_dir=%s/sql", getenv("abs_top_srcdir"));
        ck_assert_int_eq(run_syncd(fresh_url, args, true, NULL), 0);
        PGconn *f = PQconnectdb(fresh_url);
        ck_assert_msg(PQstatus(f) == CONNECTION_OK, "fresh db: %s", PQerrorMessage(f));
        return f;
}

static void
fresh_drop(PGconn *c, PGconn *f)
{
        char sql[200];

        PQfinish(f);
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", fresh_name);
        db_exec(c, sql);
}

/* The same events, in the same order, through a daemon on the fresh database. */
static void
ingest_fresh(const struct evset *const *sets, size_t nsets)
{
        char env[1100];
        const char *extra[] = { env, NULL };
        struct daemon d;

        snprintf(env, sizeof(env), "DATABASE_URL=%s", fresh_url);
        ck_assert_int_eq(daemon_start(&d, extra), 0);
        for (size_t i = 0; i < nsets; i++)
                post_all(d.port, sets[i]);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
}

static char *
digest(PGconn *c)
{
        return db_text(c, COMPARE_SQL, NULL);
}

/* On a mismatch: the rows only one side has, on stderr. */
static void
show_diff(PGconn *got, PGconn *want)
{
        PGresult *a = PQexec(got, "SELECT x FROM (" ROWS_SQL ") y ORDER BY x COLLATE \"C\"");
        PGresult *b = PQexec(want, "SELECT x FROM (" ROWS_SQL ") y ORDER BY x COLLATE \"C\"");
        int i = 0, j = 0, na = PQntuples(a), nb = PQntuples(b);

        while (i < na || j < nb) {
                int cmp = i == na ? 1 : j == nb ? -1 : strcmp(PQgetvalue(a, i, 0), PQgetvalue(b, j, 0));
                if (cmp == 0) {
                        i++, j++;
                } else if (cmp < 0) {
                        fprintf(stderr, "only after reproject: %s\n", PQgetvalue(a, i++, 0));
                } else {
                        fprintf(stderr, "only in the fresh db: %s\n", PQgetvalue(b, j++, 0));
                }
        }
        PQclear(a);
        PQclear(b);
}

/* A tracker only the API gave (no event), in both databases. */
static void
fetched_only(PGconn *c)
{
        db_exec(c, "SELECT eps_project_trackers(ARRAY[NULL::uuid], ARRAY[jsonb_build_object('result',"
                   " jsonb_build_object('id', 'trk_fetched', 'status', 'in_transit', 'tracking_code', 'F1',"
                   " 'updated_at', '2026-11-02T00:00:00Z', 'tracking_details', jsonb_build_array("
                   "  jsonb_build_object('datetime', '2026-11-01T00:00:00Z', 'status', 'in_transit',"
                   "                     'message', 'fetched')))) ])");
}

START_TEST(test_rebuild_matches_fresh)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open();
        struct evset s;
        struct daemon d;
        char *err = NULL;

        reset(c);
        evset_make(&s, 24, "a");
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        post_all(d.port, &s);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        fetched_only(c);

        PGconn *f = fresh_db(c);
        const struct evset *sets[] = { &s };
        ingest_fresh(sets, 1);
        fetched_only(f);
        char *want = digest(f), *before = digest(c);
        ck_assert_str_eq(before, want); /* the comparison itself: same events, same rows */
        free(before);

        /* damage: history deleted, statuses changed (one "newer"), a tracker
         * and a shipment row deleted, a tracker's history emptied */
        db_exec(c, "DELETE FROM shipment_events WHERE message = 'moving'");
        db_exec(c, "UPDATE trackers SET status = 'return_to_sender' WHERE easypost_id = 'trk_a0001'");
        db_exec(c, "UPDATE trackers SET status = 'delivered', ep_updated_at = '2030-01-01'"
                   " WHERE easypost_id = 'trk_a0003'");
        db_exec(c, "UPDATE shipments SET status = 'failure', status_at = '2030-01-01'"
                   " WHERE easypost_id = 'shp_a0005'");
        db_exec(c, "DELETE FROM trackers WHERE easypost_id = 'trk_a0007'");
        db_exec(c, "DELETE FROM shipments WHERE easypost_id = 'shp_a0009'");
        db_exec(c, "DELETE FROM shipment_events e USING trackers t WHERE t.id = e.tracker_id"
                   " AND t.easypost_id = 'trk_a0011'");
        db_exec(c, "UPDATE trackers SET shipment_id = NULL, details_count = 0 WHERE easypost_id = 'trk_a0013'");
        char *damaged = digest(c);
        ck_assert_str_ne(damaged, want);
        free(damaged);
        long trk11 = db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_a0011'", NULL);
        char *id11 = db_text(c, "SELECT id FROM trackers WHERE easypost_id = 'trk_a0011'", NULL);

        const char *args[] = { "--reproject", "--batch", "5", NULL };
        int rc = run_syncd(getenv("TEST_PG_CONNINFO"), args, true, &err);
        ck_assert_msg(rc == 0, "exit %d: %s", rc, err);
        ck_assert_msg(strstr(err, "reproject: done: 24 tracker(s) rebuilt from 72 event(s)") != NULL, "%s", err);
        ck_assert_msg(strstr(err, "1 tracker fetch(es) queued") != NULL, "%s", err);
        ck_assert_msg(strstr(err, "1 tracker(s) without events kept") != NULL, "%s", err);
        char *after = digest(c);
        if (strcmp(after, want) != 0)
                show_diff(c, f);
        ck_assert_str_eq(after, want);
        /* the row that stood ahead of every event: the API is asked again */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'tracker'"
                                    " AND object_id = 'trk_a0003' AND status = 'pending'", NULL), 1);
        /* a tracker row that survived keeps its id */
        ck_assert_int_eq(trk11, 1);
        char *id11b = db_text(c, "SELECT id FROM trackers WHERE easypost_id = 'trk_a0011'", NULL);
        ck_assert_str_eq(id11, id11b);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'reproject_run'", NULL), 0);

        /* a second run over intact tables changes nothing */
        free(err);
        rc = run_syncd(getenv("TEST_PG_CONNINFO"), args, true, &err);
        ck_assert_msg(rc == 0, "exit %d: %s", rc, err);
        char *again = digest(c);
        ck_assert_str_eq(again, want);

        free(again);
        free(id11);
        free(id11b);
        free(after);
        free(want);
        free(err);
        fresh_drop(c, f);
        evset_free(&s);
        PQfinish(c);
}
END_TEST

START_TEST(test_resume_after_kill_and_webhooks_answered)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open(), *lk = db_open();
        struct evset s, during;
        struct daemon d;
        char *err = NULL;
        int st;

        reset(c);
        evset_make(&s, 30, "b");
        evset_make(&during, 4, "z"); /* posted while the run is held */
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        post_all(d.port, &s);

        /* hold one tracker in the middle, so the run stops there for sure */
        db_exec(lk, "BEGIN");
        db_exec(lk, "SELECT 1 FROM trackers WHERE easypost_id = 'trk_b0015' FOR UPDATE");
        const char *args[] = { "--reproject", "--batch", "1", NULL };
        pid_t pid = run_syncd(getenv("TEST_PG_CONNINFO"), args, false, NULL);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_stat_activity"
                                         " WHERE application_name = 'easypost-syncd-reproject'"
                                         " AND wait_event_type = 'Lock'", 1, 30000), 1);
        ck_assert_int_ge(db_long(c, "SELECT (value::jsonb ->> 'trackers')::int FROM sync_state"
                                    " WHERE key = 'reproject_run'", NULL), 15);

        /* webhooks are answered while it runs (post_all asserts 200 each) */
        post_all(d.port, &during);
        char *upd = tracker_event("evt_b0002_4", 2, 3, "b"); /* a tracker already rebuilt */
        ck_assert_int_eq(post_event(d.port, upd, strlen(upd), NULL, 0), 200);

        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert(WIFSIGNALED(st));
        db_exec(lk, "ROLLBACK");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM pg_stat_activity"
                                         " WHERE application_name = 'easypost-syncd-reproject'", 0, 30000), 0);
        char *phase = db_text(c, "SELECT value::jsonb ->> 'phase' FROM sync_state"
                                 " WHERE key = 'reproject_run'", NULL);
        ck_assert_str_eq(phase, "trackers");
        free(phase);

        const char *args2[] = { "--reproject", "--batch", "4", NULL };
        int rc = run_syncd(getenv("TEST_PG_CONNINFO"), args2, true, &err);
        ck_assert_msg(rc == 0, "exit %d: %s", rc, err);
        ck_assert_msg(strstr(err, "reproject: resuming the run started") != NULL, "%s", err);
        /* each tracker rebuilt once over both processes: the second went on, not over */
        ck_assert_int_eq(db_long(c, "SELECT (value::jsonb ->> 'trackers')::int FROM sync_state"
                                    " WHERE key = 'reproject_last'", NULL), 34);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);

        PGconn *f = fresh_db(c);
        struct evset one = { .bodies = &upd, .n = 1 };
        const struct evset *sets[] = { &s, &during, &one };
        ingest_fresh(sets, 3);
        char *want = digest(f), *got = digest(c);
        if (strcmp(got, want) != 0)
                show_diff(c, f);
        ck_assert_str_eq(got, want);

        free(want);
        free(got);
        free(upd);
        free(err);
        fresh_drop(c, f);
        evset_free(&s);
        evset_free(&during);
        PQfinish(lk);
        PQfinish(c);
}
END_TEST

/* A tracker the projection refuses now: the others of its batch are rebuilt,
 * it keeps its rows as they were, the run ends, counts it and exits 1. */
START_TEST(test_refused_tracker_is_isolated)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open();
        struct evset s;
        struct daemon d;
        char *err = NULL;

        reset(c);
        evset_make(&s, 8, "c");
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        post_all(d.port, &s);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        db_exec(c, "UPDATE trackers SET status = 'unknown' WHERE easypost_id IN ('trk_c0002', 'trk_c0004')");
        db_exec(c, "CREATE OR REPLACE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
                   " BEGIN IF NEW.easypost_id = 'trk_c0004' AND NEW.status IS NULL THEN"
                   " RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$");
        db_exec(c, "CREATE TRIGGER eps_test_refuse BEFORE UPDATE ON trackers FOR EACH ROW"
                   " EXECUTE FUNCTION pg_temp.refuse()");

        const char *args[] = { "--reproject", "--batch", "8", NULL };
        int rc = run_syncd(getenv("TEST_PG_CONNINFO"), args, true, &err);
        ck_assert_msg(rc == 1, "exit %d: %s", rc, err);
        ck_assert_msg(strstr(err, "tracker trk_c0004 not rebuilt") != NULL, "%s", err);
        ck_assert_msg(strstr(err, "7 tracker(s) rebuilt") != NULL, "%s", err);
        ck_assert_msg(strstr(err, "1 failed") != NULL, "%s", err);
        char *st2 = db_text(c, "SELECT status FROM trackers WHERE easypost_id = 'trk_c0002'", NULL);
        char *st4 = db_text(c, "SELECT status FROM trackers WHERE easypost_id = 'trk_c0004'", NULL);
        ck_assert_str_eq(st2, "delivered");
        ck_assert_str_eq(st4, "unknown");
        db_exec(c, "DROP TRIGGER eps_test_refuse ON trackers");

        free(st2);
        free(st4);
        free(err);
        evset_free(&s);
        PQfinish(c);
}
END_TEST

/* Stores body as a webhook event and projects it, on c (in c's transaction). */
static void
store_and_project(PGconn *c, const char *body)
{
        ck_assert_int_eq(db_long(c, "WITH w AS (INSERT INTO webhook_events (id, event_id, description, mode,"
                                    " object_id, raw, status) SELECT eps_uuid7(), b ->> 'id', b ->> 'description',"
                                    " 'test', b -> 'result' ->> 'id', $1, 'projected' FROM (SELECT $1::jsonb AS b) j"
                                    " RETURNING id, raw)"
                                    " SELECT count(*) FROM (SELECT eps_project_trackers(ARRAY[w.id], ARRAY[w.raw::jsonb])"
                                    " FROM w) x", body), 1);
}

/*
 * A webhook that projected onto a tracker and has not committed when a
 * rebuild of that tracker starts: the rebuild waits for it and includes its
 * event. (Reading the stored events before taking the tracker's lock, it
 * rebuilt the tracker without it once the webhook committed: the newer
 * status and its history row were gone, the event still marked projected.)
 */
START_TEST(test_rebuild_waits_for_a_webhook_in_flight)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open(), *hook = db_open(), *re = db_open();
        char q[300];

        reset(c);
        char *older = tracker_event("evt_race1", 2, 2, "r");
        char *newer = tracker_event("evt_race2", 2, 3, "r");
        store_and_project(c, older);
        db_exec(hook, "BEGIN");
        store_and_project(hook, newer);
        ck_assert_int_eq(PQsendQuery(re, "SELECT * FROM eps_reproject_trackers(ARRAY['trk_r0002'])"), 1);
        snprintf(q, sizeof(q), "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event_type = 'Lock'",
                 PQbackendPID(re));
        ck_assert_int_eq(db_wait_long(c, q, 1, 30000), 1);
        db_exec(hook, "COMMIT");
        PGresult *r;
        int results = 0;
        while ((r = PQgetResult(re)) != NULL) {
                ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
                results++;
                PQclear(r);
        }
        ck_assert_int_eq(results, 1);
        char *st = db_text(c, "SELECT status || '/' || details_count FROM trackers WHERE easypost_id = 'trk_r0002'",
                           NULL);
        ck_assert_str_eq(st, "delivered/3");
        free(st);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                                    " WHERE t.easypost_id = 'trk_r0002'", NULL), 3);
        free(older);
        free(newer);
        PQfinish(re);
        PQfinish(hook);
        PQfinish(c);
}
END_TEST

/* The typed tables, rows as ingest made them, less surrogate keys and write
 * times, and the shipments' refund status. */
#define TYPED_SUM \
        "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (" \
        " SELECT x.tbl || (to_jsonb(x.r) - 'id' - 'created_at' - 'updated_at')::text AS t FROM (" \
        "  SELECT 'batches' AS tbl, to_jsonb(b) AS r FROM batches b" \
        "  UNION ALL SELECT 'batch_shipments', to_jsonb(bs) FROM batch_shipments bs" \
        "  UNION ALL SELECT 'scan_forms', to_jsonb(f) FROM scan_forms f" \
        "  UNION ALL SELECT 'refunds', to_jsonb(rf) FROM refunds rf" \
        "  UNION ALL SELECT 'shipments', jsonb_build_object('e', s.easypost_id, 'rs', s.refund_status," \
        "                                                   'at', s.refund_status_at) FROM shipments s" \
        " ) x) y"

/* The other stored events rebuild the typed tables: rows deleted or changed
 * by hand come back as ingest made them. Tracker events are not offered
 * there (the tracker phase rebuilds them). */
START_TEST(test_other_events_rebuild_typed_tables)
{
        SKIP_WITHOUT_FIXTURES();
        PGconn *c = db_open();
        const char *files[] = { "event_batch_created_docs.json", "hmac_body_batch_created.json",
                                "event_batch_updated_docs.json", "event_scan_form_created_docs.json" };
        struct daemon d;
        char *err = NULL, *trk = tracker_event("evt_d0000_1", 0, 1, "d");

        reset(c);
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        for (size_t i = 0; i < ARRAY_LEN(files); i++) {
                size_t len;
                char *b = fixture_read(files[i], &len);
                ck_assert_int_eq(post_event(d.port, b, len, NULL, 0), 200);
                free(b);
        }
        ck_assert_int_eq(post_event(d.port, trk, strlen(trk), NULL, 0), 200);
        char *rf = make_event("evt_d_refund", "refund.successful",
                              "{\"id\":\"rfnd_d1\",\"object\":\"Refund\",\"status\":\"refunded\","
                              "\"shipment_id\":\"shp_d_refunded\",\"tracking_code\":\"9400D1\","
                              "\"carrier\":\"USPS\",\"updated_at\":\"2026-01-02T03:04:05Z\"}");
        ck_assert_int_eq(post_event(d.port, rf, strlen(rf), NULL, 0), 200);
        free(rf);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);

        ck_assert_int_ge(db_long(c, "SELECT count(*) FROM batches", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM refunds", NULL), 1);
        long others = db_long(c, "SELECT count(*) FROM webhook_events WHERE description NOT LIKE 'tracker.%'",
                              NULL);
        ck_assert_int_ge(others, 3);
        char *want = db_text(c, TYPED_SUM, NULL);
        db_exec(c, "DELETE FROM batches");
        db_exec(c, "DELETE FROM batch_shipments");
        db_exec(c, "UPDATE refunds SET status = 'damaged', ep_updated_at = '2099-01-01'");
        db_exec(c, "UPDATE scan_forms SET status = 'damaged'");
        db_exec(c, "UPDATE shipments SET refund_status = 'damaged', refund_status_at = '2099-01-01'");
        char *damaged = db_text(c, TYPED_SUM, NULL);
        ck_assert_str_ne(damaged, want);

        const char *args[] = { "--reproject", "--batch", "2", NULL };
        int rc = run_syncd(getenv("TEST_PG_CONNINFO"), args, true, &err);
        ck_assert_msg(rc == 0, "exit %d: %s", rc, err);
        ck_assert_msg(strstr(err, "1 tracker(s) rebuilt from 1 event(s)") != NULL, "%s", err);
        char line[64];
        snprintf(line, sizeof(line), "%ld other event(s) projected", others);
        ck_assert_msg(strstr(err, line) != NULL, "%s", err);
        char *got = db_text(c, TYPED_SUM, NULL);
        ck_assert_str_eq(got, want);

        free(want);
        free(damaged);
        free(got);
        free(err);
        free(trk);
        PQfinish(c);
}
END_TEST

Suite *
reproject_suite(void)
{
        Suite *s = suite_create("reproject");
        TCase *tc = tcase_create("reproject");

        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_rebuild_matches_fresh);
        tcase_add_test(tc, test_resume_after_kill_and_webhooks_answered);
        tcase_add_test(tc, test_refused_tracker_is_isolated);
        tcase_add_test(tc, test_other_events_rebuild_typed_tables);
        tcase_add_test(tc, test_rebuild_waits_for_a_webhook_in_flight);
        suite_add_tcase(s, tc);
        return s;
}
