/*
 * check_sync.c - the sync worker and backfill against the fake EasyPost API
 * over real HTTP: shipments filled in, 429 + Retry-After, 401 without a
 * storm, the rate limit, a kill mid-queue, leases renewed while a job waits
 * in the pacer's queue, events recovered by backfill (paged down to the
 * cursor, one run at a time across replicas, an event that keeps failing set
 * aside), and a poison row failed by the deferred projector.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "metrics.h"
#include "util.h"

#define API_KEY "EZTKtestkey0123456789"
#define BF_SLOT_S "3"
#define BF_SLOT_MS 3000

static struct fake_api fk;

static void
fake_up(void)
{
        ck_assert_int_eq(fake_start(&fk, API_KEY), 0);
        /* the webhook health check's requests would count among the worker's
         * (rates, request totals): off for every daemon of this suite */
        setenv("EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL", "0", 1);
}

static void
fake_down(void)
{
        unsetenv("EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL");
        fake_stop(&fk);
}

static void
start_syncd(struct daemon *d, const char *key, const char *rate, const char *backfill)
{
        char url[128], keyenv[128], rateenv[64], bfenv[64];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", key);
        snprintf(rateenv, sizeof(rateenv), "EASYPOST_SYNC_API_RATE=%s", rate);
        snprintf(bfenv, sizeof(bfenv), "EASYPOST_SYNC_BACKFILL_INTERVAL=%s", backfill);
        const char *env[] = { url, keyenv, rateenv, bfenv, "EASYPOST_SYNC_API_TIMEOUT=2",
                              "EASYPOST_SYNC_SYNC_INTERVAL=1", "EASYPOST_SYNC_METRICS_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

static void
wipe(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, addresses, parcels, customs_infos, "
                   "webhook_events, projection_queue, sync_jobs, sync_state, backfill_failures CASCADE");
        db_exec(c, "UPDATE backfill_lease SET locked_until = NULL");
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/objects", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
}

static char *
shipment_json(const char *shp)
{
        json_t *o = json_pack(
                "{s:s,s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s},s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s},"
                "s:{s:s,s:f,s:f,s:f,s:f},s:{s:s,s:s,s:s,s:s},s:n}",
                "id", shp, "object", "Shipment", "mode", "test", "status", "unknown",
                "created_at", "2025-05-01T10:00:00Z", "updated_at", "2025-05-01T10:05:00Z",
                "from_address", "id", "adr_from1", "name", "Sender", "street1", "1 Main St", "city",
                "San Francisco", "state", "CA", "zip", "94105", "country", "US",
                "to_address", "id", "adr_to1", "name", "Receiver", "street1", "2 Oak Ave", "city",
                "Chicago", "state", "IL", "zip", "60601", "country", "US",
                "parcel", "id", "prcl_1", "length", 10.0, "width", 8.0, "height", 4.0, "weight", 15.4,
                "selected_rate", "carrier", "USPS", "service", "GroundAdvantage", "rate", "6.07",
                "currency", "USD",
                "customs_info");
        ck_assert_ptr_nonnull(o);
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return s;
}

static void
seed_shipment(const char *shp)
{
        char *s = shipment_json(shp);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", s, NULL, 0), 201);
        free(s);
}

static char *
tracker_event(const char *evid, const char *shp, const char *created)
{
        char *b = xmalloc(1024);
        snprintf(b, 1024,
                 "{\"id\":\"%s\",\"object\":\"Event\",\"mode\":\"test\",\"description\":\"tracker.updated\","
                 "\"created_at\":\"%s\",\"result\":{\"id\":\"trk_%s\",\"object\":\"Tracker\","
                 "\"tracking_code\":\"EZ%s\",\"carrier\":\"USPS\",\"status\":\"in_transit\","
                 "\"updated_at\":\"%s\",\"shipment_id\":\"%s\",\"tracking_details\":[{\"message\":\"Accepted\","
                 "\"status\":\"pre_transit\",\"datetime\":\"%s\"}]}}",
                 evid, created, evid + 4, evid + 4, created, shp, created);
        return b;
}

static void
post_tracker(unsigned port, const char *evid, const char *shp)
{
        char *b = tracker_event(evid, shp, "2025-05-02T08:00:00Z");
        ck_assert_int_eq(post_event(port, b, strlen(b), NULL, 0), 200);
        free(b);
}

/* One text value of a query with one parameter; "<none>" without a row. */
static void
q1s(PGconn *c, const char *sql, const char *p, char *out, size_t cap)
{
        char *s = db_text(c, sql, p);
        snprintf(out, cap, "%s", s);
        free(s);
}

static long
stat_long(const char *key, const char *sub)
{
        char resp[65536];
        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        json_t *v = json_object_get(o, key);
        if (sub)
                v = json_object_get(v, sub);
        long n = json_is_integer(v) ? (long)json_integer_value(v) : 0;
        json_decref(o);
        return n;
}

START_TEST(test_tracker_event_fills_shipment)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        seed_shipment("shp_fill1");
        start_syncd(&d, API_KEY, "5", "0");
        post_tracker(d.port, "evt_fill1", "shp_fill1");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = 'shp_fill1' "
                                         "AND synced_at IS NOT NULL", 1, 15000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments s JOIN addresses f ON f.id = s.from_address_id "
                                    "JOIN addresses t ON t.id = s.to_address_id JOIN parcels p ON p.id = s.parcel_id "
                                    "WHERE s.easypost_id = 'shp_fill1' AND s.carrier = 'USPS' AND s.service = "
                                    "'GroundAdvantage' AND s.rate = 6.07 AND s.currency = 'USD' AND f.city = "
                                    "'San Francisco' AND t.country = 'US' AND p.weight = 15.4", NULL), 1);
        /* the delivery status stays the tracker's */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = 'shp_fill1' "
                                    "AND status = 'in_transit'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE status = 'done'", NULL), 1);
        /* a second event for the same shipment does not fetch it again */
        post_tracker(d.port, "evt_fill2", "shp_fill1");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs", NULL), 1);
        ck_assert_int_eq(stat_long("by_path", "/v2/shipments/shp_fill1"), 1);
        /* User-Agent and auth as EasyPost expects */
        char resp[65536];
        fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp));
        ck_assert_ptr_nonnull(strstr(resp, "easypost-sync/"));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A tracker event whose body cannot be projected (tracking_details is not an
 * array) is stored 'failed' and the tracker is fetched instead: the tracker
 * row and its history come from GET /trackers/{id}, fetched once.
 */
START_TEST(test_unprojectable_tracker_event_fetches_the_tracker)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects",
                                      "{\"id\":\"trk_heal1\",\"object\":\"Tracker\",\"mode\":\"test\","
                                      "\"tracking_code\":\"EZHEAL1\",\"carrier\":\"USPS\",\"status\":\"delivered\","
                                      "\"updated_at\":\"2025-05-03T09:00:00Z\",\"tracking_details\":["
                                      "{\"message\":\"Accepted\",\"status\":\"pre_transit\",\"datetime\":\"2025-05-01T09:00:00Z\"},"
                                      "{\"message\":\"Delivered\",\"status\":\"delivered\",\"datetime\":\"2025-05-03T09:00:00Z\"}]}",
                                      NULL, 0), 201);
        start_syncd(&d, API_KEY, "5", "0");
        const char *bad = "{\"id\":\"evt_heal1\",\"object\":\"Event\",\"mode\":\"test\","
                          "\"description\":\"tracker.updated\",\"created_at\":\"2025-05-03T09:00:01Z\","
                          "\"result\":{\"id\":\"trk_heal1\",\"object\":\"Tracker\",\"status\":\"delivered\","
                          "\"tracking_details\":\"see the API\"}}";
        ck_assert_int_eq(post_event(d.port, bad, strlen(bad), NULL, 0), 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_heal1' "
                                    "AND status = 'failed'", NULL), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_heal1' "
                                         "AND status = 'delivered'", 1, 15000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t ON t.id = e.tracker_id "
                                    "WHERE t.easypost_id = 'trk_heal1'", NULL), 2);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE kind = 'tracker' "
                                         "AND object_id = 'trk_heal1' AND status = 'done'", 1, 20000), 1);
        ck_assert_int_eq(stat_long("by_path", "/v2/trackers/trk_heal1"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_429_then_200_honours_retry_after)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        seed_shipment("shp_r429");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/shipments/shp_r429\",\"status\":429,"
                                      "\"retry_after\":2,\"count\":1}", NULL, 0), 201);
        start_syncd(&d, API_KEY, "5", "0");
        uint64_t t0 = clock_mono_us();
        post_tracker(d.port, "evt_r429", "shp_r429");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = 'shp_r429' "
                                         "AND synced_at IS NOT NULL", 1, 20000), 1);
        double secs = (double)(clock_mono_us() - t0) / 1e6;
        ck_assert_int_eq(stat_long("by_path", "/v2/shipments/shp_r429"), 2); /* one 429, one 200 */
        ck_assert_msg(secs >= 2.0, "fetched again after %.2f s, before Retry-After", secs);
        ck_assert_int_eq(db_long(c, "SELECT attempts FROM sync_jobs WHERE object_id = 'shp_r429'", NULL), 2);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_401_stops_worker_without_storm)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[512];

        wipe(c);
        for (int i = 0; i < 5; i++) {
                char shp[32];
                snprintf(shp, sizeof(shp), "shp_auth%d", i);
                seed_shipment(shp);
        }
        start_syncd(&d, "EZTKwrongkey", "5", "0");
        for (int i = 0; i < 5; i++) {
                char shp[32], ev[32];
                snprintf(shp, sizeof(shp), "shp_auth%d", i);
                snprintf(ev, sizeof(ev), "evt_auth%d", i);
                post_tracker(d.port, ev, shp);
        }
        /* wait for the worker to give up and for the answers to all it sent
         * (then every request it made has reached the fake API), then watch
         * that it stays quiet */
        uint64_t end = clock_mono_us() + 20000000u;
        while ((daemon_metric(d.port, "easypost_sync_api_authorized") != 0 ||
                daemon_metric(d.port, "easypost_sync_api_requests_in_flight") != 0) &&
               clock_mono_us() < end)
                wait_status(d.port, "/healthz", 200, 100);
        ck_assert_int_ge(stat_long("auth_failures", NULL), 1);
        long before = stat_long("requests", NULL);
        struct daemon probe; /* time passes while a second daemon starts and stops */
        ck_assert_int_eq(daemon_start(&probe, NULL), 0);
        ck_assert_int_eq(daemon_stop(&probe, SIGTERM), 0);
        end = clock_mono_us() + 3000000u;
        while (clock_mono_us() < end)
                wait_status(d.port, "/healthz", 200, 100);
        long after = stat_long("requests", NULL);
        ck_assert_msg(after == before, "requests went on after 401: %ld -> %ld", before, after);
        ck_assert_int_le(after, 4); /* at most the first concurrent wave */
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"api\":\"unauthorized\""));
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE status = 'pending'", NULL), 5);
        /* the table's state, read on the system_metrics tick (1 s here) */
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_sync_jobs{state=\"pending\"}", 5, 15000), 5);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_sync_jobs{state=\"running\"}"), 0);
        ck_assert_double_gt(daemon_metric_wait(d.port, "easypost_sync_sync_jobs_oldest_pending_seconds", 1, 15000), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * Without system_metrics rows (metrics_interval = 0) the sync_jobs gauges
 * are still read: at connect, then every 60 s. (They were read only on the
 * system_metrics tick, so they stayed 0 and EasyPostSyncJobsPilingUp could
 * never fire.)
 */
START_TEST(test_sync_gauges_without_system_metrics)
{
        PGconn *c = db_open();
        struct daemon d;
        char url[128], keyenv[128];

        wipe(c);
        db_exec(c, "INSERT INTO sync_jobs (kind, object_id, next_attempt_at, created_at)"
                   " VALUES ('shipment', 'shp_gauge1', now() + interval '1 day', now() - interval '1 hour'),"
                   " ('shipment', 'shp_gauge2', now() + interval '1 day', now() - interval '2 hours')");
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_BACKFILL_INTERVAL=0", "EASYPOST_SYNC_SYNC_INTERVAL=1",
                              "EASYPOST_SYNC_METRICS_INTERVAL=0", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_sync_jobs{state=\"pending\"}", 2, 30000), 2);
        ck_assert_double_ge(daemon_metric(d.port, "easypost_sync_sync_jobs_oldest_pending_seconds"), 7200);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_rate_never_above_api_rate)
{
        enum { N = 12 };
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        for (int i = 0; i < N; i++) {
                char shp[32];
                snprintf(shp, sizeof(shp), "shp_rate%02d", i);
                seed_shipment(shp);
        }
        start_syncd(&d, API_KEY, "3", "0");
        for (int i = 0; i < N; i++) {
                char shp[32], ev[32];
                snprintf(shp, sizeof(shp), "shp_rate%02d", i);
                snprintf(ev, sizeof(ev), "evt_rate%02d", i);
                post_tracker(d.port, ev, shp);
        }
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE status = 'done'", N, 30000), N);
        long maxw = stat_long("max_per_1s_window", NULL);
        fprintf(stderr, "rate test: %d fetches, at most %ld in any 1 s window (api_rate 3)\n", N, maxw);
        ck_assert_int_le(maxw, 3);
        ck_assert_int_ge(maxw, 2);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

START_TEST(test_kill_mid_queue_every_job_done_once)
{
        enum { N = 6 };
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        for (int i = 0; i < N; i++) {
                char shp[32];
                snprintf(shp, sizeof(shp), "shp_kill%d", i);
                seed_shipment(shp);
        }
        /* slow answers so that the kill lands with fetches in flight */
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/shipments/\",\"delay_ms\":1500,\"count\":3}",
                                      NULL, 0), 201);
        start_syncd(&d, API_KEY, "5", "0");
        for (int i = 0; i < N; i++) {
                char shp[32], ev[32];
                snprintf(shp, sizeof(shp), "shp_kill%d", i);
                snprintf(ev, sizeof(ev), "evt_kill%d", i);
                post_tracker(d.port, ev, shp);
        }
        /* kill as soon as a fetch is in flight (waiting for an exact number of
         * running jobs could miss it and find them all done) */
        ck_assert_int_eq(db_wait_long(c, "SELECT least(count(*), 1) FROM sync_jobs WHERE status = 'running'",
                                      1, 20000), 1);
        daemon_stop(&d, SIGKILL);
        long running = db_long(c, "SELECT count(*) FROM sync_jobs WHERE status = 'running'", NULL);
        fprintf(stderr, "killed with %ld jobs running\n", running);
        ck_assert_int_ge(running, 1);
        start_syncd(&d, API_KEY, "5", "0");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE status = 'done'", N, 30000), N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT count(DISTINCT object_id) FROM sync_jobs", NULL), N);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE synced_at IS NOT NULL", NULL), N);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

static void
seed_event(int i, const char *created)
{
        char ev[32], shp[32];
        snprintf(ev, sizeof(ev), "evt_bf%02d", i);
        snprintf(shp, sizeof(shp), "shp_bf%02d", i);
        char *b = tracker_event(ev, shp, created);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
        seed_shipment(shp);
        free(b);
}

START_TEST(test_backfill_recovers_missed_events_once)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        for (int i = 0; i < 5; i++) {
                char created[40];
                snprintf(created, sizeof(created), "2025-06-01T10:0%d:00Z", i);
                seed_event(i, created);
        }
        /* two of them were delivered as webhooks; three never were */
        start_syncd(&d, API_KEY, "20", "0");
        for (int i = 0; i < 2; i++) {
                char ev[32], shp[32];
                snprintf(ev, sizeof(ev), "evt_bf%02d", i);
                snprintf(shp, sizeof(shp), "shp_bf%02d", i);
                char created[40];
                snprintf(created, sizeof(created), "2025-06-01T10:0%d:00Z", i);
                char *b = tracker_event(ev, shp, created);
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        double t0 = (double)(clock_real_ms() / 1000u);
        start_syncd(&d, API_KEY, "20", "1");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_bf%'",
                                      5, 20000), 5);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_bf04'", 1, 10000), 1);
        ck_assert_double_ge(daemon_metric_wait(d.port, "easypost_sync_backfill_runs_total{outcome=\"completed\"}",
                                               1, 10000), 1);
        double ts = daemon_metric(d.port, "easypost_sync_backfill_last_success_timestamp_seconds");
        ck_assert_msg(ts >= t0 && ts <= (double)(clock_real_ms() / 1000u) + 1, "last success %.0f, start %.0f",
                      ts, t0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE source = 'backfill'", NULL), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE source = 'webhook'", NULL), 2);
        /* recovered bodies are projected like webhooks */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL), 5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id LIKE 'trk_bf%'", NULL), 5);
        /* newer events after the cursor; one also arrives as a webhook meanwhile */
        seed_event(5, "2025-06-01T11:00:00Z");
        seed_event(6, "2025-06-01T11:01:00Z");
        char *b = tracker_event("evt_bf06", "shp_bf06", "2025-06-01T11:01:00Z");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
        free(b);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_bf%'",
                                      7, 20000), 7);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_bf06'", 1, 10000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM (SELECT event_id FROM webhook_events "
                                    "GROUP BY 1 HAVING count(*) > 1) d", NULL), 0);
        /* the list is paged from the newest down (before_id), never with after_id */
        char resp[65536];
        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        ck_assert_ptr_null(strstr(resp, "after_id"));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * An event whose delivery attempts EasyPost has no body for is stored from
 * the events list, which has no result: a degraded copy. The real delivery
 * that arrives later replaces it (answered "stored", not "duplicate"): the
 * row holds the delivered bytes and the tracker is projected.
 */
START_TEST(test_listed_copy_replaced_by_the_delivery)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[256];

        wipe(c);
        seed_event(20, "2025-06-02T10:00:00Z");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf20/payloads\",\"status\":200,"
                                      "\"body\":{\"payloads\":[]},\"count\":-1}", NULL, 0), 201);
        start_syncd(&d, API_KEY, "20", "1");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf20' "
                                         "AND partial AND source = 'backfill'", 1, 20000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_bf20'", NULL), 0);
        char *b = tracker_event("evt_bf20", "shp_bf20", "2025-06-02T10:00:00Z");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"stored\""));
        const char *pv[1] = { "evt_bf20" };
        PGresult *r = PQexecParams(c, "SELECT raw, status, source, partial FROM webhook_events "
                                      "WHERE event_id = $1", 1, NULL, pv, NULL, NULL, 0);
        ck_assert_int_eq(PQntuples(r), 1);
        ck_assert_str_eq(PQgetvalue(r, 0, 0), b);
        ck_assert_str_eq(PQgetvalue(r, 0, 1), "projected");
        ck_assert_str_eq(PQgetvalue(r, 0, 2), "webhook");
        ck_assert_str_eq(PQgetvalue(r, 0, 3), "f");
        PQclear(r);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_bf20'", NULL), 1);
        /* once full, another copy is a duplicate again */
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"duplicate\""));
        free(b);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A recovered body backfill cannot use (it does not parse) is counted, as a
 * failed attempt too, and the cursor stays at its event; the next run, once
 * the body is right, recovers it and moves the cursor.
 */
START_TEST(test_backfill_cursor_stays_before_an_unusable_event)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        seed_event(30, "2025-06-03T10:00:00Z");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf30/payloads\",\"status\":200,"
                                      "\"body\":{\"payloads\":[{\"object\":\"Payload\",\"request_body\":"
                                      "\"{\\\"id\\\":\\\"evt_bf30\\\", truncated\"}]},\"count\":-1}",
                                      NULL, 0), 201);
        start_syncd(&d, API_KEY, "20", "1");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM backfill_failures WHERE event_id = 'evt_bf30' "
                                         "AND attempts >= 2 AND last_error LIKE 'body not usable: %'", 1, 30000), 1);
        ck_assert_int_ge(daemon_metric(d.port, "easypost_sync_backfill_unusable_total"), 2);
        /* the cursor stays at it (listed again, it included) */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor' "
                                    "AND value <> 'evt_bf30'", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf30'", NULL), 0);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf30' "
                                         "AND status = 'projected'", 1, 20000), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM backfill_failures", 0, 20000), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor' "
                                    "AND value = 'evt_bf30'", NULL), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A 401 in the middle of a backfill run stops it (cursor kept); after SIGHUP
 * (the key fixed) the next run starts again and completes.
 */
START_TEST(test_backfill_401_mid_run_resumes_after_sighup)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        for (int i = 40; i < 43; i++) {
                char created[40];
                snprintf(created, sizeof(created), "2025-06-04T10:0%d:00Z", i - 40);
                seed_event(i, created);
        }
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf41/payloads\",\"status\":401,"
                                      "\"count\":1}", NULL, 0), 201);
        start_syncd(&d, API_KEY, "1", "1");
        ck_assert(wait_status(d.port, "/readyz", 200, 10000));
        for (int i = 0; i < 200 && stat_long("by_path", "/v2/events/evt_bf41/payloads") < 1; i++)
                usleep(50 * 1000);
        ck_assert_int_eq(stat_long("by_path", "/v2/events/evt_bf41/payloads"), 1);
        /* stopped: the cursor stays, nothing more is asked of the API */
        usleep(1500 * 1000);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'", NULL), 0);
        ck_assert_int_eq(stat_long("by_path", "/v2/events/evt_bf41/payloads"), 1);
        ck_assert_double_ge(daemon_metric_wait(d.port, "easypost_sync_backfill_runs_total{outcome=\"failed\"}",
                                               1, 10000), 1);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_backfill_runs_total{outcome=\"completed\"}"), 0);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_backfill_last_success_timestamp_seconds"), 0);
        ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor' "
                                         "AND value = 'evt_bf42'", 1, 20000), 1);
        ck_assert_double_ge(daemon_metric_wait(d.port, "easypost_sync_backfill_runs_total{outcome=\"completed\"}",
                                               1, 10000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id IN "
                                    "('evt_bf40', 'evt_bf41', 'evt_bf42') AND status = 'projected'", NULL), 3);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/* The arrival times (ms) of the requests the fake answered whose URI starts
 * with prefix, oldest first. */
static size_t
arrivals(const char *prefix, long long *t, size_t cap)
{
        static char resp[262144];
        json_t *r;
        size_t i, n = 0;

        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        json_array_foreach(json_object_get(o, "recent"), i, r) {
                const char *uri = json_string_value(json_object_get(r, "uri"));
                if (uri && strncmp(uri, prefix, strlen(prefix)) == 0 && n < cap)
                        t[n++] = (long long)json_integer_value(json_object_get(r, "t_ms"));
        }
        json_decref(o);
        return n;
}

static void
start_replica(struct daemon *d, const char *name)
{
        char url[128], id[64];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(id, sizeof(id), "EASYPOST_SYNC_INSTANCE_ID=%s", name);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_BACKFILL_INTERVAL=" BF_SLOT_S,
                              id, "EASYPOST_SYNC_METRICS_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

static double
recovered_by(const struct daemon *a, const struct daemon *b)
{
        return daemon_metric(a->port, "easypost_sync_backfill_events_total") +
               daemon_metric(b->port, "easypost_sync_backfill_events_total");
}

static long
payload_fetches(int i)
{
        char path[64];
        snprintf(path, sizeof(path), "/v2/events/evt_bf%02d/payloads", i);
        return stat_long("by_path", path);
}

/*
 * Two replicas with the same key and a short backfill_interval: one run at a
 * time across them, however long a run takes. One payload is answered only
 * after four slots, so the run waiting for it outlasts them: no list request
 * (a run starting) arrives while it waits, every payload is fetched once and
 * each missed event is recovered once. A replica killed with -9 in the middle
 * of its run blocks no later slot for longer than its lease: a new one runs.
 */
START_TEST(test_backfill_elected_once_per_slot_across_replicas)
{
        enum { SLOW_MS = 4 * BF_SLOT_MS };
        PGconn *c = db_open();
        struct daemon a, b, n;
        long long slow[4], lists[256];
        char rule[160];

        wipe(c);
        for (int i = 50; i < 53; i++) {
                char created[40];
                snprintf(created, sizeof(created), "2025-06-05T10:0%d:00Z", i - 50);
                seed_event(i, created);
        }
        snprintf(rule, sizeof(rule), "{\"path_prefix\":\"/v2/events/evt_bf51/payloads\",\"delay_ms\":%d,"
                                     "\"count\":1}", SLOW_MS);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults", rule, NULL, 0), 201);
        start_replica(&a, "replica-a");
        start_replica(&b, "replica-b");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE source = 'backfill'", 3,
                                      60000), 3);
        seed_event(53, "2025-06-05T11:00:00Z");
        seed_event(54, "2025-06-05T11:01:00Z");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE source = 'backfill'", 5,
                                      60000), 5);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_bf54'", 1, 30000), 1);
        /* the run that waited for the slow payload ran alone all along */
        ck_assert_int_eq(arrivals("/v2/events/evt_bf51/payloads", slow, 4), 1);
        size_t k = arrivals("/v2/events?", lists, 256);
        for (size_t i = 0; i < k; i++)
                ck_assert_msg(lists[i] <= slow[0] || lists[i] >= slow[0] + SLOW_MS,
                              "a run started %lld ms into another run's wait of %d ms", lists[i] - slow[0],
                              SLOW_MS);
        for (int i = 50; i < 55; i++)
                ck_assert_msg(payload_fetches(i) == 1, "evt_bf%02d: payloads fetched %ld times", i,
                              payload_fetches(i));
        ck_assert_double_eq(recovered_by(&a, &b), 5);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_bf5%'", NULL), 5);

        /* both die with a run's list request unanswered; a new replica runs a later slot */
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events\",\"delay_ms\":60000,\"count\":1}", NULL, 0),
                         201);
        for (int i = 0; i < 300 && stat_long("in_flight", NULL) < 1; i++)
                usleep(100 * 1000);
        ck_assert_int_eq(stat_long("in_flight", NULL), 1);
        long listed = stat_long("by_path", "/v2/events");
        daemon_stop(&a, SIGKILL);
        daemon_stop(&b, SIGKILL);
        seed_event(55, "2025-06-05T12:00:00Z");
        start_replica(&n, "replica-n");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf55'"
                                         " AND source = 'backfill'", 1, 60000), 1);
        ck_assert_int_gt(stat_long("by_path", "/v2/events"), listed);
        ck_assert_int_eq(daemon_stop(&n, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * An event whose payloads the API answers 500 for ever does not hold back
 * the events listed after it (stored in the first run), and after
 * sync_max_attempts runs it is set aside: stored from its list item as a
 * dead letter with the error, and the cursor moves past it. It is fetched
 * no more, and the failures counted for it are gone.
 */
START_TEST(test_backfill_sets_aside_an_event_that_keeps_failing)
{
        PGconn *c = db_open();
        struct daemon d;
        char url[128], keyenv[128], v[512];

        wipe(c);
        seed_event(60, "2025-06-06T10:00:00Z");
        seed_event(61, "2025-06-06T10:01:00Z");
        /* its 500s began a day ago: no longer waited out (see the next test) */
        db_exec(c, "INSERT INTO backfill_failures (event_id, attempts, first_at) "
                   "VALUES ('evt_bf60', 0, now() - interval '25 hours')");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf60/payloads\",\"status\":500,"
                                      "\"count\":-1}", NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        /* one fetch at a time: the failing event's answer comes before the next one's */
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_API_RATE=20", "EASYPOST_SYNC_API_CONCURRENCY=1",
                              "EASYPOST_SYNC_BACKFILL_INTERVAL=1", "EASYPOST_SYNC_SYNC_MAX_ATTEMPTS=3",
                              "EASYPOST_SYNC_SYNC_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf61' "
                                         "AND source = 'backfill' AND status = 'projected'", 1, 30000), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf60' "
                                         "AND status = 'failed' AND partial", 1, 60000), 1);
        q1s(c, "SELECT error FROM webhook_events WHERE event_id = $1", "evt_bf60", v, sizeof(v));
        ck_assert_msg(strncmp(v, "set aside by backfill after 3 failed attempts: fetching its payloads: HTTP 500",
                              78) == 0, "%s", v);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_bf61'", 1, 20000), 1);
        ck_assert_int_eq(payload_fetches(60), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM backfill_failures", NULL), 0);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_backfill_set_aside_total"), 1);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_backfill_unrecovered_total"), 1);
        /* later runs go on past it */
        seed_event(62, "2025-06-06T10:02:00Z");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_bf62'", 1, 20000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf62' "
                                    "AND status = 'projected'", NULL), 1);
        ck_assert_int_eq(payload_fetches(60), 3);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * An EasyPost incident on the payloads (503 to every fetch of one event)
 * that outlasts sync_max_attempts runs does not set the event aside: it
 * holds the cursor, and once the API answers again it is stored whole, with
 * its payload, not from its list item.
 */
START_TEST(test_backfill_waits_out_an_api_incident)
{
        PGconn *c = db_open();
        struct daemon d;
        char url[128], keyenv[128];

        wipe(c);
        seed_event(70, "2025-06-07T10:00:00Z");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf70/payloads\",\"status\":503,"
                                      "\"count\":-1}", NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_API_RATE=20", "EASYPOST_SYNC_BACKFILL_INTERVAL=1",
                              "EASYPOST_SYNC_SYNC_MAX_ATTEMPTS=1", "EASYPOST_SYNC_SYNC_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM backfill_failures WHERE event_id = 'evt_bf70' "
                                         "AND attempts >= 3", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf70'", NULL), 0);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_bf70' "
                                         "AND status = 'projected' AND NOT partial", 1, 60000), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM backfill_failures", 0, 20000), 0);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_backfill_set_aside_total"), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A job that waits in the pacer's queue behind a 429 pause longer than its
 * lease stays its worker's (the lease is renewed while it waits): another
 * replica does not claim it, it is fetched once, in one attempt.
 */
START_TEST(test_sync_lease_covers_the_wait_in_the_pacer_queue)
{
        PGconn *c = db_open();
        struct daemon a, b;
        char url[128], keyenv[128];

        wipe(c);
        seed_shipment("shp_q1");
        seed_shipment("shp_q2");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/shipments/shp_q1\",\"status\":429,"
                                      "\"retry_after\":15,\"count\":1}", NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        /* a lease of api_timeout + 5 = 7 s, shorter than the pause */
        const char *env_a[] = { url, keyenv, "EASYPOST_SYNC_API_TIMEOUT=2", "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                                "EASYPOST_SYNC_SYNC_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=replica-a", NULL };
        const char *env_b[] = { url, keyenv, "EASYPOST_SYNC_API_TIMEOUT=2", "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                                "EASYPOST_SYNC_SYNC_INTERVAL=1", "EASYPOST_SYNC_INSTANCE_ID=replica-b", NULL };
        ck_assert_int_eq(daemon_start(&a, env_a), 0);
        post_tracker(a.port, "evt_q1", "shp_q1");
        for (int i = 0; i < 300 && stat_long("by_path", "/v2/shipments/shp_q1") < 1; i++)
                usleep(50 * 1000);
        ck_assert_int_eq(stat_long("by_path", "/v2/shipments/shp_q1"), 1);
        /* claimed while the pacer is paused: it waits in the queue */
        post_tracker(a.port, "evt_q2", "shp_q2");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_q2' "
                                         "AND status = 'running' AND instance_id = 'replica-a'", 1, 20000), 1);
        ck_assert_int_eq(daemon_start(&b, env_b), 0);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_q2' "
                                         "AND status = 'done'", 1, 60000), 1);
        ck_assert_int_eq(stat_long("by_path", "/v2/shipments/shp_q2"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_q2' "
                                    "AND attempts = 1 AND instance_id = 'replica-a'", NULL), 1);
        ck_assert_int_eq(daemon_stop(&b, SIGTERM), 0);
        ck_assert_int_eq(daemon_stop(&a, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

static size_t
discard_cb(char *p, size_t size, size_t n, void *arg)
{
        (void)p;
        (void)arg;
        return size * n;
}

/* A keep-alive client asking /readyz every 20 ms for ms, one connection. */
static pid_t
poll_readyz(unsigned port, int ms)
{
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char url[64];
                snprintf(url, sizeof(url), "http://127.0.0.1:%u/readyz", port);
                CURL *h = curl_easy_init();
                curl_easy_setopt(h, CURLOPT_URL, url);
                curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
                curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_cb);
                for (int t = 0; t < ms; t += 20) {
                        curl_easy_perform(h);
                        usleep(20 * 1000);
                }
                curl_easy_cleanup(h);
                _exit(0);
        }
        return pid;
}

/*
 * SIGTERM while a commit is stalled behind a lock, a keep-alive client
 * polls /readyz and a backfill request is in flight: the daemon answers what
 * it holds, frees everything in order and exits 0 (under ASan: no report).
 */
START_TEST(test_sigterm_with_stalled_commit_poller_and_backfill_in_flight)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        char url[128], keyenv[128];

        wipe(c);
        seed_event(50, "2025-06-05T10:00:00Z");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/events/evt_bf50/payloads\",\"delay_ms\":8000,"
                                      "\"count\":-1}", NULL, 0), 201);
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_BACKFILL_INTERVAL=1", "EASYPOST_SYNC_API_TIMEOUT=20",
                              "EASYPOST_SYNC_SHUTDOWN_TIMEOUT=2", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        for (int i = 0; i < 200 && stat_long("by_path", "/v2/events/evt_bf50/payloads") < 1; i++)
                usleep(50 * 1000);
        ck_assert_int_eq(stat_long("by_path", "/v2/events/evt_bf50/payloads"), 1);

        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE");
        pid_t sender = fork();
        ck_assert_int_ge(sender, 0);
        if (sender == 0) {
                char *b = tracker_event("evt_stall50", "shp_stall50", "2025-06-05T10:00:00Z");
                int st = post_event(d.port, b, strlen(b), NULL, 0);
                _exit(st == 503 ? 0 : 1);
        }
        pid_t poller = poll_readyz(d.port, 6000);
        for (int i = 0; i < 200 && daemon_metric(d.port, "easypost_sync_queue_depth") < 1; i++)
                usleep(20 * 1000);
        ck_assert_int_ge(daemon_metric(d.port, "easypost_sync_queue_depth"), 1);
        usleep(200 * 1000);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        int ws;
        ck_assert_int_eq(waitpid(sender, &ws, 0), sender);
        ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the stalled webhook did not get 503");
        ck_assert_int_eq(waitpid(poller, &ws, 0), poller);
        /* the stalled batch's backend outlives its client: end it before the lock goes */
        db_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE query LIKE '%eps_ingest_batch(%' AND pid <> pg_backend_pid()");
        db_exec(locker, "ROLLBACK");
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

/*
 * A claim is (instance, attempt): once a worker's lease has run out and
 * another worker holds the job, the first one's late answer changes nothing.
 */
START_TEST(test_sync_job_transitions_are_fenced)
{
        PGconn *c = db_open();
        char id[64], v[256];

        wipe(c);
        db_exec(c, "INSERT INTO sync_jobs (kind, object_id) VALUES ('shipment', 'shp_fence')");
        q1s(c, "SELECT id || '/' || attempts FROM eps_sync_claim(1, 'worker-a', 30, 10)", NULL, v, sizeof(v));
        ck_assert_msg(strstr(v, "/1") != NULL, "%s", v);
        snprintf(id, sizeof(id), "%.36s", v);
        db_exec(c, "UPDATE sync_jobs SET locked_until = now() - interval '1 second'");
        q1s(c, "SELECT attempts || '' FROM eps_sync_claim(1, 'worker-b', 30, 10)", NULL, v, sizeof(v));
        ck_assert_str_eq(v, "2");
        /* worker-a answers late: fail, retry, release and apply are all refused */
        q1s(c, "SELECT eps_sync_fail($1::uuid, 'late', 500, 'worker-a', 1)::text", id, v, sizeof(v));
        q1s(c, "SELECT coalesce(eps_sync_retry($1::uuid, 'late', 500, 0, 'worker-a', 1, 10), 'refused')",
            id, v, sizeof(v));
        ck_assert_str_eq(v, "refused");
        q1s(c, "SELECT eps_sync_release($1::uuid, 'late', 401, 'worker-a', 1)::text", id, v, sizeof(v));
        q1s(c, "SELECT eps_sync_apply($1::uuid, '{\"id\":\"shp_fence\"}', 'worker-a', 1, 10, 0)", id, v,
            sizeof(v));
        ck_assert_str_eq(v, "gone");
        q1s(c, "SELECT status || '/' || instance_id || '/' || attempts || '/' || coalesce(last_error, '') "
               "FROM sync_jobs WHERE id = $1::uuid", id, v, sizeof(v));
        ck_assert_str_eq(v, "running/worker-b/2/");
        /* worker-b's own answer counts */
        q1s(c, "SELECT eps_sync_retry($1::uuid, 'HTTP 500', 500, 0, 'worker-b', 2, 10)", id, v, sizeof(v));
        ck_assert_str_eq(v, "pending");
        PQfinish(c);
}
END_TEST

/*
 * A fetched object the schema refuses (a negative rate) is an attempt with
 * its error recorded, not a silent re-fetch every lease; after
 * sync_max_attempts the job ends 'failed' with that error, and /metrics
 * counts it.
 */
START_TEST(test_apply_error_counts_and_attempts_are_capped)
{
        PGconn *c = db_open();
        struct daemon d;
        char v[512];

        wipe(c);
        char *shp = shipment_json("shp_badrate");
        char *p = strstr(shp, "\"6.07\"");
        ck_assert_ptr_nonnull(p);
        memcpy(p, "\"-5.0\"", 6);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", shp, NULL, 0), 201);
        free(shp);
        char url[128], keyenv[128];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_API_RATE=20", "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_SYNC_INTERVAL=1", "EASYPOST_SYNC_SYNC_MAX_ATTEMPTS=2",
                              "EASYPOST_SYNC_METRICS_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        post_tracker(d.port, "evt_badrate", "shp_badrate");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_badrate' "
                                         "AND status = 'failed'", 1, 30000), 1);
        q1s(c, "SELECT attempts || '/' || last_error FROM sync_jobs WHERE object_id = $1", "shp_badrate", v,
            sizeof(v));
        ck_assert_msg(strncmp(v, "2/gave up after 2 attempts: applying it: 23514", 46) == 0, "%s", v);
        ck_assert_int_eq(stat_long("by_path", "/v2/shipments/shp_badrate"), 2);
        ck_assert_int_ge(daemon_metric(d.port, "easypost_sync_sync_job_attempts_total{outcome=\"failed\"}"), 1);
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_sync_jobs{state=\"failed\"}", 1, 15000), 1);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_sync_jobs{state=\"pending\"}"), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * An EasyPost incident longer than the first attempts' backoff (503 on every
 * fetch) does not end a job after sync_max_attempts: it goes on, and once
 * the API answers again the shipment is filled. A job a day old that still
 * meets only 503s ends 'failed' at sync_max_attempts.
 */
START_TEST(test_sync_job_outlasts_an_api_incident)
{
        PGconn *c = db_open();
        struct daemon d;
        char v[512];

        wipe(c);
        char *shp = shipment_json("shp_incident");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", shp, NULL, 0), 201);
        free(shp);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/shipments/\",\"status\":503,\"count\":-1}",
                                      NULL, 0), 201);
        char url[128], keyenv[128];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_API_RATE=20", "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_SYNC_INTERVAL=1", "EASYPOST_SYNC_SYNC_MAX_ATTEMPTS=2", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        post_tracker(d.port, "evt_incident", "shp_incident");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_incident' "
                                         "AND attempts >= 3", 1, 60000), 1);
        q1s(c, "SELECT status FROM sync_jobs WHERE object_id = $1", "shp_incident", v, sizeof(v));
        ck_assert_msg(strcmp(v, "pending") == 0 || strcmp(v, "running") == 0, "%s", v);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_incident' "
                                         "AND status = 'done'", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipments WHERE easypost_id = 'shp_incident' "
                                    "AND rate = 6.07", NULL), 1);

        /* a day old: sync_max_attempts ends it */
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/shipments/\",\"status\":503,\"count\":-1}",
                                      NULL, 0), 201);
        db_exec(c, "INSERT INTO sync_jobs (kind, object_id, created_at) "
                   "VALUES ('shipment', 'shp_incident', now() - interval '25 hours')");
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_jobs WHERE object_id = 'shp_incident' "
                                         "AND status = 'failed'", 1, 60000), 1);
        q1s(c, "SELECT attempts || '/' || last_error FROM sync_jobs WHERE object_id = $1 AND status = 'failed'",
            "shp_incident", v, sizeof(v));
        ck_assert_msg(strncmp(v, "2/gave up after 2 attempts: HTTP 503", 36) == 0, "%s", v);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A pending event whose projection fails (here a trigger refuses its tracker
 * the way a missing partition did: a check_violation naming no constraint)
 * is stored 'failed' with its error and never taken again: the events
 * behind it are projected, and the projected counter counts only those.
 */
START_TEST(test_projector_fails_a_poison_row_and_goes_on)
{
        PGconn *c = db_open();
        struct daemon d;
        char v[512];

        wipe(c);
        db_exec(c, "CREATE OR REPLACE FUNCTION test_poison_tracker() RETURNS trigger LANGUAGE plpgsql AS $$"
                   " BEGIN IF NEW.easypost_id = 'trk_poison1' THEN RAISE EXCEPTION USING"
                   " ERRCODE = 'check_violation', MESSAGE = 'no partition of relation found for row'; END IF;"
                   " RETURN NEW; END $$");
        db_exec(c, "DROP TRIGGER IF EXISTS test_poison ON trackers");
        db_exec(c, "CREATE TRIGGER test_poison BEFORE INSERT OR UPDATE ON trackers FOR EACH ROW"
                   " EXECUTE FUNCTION test_poison_tracker()");
        const char *env[] = { "EASYPOST_SYNC_PROJECTION=deferred", NULL };
        ck_assert_int_eq(daemon_start(&d, env), 0);
        post_tracker(d.port, "evt_poison1", "shp_poison1");
        post_tracker(d.port, "evt_good1", "shp_good1");
        /* the counters move when the projector has its answer, after the commit */
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_projected_deferred_total", 1, 20000), 1);
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_projection_failed_deferred_total", 1, 20000),
                            1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_good1'", NULL), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_poison1' "
                                    "AND status = 'failed'", NULL), 1);
        q1s(c, "SELECT error FROM webhook_events WHERE event_id = $1", "evt_poison1", v, sizeof(v));
        ck_assert_msg(strncmp(v, "23514: no partition", 19) == 0, "%s", v);
        /* a later event: projected, and the poison was not taken again meanwhile */
        post_tracker(d.port, "evt_good2", "shp_good2");
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_projected_deferred_total", 2, 20000), 2);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_good2'", NULL), 1);
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_projection_failed_deferred_total"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM projection_queue", NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE status <> 'projected'"
                                    " AND event_id <> 'evt_poison1'", NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        db_exec(c, "DROP TRIGGER test_poison ON trackers");
        db_exec(c, "DROP FUNCTION test_poison_tracker()");
        PQfinish(c);
}
END_TEST

/* Seeds events evt_pg<from>..<to-1> (batch.created: no sync job), one a
 * second from base_min:00 on 2025-08-01, in one control request. */
static void
seed_pages(int from, int to, int base_min)
{
        struct strbuf b = { 0 };

        strbuf_printf(&b, "[");
        for (int i = from; i < to; i++)
                strbuf_printf(&b, "%s{\"id\":\"evt_pg%03d\",\"object\":\"Event\",\"mode\":\"test\","
                                  "\"description\":\"batch.created\",\"created_at\":\"2025-08-01T10:%02d:%02dZ\","
                                  "\"result\":{\"id\":\"batch_pg%03d\",\"object\":\"Batch\"}}",
                              i > from ? "," : "", i, base_min + (i - from) / 60, (i - from) % 60, i);
        strbuf_printf(&b, "]");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b.data, NULL, 0), 201);
        strbuf_free(&b);
}

/* A daemon whose backfill runs every second, at 50 API requests a second. */
static void
start_backfill(struct daemon *d)
{
        char url[128], keyenv[128];

        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(keyenv, sizeof(keyenv), "EASYPOST_API_KEY=%s", API_KEY);
        const char *env[] = { url, keyenv, "EASYPOST_SYNC_API_RATE=50", "EASYPOST_SYNC_BACKFILL_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

/*
 * The backfill pages /events from the newest down with before_id and stops
 * at the cursor: 150 newer events over two pages are all recovered once,
 * and an event older than the cursor that was never stored is not listed.
 */
START_TEST(test_backfill_pages_down_to_the_cursor)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[65536];

        wipe(c);
        seed_pages(0, 3, 0);
        start_backfill(&d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_pg002'", 1, 30000), 1);
        /* an event older than the cursor that was never stored: below it, not listed again */
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects",
                                      "{\"id\":\"evt_pgold\",\"object\":\"Event\",\"mode\":\"test\","
                                      "\"description\":\"batch.created\",\"created_at\":\"2025-07-01T10:00:00Z\","
                                      "\"result\":{\"id\":\"batch_pgold\",\"object\":\"Batch\"}}", NULL, 0), 201);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
        seed_pages(3, 153, 10);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_pg152'", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_pg%'", NULL),
                         153);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_pgold'", NULL), 0);
        ck_assert_int_eq(stat_long("by_path", "/v2/events/evt_pgold/payloads"), 0);
        for (int i = 0; i < 3; i++) {
                char path[64];
                snprintf(path, sizeof(path), "/v2/events/evt_pg%03d/payloads", i);
                ck_assert_int_eq(stat_long("by_path", path), 0);
        }
        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "/v2/events?page_size=100&before_id=evt_pg053"));
        ck_assert_ptr_null(strstr(resp, "after_id"));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A cursor at evt_pg002 (a first run over 3 events), then 153 newer events
 * over two pages, with the fault rules page2_faults for the list requests
 * of the next start (whose first page is listed as usual), and that start.
 */
static void
backfill_two_pages_with_faults(PGconn *c, struct daemon *d, const char *page2_faults)
{
        char rules[1024];

        wipe(c);
        seed_pages(0, 3, 0);
        start_backfill(d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_pg002'", 1, 30000), 1);
        ck_assert_int_eq(daemon_stop(d, SIGTERM), 0);
        seed_pages(3, 156, 10);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
        snprintf(rules, sizeof(rules), "[{\"path_prefix\":\"/v2/events\",\"delay_ms\":1},%s]", page2_faults);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults", rules, NULL, 0), 201);
        start_backfill(d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_pg155'", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_pg%'", NULL),
                         156);
}

/*
 * A list page answered 200 with no event list (a proxy's maintenance page):
 * the run stops there, the cursor stays, and the next run recovers every
 * event, instead of the cursor moving over the ones below that page.
 */
START_TEST(test_backfill_page_without_an_event_list_keeps_the_cursor)
{
        PGconn *c = db_open();
        struct daemon d;

        /* the second page an HTML page, then every event recovered */
        backfill_two_pages_with_faults(c, &d, "{\"path_prefix\":\"/v2/events\",\"status\":200,"
                                              "\"body\":\"<html><body>down for maintenance</body></html>\"}");
        ck_assert(daemon_metric(d.port, "easypost_sync_backfill_runs_total{outcome=\"failed\"}") >= 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A 429 on a list page is waited out and the same page sent again: the run
 * that met it completes (no failed run), instead of ending and listing its
 * first pages again from the cursor, which under steady rate limiting would
 * never reach the pages below them.
 */
START_TEST(test_backfill_waits_out_a_429_on_a_list_page)
{
        PGconn *c = db_open();
        struct daemon d;

        /* the second page rate limited once, then every event recovered */
        backfill_two_pages_with_faults(c, &d, "{\"path_prefix\":\"/v2/events\",\"status\":429,"
                                              "\"retry_after\":1}");
        ck_assert_int_eq(stat_long("by_status", "429"), 1);
        /* the run's end is counted once the daemon has read its saved cursor back */
        ck_assert(daemon_metric_wait(d.port, "easypost_sync_backfill_runs_total{outcome=\"completed\"}", 1, 15000) >= 1);
        ck_assert(daemon_metric(d.port, "easypost_sync_backfill_runs_total{outcome=\"failed\"}") == 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * A sweep left by a run stopped at its page cap goes on below the oldest
 * event it listed. When EasyPost no longer lists that event (it keeps events
 * for a limited time, and answers 422 for a cursor it does not know), the
 * listing ends there: the sweep ends, its top becomes the cursor, and the
 * next run recovers the newer events, instead of every run failing on it.
 */
START_TEST(test_backfill_sweep_ends_where_its_event_is_gone)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[65536];

        wipe(c);
        seed_pages(0, 5, 0);
        db_exec(c, "INSERT INTO sync_state (key, value) VALUES ('backfill_sweep',"
                   " '{\"top\": \"evt_pg002\", \"next\": \"evt_pggone\"}')");
        start_backfill(&d);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'"
                                         " AND value = 'evt_pg004'", 1, 60000), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM sync_state WHERE key = 'backfill_sweep'", NULL), 0);
        /* the sweep's top and what is newer, once; nothing below the top */
        ck_assert_int_eq(db_long(c, "SELECT count(DISTINCT event_id) FROM webhook_events"
                                    " WHERE event_id IN ('evt_pg002', 'evt_pg003', 'evt_pg004')", NULL), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_pg%'", NULL), 3);
        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "before_id=evt_pggone"));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

Suite *
sync_suite(void)
{
        Suite *s = suite_create("sync");
        TCase *tc = tcase_create("worker");

        tcase_set_timeout(tc, 90);
        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_add_test(tc, test_tracker_event_fills_shipment);
        tcase_add_test(tc, test_unprojectable_tracker_event_fetches_the_tracker);
        tcase_add_test(tc, test_429_then_200_honours_retry_after);
        tcase_add_test(tc, test_401_stops_worker_without_storm);
        tcase_add_test(tc, test_rate_never_above_api_rate);
        tcase_add_test(tc, test_sync_gauges_without_system_metrics);
        tcase_add_test(tc, test_kill_mid_queue_every_job_done_once);
        tcase_add_test(tc, test_backfill_recovers_missed_events_once);
        tcase_add_test(tc, test_listed_copy_replaced_by_the_delivery);
        tcase_add_test(tc, test_backfill_cursor_stays_before_an_unusable_event);
        tcase_add_test(tc, test_sync_job_transitions_are_fenced);
        tcase_add_test(tc, test_backfill_401_mid_run_resumes_after_sighup);
        tcase_add_test(tc, test_backfill_elected_once_per_slot_across_replicas);
        tcase_add_test(tc, test_sigterm_with_stalled_commit_poller_and_backfill_in_flight);
        tcase_add_test(tc, test_apply_error_counts_and_attempts_are_capped);
        tcase_add_test(tc, test_sync_job_outlasts_an_api_incident);
        tcase_add_test(tc, test_backfill_sets_aside_an_event_that_keeps_failing);
        tcase_add_test(tc, test_backfill_waits_out_an_api_incident);
        tcase_add_test(tc, test_sync_lease_covers_the_wait_in_the_pacer_queue);
        tcase_add_test(tc, test_projector_fails_a_poison_row_and_goes_on);
        tcase_add_test(tc, test_backfill_pages_down_to_the_cursor);
        tcase_add_test(tc, test_backfill_page_without_an_event_list_keeps_the_cursor);
        tcase_add_test(tc, test_backfill_waits_out_a_429_on_a_list_page);
        tcase_add_test(tc, test_backfill_sweep_ends_where_its_event_is_gone);
        suite_add_tcase(s, tc);
        return s;
}
