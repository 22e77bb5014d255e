/*
 * check_webhook_health.c - the EasyPost webhook's own health against the fake
 * API over real HTTP: a disabled webhook is reported (metric, /readyz, one
 * log line); with webhook_auto_enable it is re-enabled once the daemon is
 * healthy and a backfill run recovers the events of the disabled window;
 * without it, reported only; with the database down, no re-enabling until
 * it is back.
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "itest.h"
#include "util.h"

#define API_KEY "EZTKhealthkey0123456789"
#define OUR_URL "https://syncuser:hookpass0123@hooks.example.test/webhooks/easypost" /* Basic auth: a secret */
#define OUR_HOOK "hook_0dfff13cfac411ef87a6010e985f89d4"
#define OTHER_HOOK "hook_9aaaf13cfac411ef87a6010e985f0000"
#define DISABLED_AT "\"2025-03-07T10:00:00Z\""

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

static void
nap(void)
{
        struct timespec ts = { 0, 50 * 1000 * 1000 };
        nanosleep(&ts, NULL);
}

/* A Webhook as EasyPost lists it (the shape of webhook_create_response.json). */
static void
seed_webhook(const char *id, const char *url, const char *disabled_at)
{
        char b[512];
        snprintf(b, sizeof(b),
                 "{\"id\":\"%s\",\"object\":\"Webhook\",\"mode\":\"test\",\"url\":\"%s\","
                 "\"created_at\":\"2025-03-06T19:49:03Z\",\"disabled_at\":%s,\"custom_headers\":[]}",
                 id, url, disabled_at);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
}

/* An event EasyPost holds (with its delivery body) that never reached us. */
static void
seed_event(const char *id)
{
        char *b = make_event(id, "batch.created", "{\"id\":\"batch_wh\",\"object\":\"Batch\"}");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
        free(b);
}

static void
reset(PGconn *c)
{
        db_exec(c, "TRUNCATE webhook_events, projection_queue, sync_jobs, sync_state CASCADE");
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/objects", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
        seed_webhook(OUR_HOOK, OUR_URL, DISABLED_AT);
        seed_webhook(OTHER_HOOK, "https://elsewhere.example.test/hook", DISABLED_AT);
}

static void
start_checked_every(struct daemon *d, const char *auto_enable, bool with_public_url, int interval_s)
{
        char url[128], every[64];
        snprintf(url, sizeof(url), "EASYPOST_SYNC_API_URL=%s", fk.url);
        snprintf(every, sizeof(every), "EASYPOST_SYNC_WEBHOOK_CHECK_INTERVAL=%d", interval_s);
        const char *env[] = { url, "EASYPOST_API_KEY=" API_KEY, every,
                              auto_enable, "EASYPOST_SYNC_BACKFILL_INTERVAL=0",
                              "EASYPOST_SYNC_API_TIMEOUT=5",
                              with_public_url ? "EASYPOST_SYNC_PUBLIC_URL=" OUR_URL : NULL, NULL };
        ck_assert_int_eq(daemon_start(d, env), 0);
}

static void
start_checked(struct daemon *d, const char *auto_enable, bool with_public_url)
{
        start_checked_every(d, auto_enable, with_public_url, 1);
}

/* Requests the fake received for path (its by_path counter). */
static long
fake_requests(const char *path)
{
        char resp[200000];

        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        long n = (long)json_integer_value(json_object_get(json_object_get(o, "by_path"), path));
        json_decref(o);
        return n;
}

/* PATCH requests the fake answered for uri (its request log). */
static int
patches(const char *uri, const char *want_body)
{
        char resp[200000];
        int n = 0;
        size_t i;
        json_t *r;

        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        json_array_foreach(json_object_get(o, "recent"), i, r) {
                const char *m = json_string_value(json_object_get(r, "method"));
                const char *u = json_string_value(json_object_get(r, "uri"));
                const char *b = json_string_value(json_object_get(r, "body"));
                if (m && u && strcmp(m, "PATCH") == 0 && strcmp(u, uri) == 0) {
                        n++;
                        if (want_body)
                                ck_assert_str_eq(b ? b : "(none)", want_body);
                }
        }
        json_decref(o);
        return n;
}

/* Lines of the daemon's log holding needle. */
static int
log_lines(const struct daemon *d, const char *needle)
{
        FILE *f = fopen(d->log, "r");
        char line[4096];
        int n = 0;

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f))
                n += strstr(line, needle) != NULL;
        fclose(f);
        return n;
}

/* Waits until metric >= want; returns its last value. */
static double
wait_metric(const struct daemon *d, const char *metric, double want, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        double v = daemon_metric(d->port, metric);

        while (v < want && clock_mono_us() < end) {
                nap();
                v = daemon_metric(d->port, metric);
        }
        return v;
}

/* Waits until /readyz names the webhook state; returns whether it did. */
static bool
wait_readyz_webhook(const struct daemon *d, const char *state, int timeout_ms)
{
        char want[64], resp[1024];
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;

        snprintf(want, sizeof(want), "\"webhook\":\"%s\"", state);
        do {
                resp[0] = '\0';
                http_req(d->port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp));
                if (strstr(resp, want))
                        return true;
                nap();
        } while (clock_mono_us() < end);
        return false;
}

#define OK_CHECKS "easypost_sync_webhook_checks_total{outcome=\"ok\"}"

/*
 * Disabled and the daemon healthy: reported once, re-enabled through
 * PATCH /webhooks/{id} (ours only: public_url; a failed update is tried
 * again at the next check), and the backfill run it starts recovers the
 * events EasyPost holds for the window; the event that did arrive as a
 * webhook stays as it was.
 */
START_TEST(test_disabled_webhook_reenabled_and_window_backfilled)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[1024];

        reset(c);
        seed_event("evt_whwin00");
        seed_event("evt_whwin01");
        seed_event("evt_whwin02");
        seed_event("evt_whwin03");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/webhooks/\",\"status\":500,\"count\":1}",
                                      NULL, 0), 201);
        start_checked(&d, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", true);
        char *b = make_event("evt_whwin00", "batch.created", "{\"id\":\"batch_wh\",\"object\":\"Batch\"}");
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200); /* before it was disabled */
        free(b);
        ck_assert_int_eq(wait_metric(&d, "easypost_sync_webhooks_reenabled_total", 1, 30000), 1);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, "{}"), 2); /* a 500, then a 200 */
        ck_assert_int_eq(patches("/v2/webhooks/" OTHER_HOOK, NULL), 0);
        ck_assert_int_eq(log_lines(&d, "re-enabling EasyPost webhook " OUR_HOOK " failed"), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_whwin%' "
                                         "AND source = 'backfill'", 3, 30000), 3);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_whwin00' "
                                    "AND source = 'webhook'", NULL), 1);
        /* the next check finds it enabled: reported ok, nothing patched again */
        ck_assert(wait_readyz_webhook(&d, "ok", 20000));
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhooks_disabled"), 0);
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, NULL), 2);
        ck_assert_int_eq(log_lines(&d, "is disabled"), 1);
        ck_assert_int_eq(log_lines(&d, "re-enabled EasyPost webhook " OUR_HOOK), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * The backfill a re-enable asks for, while a replica that died mid-run still
 * holds the backfill lease (for 15 s here), with backfill_interval 0 so that
 * no scheduled run comes after: it is asked again until the lease has run
 * out, and then recovers the window. (It was dropped, as if the run holding
 * the lease covered it: that run may be dead, and one that started before
 * the ask does not list what came after its start.)
 */
START_TEST(test_reenable_backfill_outlasts_a_dead_replicas_lease)
{
        PGconn *c = db_open();
        struct daemon d;

        reset(c);
        seed_event("evt_whdead0");
        seed_event("evt_whdead1");
        db_exec(c, "UPDATE backfill_lease SET holder = 'dead-replica', locked_until = now() + interval '15 s'");
        start_checked(&d, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", true);
        ck_assert_int_eq(wait_metric(&d, "easypost_sync_webhooks_reenabled_total", 1, 30000), 1);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_whdead%' "
                                         "AND source = 'backfill'", 2, 60000), 2);
        ck_assert_int_ge(log_lines(&d, "a run holds the lease; asking again"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * webhook_auto_enable off: reported (metric, /readyz still 200 with
 * "webhook":"disabled", one log line however many checks, tagged
 * webhook_health), never patched,
 * nothing backfilled. A failed check is counted and logged once. Without
 * public_url every webhook of the account counts.
 */
START_TEST(test_disabled_webhook_reported_only)
{
        PGconn *c = db_open();
        struct daemon d;
        char resp[1024];

        reset(c);
        seed_event("evt_whoff01");
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults",
                                      "{\"path_prefix\":\"/v2/webhooks\",\"status\":500,\"count\":2}",
                                      NULL, 0), 201);
        start_checked(&d, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=off", true);
        ck_assert_int_ge(wait_metric(&d, OK_CHECKS, 3, 30000), 3);
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhook_checks_total{outcome=\"failed\"}"), 2);
        ck_assert_int_eq(log_lines(&d, "listing EasyPost webhooks failed: HTTP 500"), 1);
        ck_assert_int_eq(log_lines(&d, "listing EasyPost webhooks works again"), 1);
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhooks_disabled"), 1);
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_msg(strstr(resp, "\"webhook\":\"disabled\"") != NULL, "%s", resp);
        ck_assert_int_eq(log_lines(&d, "EasyPost webhook " OUR_HOOK " is disabled"), 1);
        /* logged under the check's own tag, not the webhook handler's */
        ck_assert_int_eq(log_lines(&d, " mod=webhook_health msg=\"EasyPost webhook " OUR_HOOK " is disabled"), 1);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, NULL), 0);
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhooks_reenabled_total"), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events", NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);

        start_checked(&d, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=off", false);
        ck_assert_int_ge(wait_metric(&d, OK_CHECKS, 1, 30000), 1);
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhooks_disabled"), 2);
        ck_assert_int_eq(patches("/v2/webhooks/" OTHER_HOOK, NULL), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

/*
 * The webhook is found disabled while PostgreSQL is down: reported, but not
 * re-enabled (deliveries would still fail) until the database is back.
 */
START_TEST(test_no_reenable_while_database_down)
{
        PGconn *c = db_open();
        struct daemon d;

        reset(c);
        PQfinish(c);
        seed_webhook(OUR_HOOK, OUR_URL, "null");
        start_checked(&d, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", true);
        ck_assert(wait_readyz_webhook(&d, "ok", 30000));
        pg_ctl("stop-immediate");
        seed_webhook(OUR_HOOK, OUR_URL, DISABLED_AT); /* EasyPost gave up on us meanwhile */
        ck_assert(wait_readyz_webhook(&d, "disabled", 30000));
        double checks = daemon_metric(d.port, OK_CHECKS);
        ck_assert_int_ge(wait_metric(&d, OK_CHECKS, checks + 2, 30000), checks + 2);
        ck_assert_int_eq(daemon_metric(d.port, "easypost_sync_webhooks_disabled"), 1);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, NULL), 0);
        ck_assert_int_eq(log_lines(&d, "waiting for the database"), 1);
        pg_ctl("start");
        ck_assert_int_eq(wait_metric(&d, "easypost_sync_webhooks_reenabled_total", 1, 60000), 1);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, "{}"), 1);
        ck_assert(wait_readyz_webhook(&d, "ok", 20000));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
}
END_TEST

/*
 * Two replicas on one database: one check per slot between them, and a
 * webhook disabled while both run is re-enabled once, by the elected one;
 * the other reports what that check recorded.
 */
START_TEST(test_one_replica_checks_each_slot)
{
        PGconn *c = db_open();
        struct daemon d1, d2;

        reset(c);
        PQfinish(c);
        seed_webhook(OUR_HOOK, OUR_URL, "null");
        seed_webhook(OTHER_HOOK, "https://elsewhere.example.test/hook", "null");
        /* 2 s slots: the elected replica's list and PATCH (paced 200 ms apart)
         * end well inside its slot, so the next slot's replica lists the
         * webhook enabled even on a slow machine */
        start_checked_every(&d1, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", true, 2);
        start_checked_every(&d2, "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on", true, 2);
        ck_assert(wait_readyz_webhook(&d1, "ok", 30000));
        ck_assert(wait_readyz_webhook(&d2, "ok", 30000));
        long lists0 = fake_requests("/v2/webhooks");
        uint64_t t0 = clock_mono_us();
        seed_webhook(OUR_HOOK, OUR_URL, DISABLED_AT);
        uint64_t end = t0 + 30000000u;
        while (daemon_metric(d1.port, "easypost_sync_webhooks_reenabled_total") +
                       daemon_metric(d2.port, "easypost_sync_webhooks_reenabled_total") < 1 &&
               clock_mono_us() < end)
                nap();
        /* a few more slots, in which neither may re-enable it again */
        double checks = daemon_metric(d1.port, OK_CHECKS) + daemon_metric(d2.port, OK_CHECKS);
        end = clock_mono_us() + 30000000u;
        while (daemon_metric(d1.port, OK_CHECKS) + daemon_metric(d2.port, OK_CHECKS) < checks + 3 &&
               clock_mono_us() < end)
                nap();
        long lists = fake_requests("/v2/webhooks") - lists0;
        double secs = (double)(clock_mono_us() - t0) / 1e6;
        ck_assert_int_eq(daemon_metric(d1.port, "easypost_sync_webhooks_reenabled_total") +
                                 daemon_metric(d2.port, "easypost_sync_webhooks_reenabled_total"),
                         1);
        ck_assert_int_eq(patches("/v2/webhooks/" OUR_HOOK, "{}"), 1);
        /* one list per 2 s slot at most (plus the slot begun at t0), not one per replica */
        ck_assert_msg(lists >= 3 && lists <= (long)(secs / 2) + 2, "%ld lists in %.1f s", lists, secs);
        ck_assert(wait_readyz_webhook(&d1, "ok", 20000));
        ck_assert(wait_readyz_webhook(&d2, "ok", 20000));
        ck_assert_int_eq(daemon_stop(&d2, SIGTERM), 0);
        ck_assert_int_eq(daemon_stop(&d1, SIGTERM), 0);
}
END_TEST

Suite *
webhook_health_suite(void)
{
        Suite *s = suite_create("webhook_health");
        TCase *tc = tcase_create("check");

        tcase_set_timeout(tc, 150);
        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_add_test(tc, test_disabled_webhook_reenabled_and_window_backfilled);
        tcase_add_test(tc, test_reenable_backfill_outlasts_a_dead_replicas_lease);
        tcase_add_test(tc, test_disabled_webhook_reported_only);
        tcase_add_test(tc, test_no_reenable_while_database_down);
        tcase_add_test(tc, test_one_replica_checks_each_slot);
        suite_add_tcase(s, tc);
        return s;
}
