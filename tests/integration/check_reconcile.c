/*
 * check_reconcile.c - the reconciler against the fake API over real HTTP and
 * the real daemon: a tracker the database never saw is created (with its
 * shipment stub and sync job), one behind is brought forward, one ahead is
 * not moved back; --reconcile's exit status and output; a scheduled run with
 * nothing to change writes no tracker, shipment or history row; a 429 and a
 * 401 in the middle of a run (it resumes where it stopped and ends
 * complete); two replicas, one run per slot; a re-enabled webhook starts a
 * run over the disabled window; a tracker whose data the database refuses is
 * skipped, not a stop at its page for good.
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

#define API_KEY "EZTKreconcilekey0123456789"

static struct fake_api fk;

static void
fake_up(void)
{
        ck_assert_int_eq(fake_start(&fk, API_KEY), 0);
}

static void
fake_down(void)
{
        fake_stop(&fk);
}

/* An ISO 8601 UTC time ago_s seconds before now. */
static void
iso_ago(long ago_s, char out[32])
{
        time_t t = time(NULL) - ago_s;
        struct tm tm;

        gmtime_r(&t, &tm);
        strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A Tracker shaped like the tracker_retrieve.json fixture: created created_ago
 * seconds ago, updated updated_ago seconds ago, with ndetails details (the
 * last at the update) and status. */
static json_t *
tracker(const char *id, const char *status, long created_ago, long updated_ago, int ndetails,
        const char *shipment_id)
{
        size_t len;
        char *raw = fixture_read("tracker_retrieve.json", &len);
        char ts[32];

        ck_assert_ptr_nonnull(raw);
        json_t *t = json_loadb(raw, len, 0, NULL);
        free(raw);
        ck_assert_ptr_nonnull(t);
        json_t *d0 = json_deep_copy(json_array_get(json_object_get(t, "tracking_details"), 0));
        json_t *details = json_array();
        for (int i = 0; i < ndetails; i++) {
                json_t *d = json_deep_copy(d0);
                iso_ago(updated_ago + (ndetails - 1 - i) * 60, ts);
                json_object_set_new(d, "datetime", json_string(ts));
                json_object_set_new(d, "status", json_string(i == ndetails - 1 ? status : "in_transit"));
                json_object_set_new(d, "message", json_string(i == ndetails - 1 ? status : "moving"));
                json_array_append_new(details, d);
        }
        json_decref(d0);
        json_object_set_new(t, "tracking_details", details);
        json_object_set_new(t, "id", json_string(id));
        json_object_set_new(t, "status", json_string(status));
        iso_ago(created_ago, ts);
        json_object_set_new(t, "created_at", json_string(ts));
        iso_ago(updated_ago, ts);
        json_object_set_new(t, "updated_at", json_string(ts));
        json_object_set_new(t, "shipment_id", shipment_id ? json_string(shipment_id) : json_null());
        return t;
}

/* Seeds the fake with t (taken over). */
static void
fake_put(json_t *t)
{
        char *b = json_dumps(t, JSON_COMPACT);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
        free(b);
        json_decref(t);
}

/* Stores t (taken over) in the database as a fetched tracker would be. */
static void
db_put(PGconn *c, json_t *t)
{
        char *b = json_dumps(t, JSON_COMPACT);
        const char *p[1] = { b };
        PGresult *r = PQexecParams(c,
                                   "SELECT eps_project_trackers(ARRAY[NULL::uuid],"
                                   " ARRAY[jsonb_build_object('result', $1::jsonb)])",
                                   1, NULL, p, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
        PQclear(r);
        free(b);
        json_decref(t);
}

static void
reset(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, sync_jobs, sync_state,"
                   " reconcile_runs CASCADE");
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/objects", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/trackers", "{\"rate\":0}", NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
}

/* A fake answer's counter: by_path or by_status. */
static long
fake_count(const char *group, const char *key)
{
        static char resp[400000];

        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        long n = (long)json_integer_value(json_object_get(json_object_get(o, group), key));
        json_decref(o);
        return n;
}

/* easypost-syncd cmd [args]: exit status, stderr in *err, stdout in *out when
 * out is not NULL (caller frees). */
static int
run_syncd(const char *cmd, const char *const *args, char **err, char **out)
{
        char url[128], outp[ITEST_PATH], errp[ITEST_PATH];
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, NULL };
        const char *argv[8] = { cmd };
        size_t na = 1;

        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        for (const char *const *a = args; a && *a && na < ARRAY_LEN(argv) - 1; a++)
                argv[na++] = *a;
        argv[na] = NULL;
        int rc = syncd_wait(syncd_spawn(getenv("TEST_PG_CONNINFO"), env, argv, outp, errp));
        *err = itest_slurp(errp);
        if (out)
                *out = itest_slurp(outp);
        return rc;
}

static int
run_reconcile(const char *const *args, char **err)
{
        return run_syncd("--reconcile", args, err, NULL);
}

/* The daemon with the fake API, no backfill, no sync worker (so nothing but the
 * reconciler writes), and extra settings. */
static void
start_daemon(struct daemon *d, const char *interval, const char *instance)
{
        char url[128];

        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_SYNC_INTERVAL=0", "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=0",
                              "EASYPOST_SYNC_API_TIMEOUT=5", interval, instance, NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

/* Seeds n trackers created i minutes ago, named trk_bulk<i>. */
static void
seed_bulk(int n)
{
        json_t *arr = json_array();
        char id[32];

        for (int i = 0; i < n; i++) {
                snprintf(id, sizeof(id), "trk_bulk%04d", i);
                json_array_append_new(arr, tracker(id, "in_transit", 600 + i * 60, 300, 2, NULL));
        }
        char *b = json_dumps(arr, JSON_COMPACT);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
        free(b);
        json_decref(arr);
}

/*
 * --reconcile: a tracker the database never saw is created with its
 * shipment's stub and sync job (exit 1: something changed); one behind is
 * brought forward; one ahead stays; a second run finds nothing (exit 0) and
 * rewrites no row; the run's drift is recorded.
 */
START_TEST(test_cli_creates_forwards_and_keeps_newer)
{
        PGconn *c = db_open();
        char *err;

        reset(c);
        fake_put(tracker("trk_recnew", "delivered", 3600, 60, 4, "shp_recnew"));
        fake_put(tracker("trk_recbehind", "delivered", 7200, 120, 5, NULL));
        fake_put(tracker("trk_recahead", "out_for_delivery", 7200, 600, 3, NULL));
        fake_put(tracker("trk_recold", "delivered", 86400 * 40, 60, 2, NULL)); /* before the window */
        db_put(c, tracker("trk_recbehind", "out_for_delivery", 7200, 900, 3, NULL));
        db_put(c, tracker("trk_recahead", "delivered", 7200, 60, 4, NULL));

        int rc = run_reconcile(NULL, &err);
        ck_assert_msg(rc == 1, "exit %d, stderr:\n%s", rc, err);
        ck_assert_msg(strstr(err, "completed: 3 listed, 1 changed (1 with another status), 1 created"),
                      "stderr:\n%s", err);
        free(err);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recnew'"
                                    " AND status = 'delivered' AND details_count = 4", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id"
                                    " WHERE t.easypost_id = 'trk_recnew'", NULL), 4);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = 'shp_recnew'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'shipment'"
                                    " AND object_id = 'shp_recnew' AND status = 'pending'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recbehind'"
                                    " AND status = 'delivered' AND details_count = 5", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recahead'"
                                    " AND status = 'delivered' AND details_count = 4", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recold'", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'manual'"
                                    " AND status = 'completed' AND listed = 3 AND changed = 1"
                                    " AND status_changed = 1 AND created = 1", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'reconcile_run'", NULL), 0);

        /* nothing left to change: exit 0, and no row rewritten */
        char *before = db_text(c, "SELECT string_agg(easypost_id || ':' || xmin::text, ',' ORDER BY easypost_id)"
                                  " FROM trackers", NULL);
        char *sh_before = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY easypost_id) FROM shipments", NULL);
        rc = run_reconcile(NULL, &err);
        ck_assert_msg(rc == 0, "exit %d, stderr:\n%s", rc, err);
        ck_assert_msg(strstr(err, "completed: 3 listed, 0 changed (0 with another status), 0 created"),
                      "stderr:\n%s", err);
        free(err);
        char *after = db_text(c, "SELECT string_agg(easypost_id || ':' || xmin::text, ',' ORDER BY easypost_id)"
                                 " FROM trackers", NULL);
        char *sh_after = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY easypost_id) FROM shipments", NULL);
        ck_assert_str_eq(after, before);
        ck_assert_str_eq(sh_after, sh_before);
        free(before);
        free(after);
        free(sh_before);
        free(sh_after);

        /* --since reaches further back; a bad date is refused */
        rc = run_reconcile((const char *const[]){ "--since", "2000-01-01", NULL }, &err);
        ck_assert_msg(rc == 1, "exit %d, stderr:\n%s", rc, err);
        free(err);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recold'", NULL), 1);
        rc = run_reconcile((const char *const[]){ "--since", "yesterday", NULL }, &err);
        ck_assert_int_eq(rc, 2);
        free(err);

        /* --status shows the last run and what it changed */
        char *out;
        run_syncd("--status", NULL, &err, &out);
        ck_assert_msg(strstr(out, "Reconcile: ") && strstr(out, "last run: #") &&
                              strstr(out, "(manual) completed") && strstr(out, "4 listed, 0 changed (0 with "
                                                                                "another status), 1 created"),
                      "--status:\n%s\n%s", out, err);
        free(out);
        free(err);
        PQfinish(c);
}
END_TEST

/*
 * A tracker whose data the database refuses (a detail dated 2024-02-30):
 * the run does not stop at its page for good; the page's other trackers
 * are applied, that one is skipped and counted, and the run completes.
 */
START_TEST(test_refused_tracker_is_skipped_not_blocking)
{
        PGconn *c = db_open();
        char *err;

        reset(c);
        fake_put(tracker("trk_recok1", "delivered", 3600, 60, 2, NULL));
        json_t *bad = tracker("trk_recbad", "in_transit", 3600, 90, 2, NULL);
        json_object_set_new(json_array_get(json_object_get(bad, "tracking_details"), 0), "datetime",
                            json_string("2024-02-30T10:00:00Z"));
        fake_put(bad);
        fake_put(tracker("trk_recok2", "delivered", 3600, 120, 3, NULL));

        int rc = run_reconcile(NULL, &err);
        ck_assert_msg(rc == 1, "exit %d, stderr:\n%s", rc, err);
        ck_assert_msg(strstr(err, "completed: 3 listed, 0 changed (0 with another status), 2 created"),
                      "stderr:\n%s", err);
        ck_assert_msg(strstr(err, "1 trackers of a page skipped"), "stderr:\n%s", err);
        free(err);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id IN ('trk_recok1', 'trk_recok2')",
                                 NULL), 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_recbad'", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), 5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE status = 'completed'"
                                    " AND listed = 3 AND created = 2", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'reconcile_run'", NULL), 0);
        PQfinish(c);
}
END_TEST

/*
 * The schedule with the database already equal to the API: each slot's run
 * completes, finds nothing, and rewrites no tracker, shipment or
 * shipment_events row; /metrics counts the runs and no drift.
 */
START_TEST(test_scheduled_run_without_drift_writes_nothing)
{
        PGconn *c = db_open();
        struct daemon d;
        char *err;

        reset(c);
        seed_bulk(5);
        fake_put(tracker("trk_recship", "delivered", 3600, 60, 3, "shp_recship"));
        ck_assert_int_eq(run_reconcile(NULL, &err), 1);
        free(err);
        char *before = db_text(c, "SELECT string_agg(xmin::text || '/' || updated_at, ',' ORDER BY easypost_id)"
                                  " FROM trackers", NULL);
        char *sh_before = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY easypost_id) FROM shipments", NULL);
        long events = db_long(c, "SELECT count(*) FROM shipment_events", NULL);

        start_daemon(&d, "EASYPOST_SYNC_RECONCILE_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=recsched");
        ck_assert_int_eq(db_wait_long(c, "SELECT least(count(*), 2) FROM reconcile_runs WHERE reason = 'schedule'"
                                         " AND status = 'completed'", 2, 30000), 2);
        ck_assert(daemon_metric_wait(d.port, "easypost_sync_reconcile_runs_total{outcome=\"completed\"}", 2,
                                     10000) >= 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'schedule'"
                                    " AND status = 'completed' AND (listed <> 6 OR changed <> 0 OR created <> 0)",
                                 NULL), 0);
        ck_assert(daemon_metric(d.port, "easypost_sync_reconcile_last_run_drift") == 0);
        ck_assert(daemon_metric(d.port, "easypost_sync_reconcile_drift_runs_total{reason=\"schedule\"}") == 0);
        ck_assert(daemon_metric(d.port, "easypost_sync_reconcile_trackers_total{result=\"listed\"}") >= 12);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        char *after = db_text(c, "SELECT string_agg(xmin::text || '/' || updated_at, ',' ORDER BY easypost_id)"
                                 " FROM trackers", NULL);
        char *sh_after = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY easypost_id) FROM shipments", NULL);
        ck_assert_str_eq(after, before);
        ck_assert_str_eq(sh_after, sh_before);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events", NULL), events);
        free(before);
        free(after);
        free(sh_before);
        free(sh_after);
        PQfinish(c);
}
END_TEST

/*
 * A run of 5 pages with the API at one list request a second (429 above it)
 * and a 401 once the first page is in: the 429s are waited out, the 401
 * stops the run with its cursor kept, and a new key (SIGHUP) resumes it
 * where it stopped: every tracker listed exactly once over the run.
 */
START_TEST(test_429_and_401_mid_run_resume_where_stopped)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[256];

        reset(c);
        seed_bulk(450);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/trackers", "{\"rate\":1}", NULL, 0), 200);
        /* what a restart leaves: a run stopped before its first page; the daemon resumes it */
        db_exec(c, "SELECT * FROM eps_reconcile_begin('seed', 'seed', 1, 'manual', now() - interval '30 days', NULL)");
        db_exec(c, "SELECT * FROM eps_reconcile_end((SELECT max(id) FROM reconcile_runs), 'seed', 'stopped', 'restart')");
        start_daemon(&d, "EASYPOST_SYNC_RECONCILE_INTERVAL=0", "EASYPOST_SYNC_INSTANCE_ID=recfault");
        ck_assert_int_eq(db_wait_long(c, "SELECT least(pages, 1) FROM reconcile_runs", 1, 30000), 1);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/trackers\",\"status\":401,\"count\":-1}", resp,
                                      sizeof(resp)),
                         201);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE status = 'stopped'", 1, 30000), 1);
        long pages = db_long(c, "SELECT pages FROM reconcile_runs", NULL);
        ck_assert_int_lt(pages, 5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'reconcile_run'"
                                    " AND value::jsonb ->> 'before_id' IS NOT NULL", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers", NULL), pages * 100);
        ck_assert(daemon_metric(d.port, "easypost_sync_reconcile_runs_total{outcome=\"stopped\"}") >= 1);

        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        kill(d.pid, SIGHUP);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE status = 'completed'", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE listed = 450 AND created = 450"
                                    " AND pages = 5", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers", NULL), 450);
        ck_assert_int_ge(fake_count("by_status", "429"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/* Two replicas on 1 s slots: one run per slot, never two at once. */
START_TEST(test_two_replicas_one_run_per_slot)
{
        PGconn *c = db_open();
        struct daemon a, b;

        reset(c);
        seed_bulk(3);
        start_daemon(&a, "EASYPOST_SYNC_RECONCILE_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=recA");
        start_daemon(&b, "EASYPOST_SYNC_RECONCILE_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=recB");
        ck_assert_int_eq(db_wait_long(c, "SELECT least(count(*), 4) FROM reconcile_runs WHERE status = 'completed'",
                                      4, 30000), 4);
        ck_assert_int_eq(daemon_stop(&a, SIGTERM), 0);
        ck_assert_int_eq(daemon_stop(&b, SIGTERM), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) - count(DISTINCT slot) FROM reconcile_runs", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason <> 'schedule'", NULL), 0);
        /* runs never overlap: each ends before the next starts */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM (SELECT finished_at, lead(started_at) OVER (ORDER BY id) AS nx"
                                    " FROM reconcile_runs) x WHERE nx < finished_at", NULL), 0);
        /* one list request per completed run (3 trackers: one page each) */
        long runs = db_long(c, "SELECT count(*) FROM reconcile_runs", NULL);
        ck_assert_int_le(fake_count("by_path", "/v2/trackers"), runs);
        PQfinish(c);
}
END_TEST

/* A webhook re-enabled by the daemon starts a run from reconcile_window_days before it was disabled. */
START_TEST(test_reenabled_webhook_reconciles_disabled_window)
{
        PGconn *c = db_open();
        struct daemon d;
        char url[128];

        reset(c);
        seed_bulk(2);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects",
                                      "{\"id\":\"hook_rec0001\",\"object\":\"Webhook\",\"mode\":\"test\","
                                      "\"url\":\"https://hooks.example.test/rec\",\"created_at\":\"2025-03-06T19:49:03Z\","
                                      "\"disabled_at\":\"2025-03-07T10:00:00Z\",\"custom_headers\":[]}",
                                      NULL, 0),
                         201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_SYNC_INTERVAL=0", "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=1",
                              "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", "EASYPOST_SYNC_RECONCILE_WINDOW_DAYS=2",
                              "EASYPOST_SYNC_PUBLIC_URL=https://hooks.example.test/rec", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'webhook'"
                                         " AND status = 'completed'", 1, 30000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'webhook'"
                                    " AND window_start = '2025-03-05T10:00:00Z' AND listed = 2 AND created = 2", NULL), 1);
        ck_assert(daemon_metric(d.port, "easypost_sync_reconcile_drift_runs_total{reason=\"webhook\"}") == 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * Two webhooks found disabled, then re-enabled by hand while the daemon was
 * down: the daemon that starts next sees them enabled again from what the
 * last check recorded, and reconciles the window from the earlier
 * disabled_at, though the later one is listed first. (A process that had not
 * seen them disabled itself took them for always enabled, and the trackers
 * changed meanwhile were never reconciled.)
 */
START_TEST(test_reenabled_while_down_reconciles_disabled_window)
{
        PGconn *c = db_open();
        struct daemon d;
        char url[128], obj[600];
        const char *hooks = "[{\"id\":\"hook_rec0002\",\"object\":\"Webhook\",\"mode\":\"test\","
                            "\"url\":\"https://hooks.example.test/rec\",\"created_at\":\"2025-03-01T19:49:03Z\","
                            "\"disabled_at\":%s,\"custom_headers\":[]},"
                            "{\"id\":\"hook_rec0003\",\"object\":\"Webhook\",\"mode\":\"test\","
                            "\"url\":\"https://hooks.example.test/rec\",\"created_at\":\"2025-03-01T19:49:03Z\","
                            "\"disabled_at\":%s,\"custom_headers\":[]}]";

        reset(c);
        seed_bulk(2);
        snprintf(obj, sizeof(obj), hooks, "\"2025-03-07T10:00:00Z\"", "\"2025-03-06T10:00:00Z\"");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", obj, NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_SYNC_INTERVAL=0", "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=1",
                              "EASYPOST_SYNC_RECONCILE_WINDOW_DAYS=2",
                              "EASYPOST_SYNC_PUBLIC_URL=https://hooks.example.test/rec", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'webhook_disabled'"
                                         " AND value = '2'", 1, 30000), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        snprintf(obj, sizeof(obj), hooks, "null", "null"); /* re-enabled meanwhile */
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", obj, NULL, 0), 201);
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'webhook'"
                                         " AND status = 'completed'", 1, 30000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'webhook'"
                                    " AND window_start = '2025-03-04T10:00:00Z'", NULL), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'webhook_disabled'"
                                         " AND value = '0'", 1, 30000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'webhook_disabled_since'", NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/* Fresh tables, two trackers, and an event EasyPost lists but holds no
 * payload for: a backfill stores it as listed and asks for a run. */
static void
seed_partial_event(PGconn *c, const char *evid)
{
        char ev[300], ts[32];

        reset(c);
        seed_bulk(2);
        iso_ago(60, ts);
        snprintf(ev, sizeof(ev),
                 "{\"id\":\"%s\",\"object\":\"Event\",\"mode\":\"test\","
                 "\"description\":\"batch.created\",\"created_at\":\"%s\",\"previous_attributes\":{}}", evid, ts);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", ev, NULL, 0), 201);
}

/* The daemon with a backfill every second and no reconcile schedule. */
static void
start_backfilling(struct daemon *d)
{
        char url[128];

        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_BACKFILL_INTERVAL=1",
                              "EASYPOST_SYNC_SYNC_INTERVAL=0", "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=0",
                              "EASYPOST_SYNC_RECONCILE_INTERVAL=0", "EASYPOST_SYNC_API_RATE=20", NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

/* A backfill run that stored an event as listed (EasyPost has no payload for it) starts a run. */
START_TEST(test_partial_backfill_starts_a_run)
{
        PGconn *c = db_open();
        struct daemon d;

        seed_partial_event(c, "evt_recpartial");
        start_backfilling(&d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE reason = 'backfill'"
                                         " AND status = 'completed' AND created = 2", 1, 30000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_recpartial'"
                                    " AND partial", NULL), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A page with no tracker ends the list even when it says has_more: there is
 * nothing to page below it. Stopping there instead would stop every
 * resumption on the same page, and no run would ever complete.
 */
START_TEST(test_empty_page_ends_the_list)
{
        PGconn *c = db_open();
        char *err;

        reset(c);
        fake_put(tracker("trk_recempty", "delivered", 3600, 60, 2, NULL));
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/trackers\",\"status\":200,\"count\":-1,"
                                      "\"body\":{\"trackers\":[],\"has_more\":true}}", NULL, 0), 201);
        int rc = run_reconcile(NULL, &err);
        ck_assert_msg(rc == 0, "exit %d, stderr:\n%s", rc, err);
        ck_assert_msg(strstr(err, "completed: 0 listed"), "stderr:\n%s", err);
        free(err);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM reconcile_runs WHERE status = 'completed'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'reconcile_run'", NULL), 0);
        PQfinish(c);
}
END_TEST

/*
 * A run asked for (a backfill stored an event from its list item) while a
 * stopped run waits resumes that run. When the API keeps failing, the next
 * try waits as long as any stopped run does: no resume-and-stop loop at the
 * API's rate. A reload (SIGHUP) resumes it at once, and it completes.
 */
START_TEST(test_asked_run_that_keeps_failing_waits)
{
        PGconn *c = db_open();
        struct daemon d;

        seed_partial_event(c, "evt_recloop");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/trackers\",\"status\":500,\"count\":-1}", NULL, 0),
                         201);
        db_exec(c, "SELECT * FROM eps_reconcile_begin('seed', 'seed', 1, 'manual', now() - interval '30 days', NULL)");
        db_exec(c, "SELECT * FROM eps_reconcile_end((SELECT max(id) FROM reconcile_runs), 'seed', 'stopped', 'restart')");
        start_backfilling(&d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_recloop'"
                                         " AND partial", 1, 30000), 1);
        /* the asked-for try: it resumes the stopped run, which stops on the 500 */
        ck_assert(daemon_metric_wait(d.port, "easypost_sync_reconcile_runs_total{outcome=\"stopped\"}", 1, 30000) >= 1);
        long before = fake_count("by_path", "/v2/trackers");
        ck_assert_int_ge(before, 1);
        /* what the API sees in the next 3 s (one try a second would be 3) */
        struct timespec ts3 = { 3, 0 };
        nanosleep(&ts3, NULL);
        ck_assert_int_le(fake_count("by_path", "/v2/trackers") - before, 1);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        kill(d.pid, SIGHUP);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM reconcile_runs WHERE status = 'completed'", 1, 30000),
                         1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id LIKE 'trk_bulk%'", NULL), 2);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

Suite *
reconcile_suite(void)
{
        Suite *s = suite_create("reconcile");
        TCase *tc = tcase_create("reconcile");

        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_set_timeout(tc, 240);
        tcase_add_test(tc, test_cli_creates_forwards_and_keeps_newer);
        tcase_add_test(tc, test_refused_tracker_is_skipped_not_blocking);
        tcase_add_test(tc, test_scheduled_run_without_drift_writes_nothing);
        tcase_add_test(tc, test_429_and_401_mid_run_resume_where_stopped);
        tcase_add_test(tc, test_two_replicas_one_run_per_slot);
        tcase_add_test(tc, test_reenabled_webhook_reconciles_disabled_window);
        tcase_add_test(tc, test_reenabled_while_down_reconciles_disabled_window);
        tcase_add_test(tc, test_partial_backfill_starts_a_run);
        tcase_add_test(tc, test_empty_page_ends_the_list);
        tcase_add_test(tc, test_asked_run_that_keeps_failing_waits);
        suite_add_tcase(s, tc);
        return s;
}
