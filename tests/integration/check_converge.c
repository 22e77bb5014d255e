/*
 * check_converge.c - the daemon against the fake API's delivery simulator
 * (tests/fake/fake_easypost.md, "Delivery simulator"): EasyPost's trackers
 * advance and every change arrives as a signed webhook, retried with backoff;
 * the webhook is disabled after repeated failures and nothing is delivered
 * while it is; PostgreSQL stopped through all of that, then started. What
 * must hold whatever the timing: no acknowledged event lost or stored twice,
 * and every tracker in the database equal to EasyPost's within a bounded time.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "itest.h"
#include "util.h"

#define API_KEY "EZTKconvergekey0123456789"
/* the URL EasyPost has on file (a proxy in front of the daemon, say); the
 * simulator delivers to the daemon's own port */
#define PUBLIC_URL "https://hooks.example.test/webhooks/easypost"
/* ITEST_SECRET as EasyPost signs with it: NFKD-normalised */
#define SIM_SECRET "se\\u0301cret"
#define REENABLED "easypost_sync_webhooks_reenabled_total"
#define STATE_MAX (4u << 20)

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

/* Bounds grow when the daemons run under a tool (valgrind: ~20x slower). */
static int
bound_ms(int ms)
{
        const char *w = getenv("TEST_DAEMON_WRAPPER");

        return w && w[0] ? ms * 10 : ms;
}

static void
nap(void)
{
        struct timespec ts = { 0, 50 * 1000 * 1000 };
        nanosleep(&ts, NULL);
}

static void
wipe(PGconn *c)
{
        db_exec(c, "TRUNCATE shipment_events, trackers, shipments, addresses, parcels, customs_infos, "
                   "webhook_events, projection_queue, sync_jobs, sync_state CASCADE");
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/objects", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
}

/* A daemon as a user would run it after an outage: API key, the webhook
 * checked every second and re-enabled, public_url set; no scheduled backfill
 * (the one after re-enabling is the one under test). */
static void
start_daemon(struct daemon *d)
{
        char url[128];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=1",
                              "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", "EASYPOST_SYNC_PUBLIC_URL=" PUBLIC_URL,
                              "EASYPOST_SYNC_BACKFILL_INTERVAL=0", "EASYPOST_SYNC_API_RATE=50",
                              "EASYPOST_SYNC_API_TIMEOUT=5", "EASYPOST_SYNC_SYNC_INTERVAL=1", NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

/* Starts a simulation delivering to d; settings is the rest of the JSON object. */
static void
sim_start(const struct daemon *d, const char *settings)
{
        char b[1024], resp[1024];

        snprintf(b, sizeof(b),
                 "{\"url\":\"http://127.0.0.1:%u/webhooks/easypost\",\"secret\":\"" SIM_SECRET "\","
                 "\"webhook_url\":\"" PUBLIC_URL "\",%s}",
                 d->port, settings);
        ck_assert_msg(fake_control(&fk, "POST", "/_control/sim", b, resp, sizeof(resp)) == 201, "%s", resp);
}

static void
sim_step(int n)
{
        char b[64];

        snprintf(b, sizeof(b), "{\"steps\":%d}", n);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/sim/step", b, NULL, 0), 200);
}

/* GET /_control/sim; the caller decrefs. */
static json_t *
sim_state(void)
{
        char *resp = xmalloc(STATE_MAX);

        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/sim", NULL, resp, STATE_MAX), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_msg(o != NULL, "GET /_control/sim: %.200s", resp);
        free(resp);
        return o;
}

static long
num(const json_t *o, const char *key)
{
        const json_t *v = json_object_get(o, key);

        ck_assert_msg(v != NULL, "no \"%s\" in the simulator's state", key);
        return json_is_boolean(v) ? (long)json_is_true(v) : (long)json_integer_value(v);
}

/* One number of the simulator's state. */
static long
sim_num(const char *key)
{
        json_t *o = sim_state();
        long v = num(o, key);

        json_decref(o);
        return v;
}

/* Polls the simulator until key equals want (bounded); returns the last value. */
static long
sim_wait(const char *key, long want, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)bound_ms(timeout_ms) * 1000u;
        long v;

        while ((v = sim_num(key)) != want && clock_mono_us() < end)
                nap();
        return v;
}

/* Every delivery settled and every event created acknowledged. */
static bool
sim_wait_all_acked(int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)bound_ms(timeout_ms) * 1000u;

        do {
                json_t *o = sim_state();
                bool done = num(o, "pending") == 0 && num(o, "events_acked") == num(o, "events_created");
                json_decref(o);
                if (done)
                        return true;
                nap();
        } while (clock_mono_us() < end);
        return false;
}

/* The ids of the events matching (acked, attempted) as a PostgreSQL text[] literal;
 * -1 in a filter: either. */
static char *
event_ids(const json_t *st, int acked, int attempted, int while_disabled)
{
        size_t cap = 64 + 48 * json_array_size(json_object_get(st, "event_list")), len = 1;
        char *s = xmalloc(cap);
        size_t i;
        json_t *e;

        s[0] = '{';
        json_array_foreach(json_object_get(st, "event_list"), i, e) {
                if ((acked >= 0 && json_is_true(json_object_get(e, "acked")) != acked) ||
                    (attempted >= 0 && (json_integer_value(json_object_get(e, "attempts")) > 0) != attempted) ||
                    (while_disabled >= 0 &&
                     json_is_true(json_object_get(e, "while_disabled")) != while_disabled))
                        continue;
                len += (size_t)snprintf(s + len, cap - len, "%s%s", len > 1 ? "," : "",
                                        json_string_value(json_object_get(e, "id")));
        }
        snprintf(s + len, cap - len, "}");
        return s;
}

/* The trackers (all, or those whose last change fell while the webhook was
 * disabled or not) as JSON [{id, status, details}]. */
static char *
trackers_json(const json_t *st, int last_while_disabled)
{
        json_t *arr = json_array(), *t;
        size_t i;

        json_array_foreach(json_object_get(st, "tracker_list"), i, t) {
                if (last_while_disabled >= 0 &&
                    json_is_true(json_object_get(t, "last_change_while_disabled")) != last_while_disabled)
                        continue;
                json_array_append(arr, t);
        }
        char *s = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        ck_assert_ptr_nonnull(s);
        return s;
}

/* Trackers of the list that the database does not hold as EasyPost does:
 * same status, one shipment_events row per tracking detail. */
#define TRACKERS_DIFFERING                                                                              \
        "SELECT %s FROM jsonb_to_recordset($1::jsonb) AS s(id text, status text, details int) "        \
        "LEFT JOIN trackers t ON t.easypost_id = s.id "                                                \
        "WHERE t.status IS DISTINCT FROM s.status "                                                     \
        "   OR (SELECT count(*) FROM shipment_events e WHERE e.tracker_id = t.id) <> s.details"

static long
trackers_differing(PGconn *c, const char *list)
{
        char sql[1024];

        snprintf(sql, sizeof(sql), "SELECT count(*) FROM (" TRACKERS_DIFFERING ") x", "s.id");
        return db_long(c, sql, list);
}

/* Polls until no tracker of the list differs (bounded); returns how many still do. */
static long
wait_trackers_equal(PGconn *c, const char *list, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)bound_ms(timeout_ms) * 1000u;
        long n;

        while ((n = trackers_differing(c, list)) != 0 && clock_mono_us() < end)
                nap();
        return n;
}

static char *
trackers_differing_text(PGconn *c, const char *list)
{
        char sql[1024];

        snprintf(sql, sizeof(sql), TRACKERS_DIFFERING,
                 "string_agg(s.id || ' ' || coalesce(t.status, 'missing') || '/' || s.status, ', ')");
        return db_text(c, sql, list);
}

/* Events of ids not stored exactly once (webhook_event_ids and webhook_events);
 * whole: also those stored only as listed (partial). */
static long
events_not_stored_once(PGconn *c, const char *ids, bool whole)
{
        return db_long(c, whole ? "SELECT count(*) FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS "
                                  "(SELECT 1 FROM webhook_event_ids i WHERE i.event_id = a.id) OR "
                                  "(SELECT count(*) FROM webhook_events w WHERE w.event_id = a.id "
                                  "AND NOT w.partial) <> 1"
                                : "SELECT count(*) FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS "
                                  "(SELECT 1 FROM webhook_event_ids i WHERE i.event_id = a.id) OR "
                                  "(SELECT count(*) FROM webhook_events w WHERE w.event_id = a.id) <> 1",
                       ids);
}

static long
wait_events_stored_once(PGconn *c, const char *ids, bool whole, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)bound_ms(timeout_ms) * 1000u;
        long n;

        while ((n = events_not_stored_once(c, ids, whole)) != 0 && clock_mono_us() < end)
                nap();
        return n;
}

#define DUPLICATE_DETAILS                                                                               \
        "SELECT count(*) FROM (SELECT 1 FROM shipment_events "                                         \
        "GROUP BY tracker_id, event_datetime, status, message HAVING count(*) > 1) d"

/* The delivery attempts EasyPost recorded for an event (GET /v2/events/{id}/payloads). */
static json_t *
payloads(const char *id)
{
        char path[128], auth[160], resp[200000];
        const char *h[] = { auth, NULL };

        snprintf(path, sizeof(path), "/v2/events/%s/payloads", id);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", API_KEY);
        ck_assert_int_eq(http_req(fk.port, "GET", path, h, NULL, 0, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        json_t *list = json_incref(json_object_get(o, "payloads"));
        json_decref(o);
        ck_assert(json_is_array(list));
        return list;
}

/* The first event of the state matching the filters (see event_ids). */
static const char *
first_event(const json_t *st, int acked, int min_attempts, int while_disabled)
{
        size_t i;
        json_t *e;

        json_array_foreach(json_object_get(st, "event_list"), i, e)
                if ((acked < 0 || json_is_true(json_object_get(e, "acked")) == acked) &&
                    json_integer_value(json_object_get(e, "attempts")) >= min_attempts &&
                    (while_disabled < 0 || json_is_true(json_object_get(e, "while_disabled")) == while_disabled))
                        return json_string_value(json_object_get(e, "id"));
        ck_abort_msg("no such event in the simulation");
        return NULL;
}

/*
 * The simulator from the daemon's side: deliveries answered 503 while
 * PostgreSQL is down are retried and stored once when it is back; after
 * max_failures in a row the webhook is disabled, later events are created
 * and listed but never sent (no payload); the daemon's webhook check
 * re-enables it once PostgreSQL is back, and deliveries resume.
 */
START_TEST(test_simulated_deliveries_retried_disabled_reenabled)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        PQfinish(c);
        start_daemon(&d);
        /* paused: the test steps it; automatic ticks (20 ms) for the last step only */
        sim_start(&d, "\"trackers\":4,\"step\":4,\"max_failures\":6,\"backoff_ms\":20,"
                      "\"backoff_max_ms\":200,\"interval_ms\":20,\"paused\":true");
        sim_step(1);
        ck_assert(sim_wait_all_acked(30000));
        pg_ctl("stop-immediate");
        sim_step(1);
        /* 4 deliveries answered 503, retried until 6 failed in a row */
        ck_assert_int_eq(sim_wait("disabled", 1, 30000), 1);
        ck_assert_int_eq(sim_wait("pending", 0, 30000), 0);
        sim_step(1);
        json_t *st = sim_state();
        ck_assert_int_eq(num(st, "disabled_count"), 1);
        ck_assert_int_ge(num(st, "deliveries_failed"), 6);
        ck_assert_int_eq(num(st, "events_created_while_disabled"), 4);
        ck_assert_int_eq(num(st, "events_acked"), 4);
        json_t *p = payloads(first_event(st, 0, 2, 0)); /* a retried one */
        ck_assert_int_ge(json_array_size(p), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(p, 0), "response_code")), 503);
        json_decref(p);
        p = payloads(first_event(st, 0, 0, 1)); /* never sent */
        ck_assert_int_eq(json_array_size(p), 0);
        json_decref(p);
        p = payloads(first_event(st, 1, 1, 0));
        ck_assert_int_eq(json_array_size(p), 1);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(p, 0), "response_code")), 200);
        json_decref(p);
        json_decref(st);
        /* nothing is sent while disabled, however long */
        ck_assert_int_eq(sim_num("pending"), 0);

        pg_ctl("start");
        ck_assert_int_eq(sim_wait("disabled", 0, 60000), 0);
        ck_assert_int_ge(daemon_metric(d.port, REENABLED), 1);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/sim/resume", "{}", NULL, 0), 200);
        ck_assert_int_eq(sim_wait("done", 1, 30000), 1);
        st = sim_state();
        ck_assert_int_eq(num(st, "disabled_count"), 1);
        ck_assert_int_eq(num(st, "trackers_delivered"), 4);
        ck_assert_int_eq(num(st, "events_acked"), 8); /* the 4 after re-enabling too */
        c = db_open();
        char *acked = event_ids(st, 1, -1, -1), *tried = event_ids(st, -1, 1, -1);
        ck_assert_int_eq(events_not_stored_once(c, acked, true), 0);
        /* the 4 that were retried, then dropped: the backfill finds their payloads */
        ck_assert_int_eq(wait_events_stored_once(c, tried, true, 30000), 0);
        ck_assert_int_eq(db_long(c, DUPLICATE_DETAILS, NULL), 0);
        free(acked);
        free(tried);
        json_decref(st);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * The outage of issue 20, end to end: 48 trackers, 12 advanced per step,
 * 4 changes each. 8 steps delivered; PostgreSQL stopped; a step whose
 * deliveries fail until EasyPost disables the webhook; 5 steps while it is
 * disabled (half the trackers reach delivered unseen); PostgreSQL back, the
 * daemon re-enables the webhook and backfills; the last 2 steps delivered.
 * Then every tracker in the database must equal EasyPost's.
 */
START_TEST(test_converges_after_outage_with_disabled_webhook)
{
        PGconn *c = db_open();
        struct daemon d;

        wipe(c);
        PQfinish(c);
        start_daemon(&d);
        sim_start(&d, "\"trackers\":48,\"step\":12,\"max_failures\":25,\"backoff_ms\":20,"
                      "\"backoff_max_ms\":200,\"interval_ms\":0");
        sim_step(8);
        ck_assert(sim_wait_all_acked(60000));
        ck_assert_int_eq(sim_num("events_created"), 96);

        pg_ctl("stop-immediate");
        sim_step(1);
        ck_assert_int_eq(sim_wait("disabled", 1, 60000), 1);
        sim_step(5);
        ck_assert_int_eq(sim_wait("pending", 0, 30000), 0);
        ck_assert_int_eq(sim_num("events_created_while_disabled"), 60);
        pg_ctl("start");

        ck_assert_int_eq(sim_wait("disabled", 0, 60000), 0);
        sim_step(2);
        ck_assert_int_eq(sim_wait("pending", 0, 60000), 0);
        json_t *st = sim_state();
        ck_assert_int_eq(num(st, "trackers_delivered"), 48);
        ck_assert_int_eq(num(st, "events_created"), 192);
        ck_assert_int_eq(num(st, "disabled_count"), 1);
        ck_assert_int_ge(daemon_metric(d.port, REENABLED), 1);

        c = db_open();
        /* 0 events lost or stored twice: every event the daemon acknowledged
         * is stored once; every one EasyPost attempted comes back whole from
         * the backfill; the rest at least as listed */
        char *acked = event_ids(st, 1, -1, -1), *tried = event_ids(st, -1, 1, -1);
        char *all = event_ids(st, -1, -1, -1);
        ck_assert_int_eq(events_not_stored_once(c, acked, true), 0);
        ck_assert_int_eq(wait_events_stored_once(c, tried, true, 60000), 0);
        ck_assert_int_eq(wait_events_stored_once(c, all, false, 60000), 0);
        ck_assert_int_eq(db_long(c, DUPLICATE_DETAILS, NULL), 0);

        /* the trackers whose last change EasyPost delivered are right */
        char *seen = trackers_json(st, 0), *unseen = trackers_json(st, 1), *every = trackers_json(st, -1);
        ck_assert_int_eq(json_array_size(json_object_get(st, "tracker_list")), 48);
        long nunseen = db_long(c, "SELECT jsonb_array_length($1::jsonb)", unseen);
        ck_assert_int_eq(nunseen, 24);
        long n = wait_trackers_equal(c, seen, 30000);
        if (n != 0) {
                char *which = trackers_differing_text(c, seen);
                ck_abort_msg("%ld trackers whose last change was delivered differ: %s", n, which);
        }

        /* convergence: the trackers whose last change fell while the webhook
         * was disabled can only be read back from the API: the reconciler,
         * started by the re-enable, brings them to EasyPost's status */
        n = wait_trackers_equal(c, every, 30000);
        char *which = n != 0 ? trackers_differing_text(c, every) : NULL;
        long only_unseen = n != 0 ? trackers_differing(c, unseen) : 0;
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0); /* a clean exit either way */
        ck_assert_msg(n == 0,
                      "%ld of 48 trackers differ from EasyPost (db/EasyPost); %ld of them are "
                      "the %ld whose last change fell while the webhook was disabled, which only a "
                      "reconciler reading GET /v2/trackers recovers: %s",
                      n, only_unseen, nunseen, which ? which : "");
        free(which);
        free(seen);
        free(unseen);
        free(every);
        free(acked);
        free(tried);
        free(all);
        json_decref(st);
        PQfinish(c);
}
END_TEST

Suite *
converge_suite(void)
{
        Suite *s = suite_create("converge");
        TCase *tc = tcase_create("outage");

        tcase_set_timeout(tc, 240); /* polls end as soon as their condition holds */
        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_add_test(tc, test_simulated_deliveries_retried_disabled_reenabled);
        tcase_add_test(tc, test_converges_after_outage_with_disabled_webhook);
        suite_add_tcase(s, tc);
        return s;
}
