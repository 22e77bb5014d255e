/*
 * check_machines.c - the pacer and backfill state machines driven directly,
 * in this process on an event loop of its own, against tests/fake/fake_easypost
 * scripted with fault rules (and stopped with SIGSTOP to stall it).
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "ingest.h"
#include "itest.h"
#include "pacer.h"
#include "projector.h"
#include "util.h"
#include "uuid7.h"

#define KEY "EZTKmachinekey0123456789"

static struct fake_api fk;

static void
fake_up(void)
{
        ck_assert_int_eq(fake_start(&fk, KEY), 0);
}

static void
fake_down(void)
{
        fake_stop(&fk);
}

static void
fake_clean(void)
{
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/objects", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "DELETE", "/_control/faults", NULL, NULL, 0), 200);
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/reset", "{}", NULL, 0), 200);
}

static void
fault(const char *rule)
{
        ck_assert_int_eq(fake_control(&fk, "POST", "/_control/faults", rule, NULL, 0), 201);
}

static long
fake_stat(const char *key)
{
        char resp[65536];
        ck_assert_int_eq(fake_control(&fk, "GET", "/_control/stats", NULL, resp, sizeof(resp)), 200);
        json_t *o = json_loads(resp, 0, NULL);
        ck_assert_ptr_nonnull(o);
        json_t *v = json_object_get(o, key);
        long n = json_is_integer(v) ? (long)json_integer_value(v) : 0;
        json_decref(o);
        return n;
}

/* ---- driving a loop until a condition holds ---- */

struct until {
        struct event_base *base;
        struct event *tick;
        bool (*cond)(void *arg);
        void *arg;
        uint64_t end_us;
        bool met;
};

static void
until_cb(evutil_socket_t fd, short what, void *arg)
{
        struct until *u = arg;
        struct timeval tv = { 0, 20000 };

        (void)fd;
        (void)what;
        if (u->cond(u->arg)) {
                u->met = true;
                event_base_loopexit(u->base, NULL);
        } else if (clock_mono_us() >= u->end_us) {
                event_base_loopexit(u->base, NULL);
        } else {
                evtimer_add(u->tick, &tv);
        }
}

/* Runs base until cond(arg) is true (checked every 20 ms) or ms pass; true when it held. */
static bool
run_until(struct event_base *base, bool (*cond)(void *), void *arg, int ms)
{
        struct until u = { .base = base, .cond = cond, .arg = arg,
                           .end_us = clock_mono_us() + (uint64_t)ms * 1000u };
        struct timeval now = { 0, 0 };

        u.tick = evtimer_new(base, until_cb, &u);
        evtimer_add(u.tick, &now);
        event_base_dispatch(base);
        event_free(u.tick);
        return u.met;
}

static bool
never(void *arg)
{
        (void)arg;
        return false;
}

/* ---- the pacer ---- */

struct answers {
        int want; /* answered() holds once n + aborted reach it */
        int n, aborted, sync_calls;
        long status[32], retry_after[32];
        uint64_t answered_us[32];
        bool in_get; /* set around pacer_get: an answer inside it is a synchronous callback */
};

static void
answer_cb(const struct httpc_resp *r, void *arg)
{
        struct answers *a = arg;

        if (a->in_get)
                a->sync_calls++;
        if (r->rc == CURLE_ABORTED_BY_CALLBACK) {
                a->aborted++;
                return;
        }
        ck_assert_int_lt(a->n, 32);
        a->status[a->n] = r->status;
        a->retry_after[a->n] = r->retry_after_s;
        a->answered_us[a->n] = r->answered_us;
        a->n++;
}

static bool
answered(void *arg)
{
        const struct answers *a = arg;
        return a->n + a->aborted >= a->want;
}

static void
get_n(struct pacer *p, struct answers *a, const char *path, int n)
{
        for (int i = 0; i < n; i++) {
                a->in_get = true;
                pacer_get(p, pacer_url(p, path, NULL, NULL), answer_cb, a);
                a->in_get = false;
        }
}

static struct pacer *
pacer_for_test(struct event_base *base, long rate, long conc, long max_retry_after)
{
        struct pacer_settings st = { .api_url = fk.url, .api_key = KEY, .rate = rate,
                                     .concurrency = conc, .timeout_s = 30,
                                     .max_retry_after = max_retry_after };
        return pacer_new(base, &st);
}

static void
stall_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        ck_assert_int_eq(kill(fk.pid, *(int *)arg), 0);
}

/*
 * The rate holds at the API even when the API stalls: requests the pacer
 * started while the fake was stopped arrive together when it resumes, and
 * spacing by start alone then lets api_rate + 1 arrive within one second.
 */
START_TEST(test_pacer_rate_holds_at_the_api_through_a_stall)
{
        enum { N = 12 };
        struct event_base *base = event_base_new();
        struct answers a = { .want = N };
        int sig_stop = SIGSTOP, sig_cont = SIGCONT;

        fake_clean();
        struct pacer *p = pacer_for_test(base, 3, 4, 300);
        struct event *stop = evtimer_new(base, stall_cb, &sig_stop);
        struct event *cont = evtimer_new(base, stall_cb, &sig_cont);
        struct timeval t_stop = { 0, 150000 }, t_cont = { 0, 750000 };
        evtimer_add(stop, &t_stop);
        evtimer_add(cont, &t_cont);
        get_n(p, &a, "/shipments/shp_machine%s%s", N);
        ck_assert_int_eq(a.sync_calls, 0);
        ck_assert(run_until(base, answered, &a, 60000));
        kill(fk.pid, SIGCONT); /* whatever happened, never leave it stopped */
        long maxw = fake_stat("max_per_1s_window");
        fprintf(stderr, "pacer through a stall: %d answers, at most %ld in any 1 s window (rate 3)\n",
                a.n, maxw);
        ck_assert_int_eq(a.n, N);
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(a.status[i], 404);
        ck_assert_int_le(maxw, 3);
        ck_assert_int_eq(fake_stat("requests"), N);
        event_free(stop);
        event_free(cont);
        pacer_free(p);
        event_base_free(base);
}
END_TEST

/* A 429 pauses every request for its Retry-After, capped at max_retry_after. */
START_TEST(test_pacer_429_pauses_everyone_for_capped_retry_after)
{
        struct event_base *base = event_base_new();
        struct answers a = { .want = 3 };

        fake_clean();
        fault("{\"path_prefix\":\"/v2/shipments/\",\"status\":429,\"retry_after\":30,\"count\":1}");
        struct pacer *p = pacer_for_test(base, 50, 1, 2);
        get_n(p, &a, "/shipments/shp_pause%s%s", 3);
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.n, 3);
        ck_assert_int_eq(a.status[0], 429);
        ck_assert_int_eq(a.retry_after[0], 2); /* capped for the owner too */
        ck_assert_int_eq(a.status[1], 404);
        double gap = (double)(a.answered_us[1] - a.answered_us[0]) / 1e6;
        ck_assert_msg(gap >= 2.0, "next request answered %.2f s after the 429", gap);
        ck_assert_msg(gap < 25.0, "the pause was not capped: %.2f s", gap);
        pacer_free(p);
        event_base_free(base);
}
END_TEST

static bool
fake_saw_two(void *arg)
{
        (void)arg;
        return fake_stat("requests") >= 2;
}

/*
 * A 401 drops what waits, and what is asked for until pacer_reload (each
 * owner told, never inside its call), and sends nothing; then it goes on.
 */
START_TEST(test_pacer_401_stops_until_reload)
{
        struct event_base *base = event_base_new();
        struct answers a = { .want = 4 };

        fake_clean();
        fault("{\"path_prefix\":\"/v2/shipments/\",\"status\":401,\"count\":1}");
        struct pacer *p = pacer_for_test(base, 50, 1, 300);
        get_n(p, &a, "/shipments/shp_auth%s%s", 4);
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(a.status[0], 401);
        ck_assert_int_eq(a.aborted, 3); /* queued behind it: dropped, each owner told */
        ck_assert(pacer_auth_failed(p));
        /* stopped: a new request is dropped too, not sent */
        get_n(p, &a, "/shipments/shp_auth%s%s", 1);
        a.want = 5;
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.aborted, 4);
        ck_assert(!run_until(base, fake_saw_two, NULL, 1000));
        ck_assert_int_eq(fake_stat("requests"), 1);
        ck_assert_int_eq(a.n, 1);
        struct pacer_settings st = { .api_url = fk.url, .api_key = KEY, .rate = 50, .concurrency = 1,
                                     .timeout_s = 30, .max_retry_after = 300 };
        pacer_reload(p, &st);
        ck_assert(!pacer_auth_failed(p));
        get_n(p, &a, "/shipments/shp_auth%s%s", 1);
        a.want = 6;
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.status[1], 404);
        ck_assert_int_eq(a.sync_calls, 0);
        pacer_free(p);
        event_base_free(base);
}
END_TEST

static bool
fake_saw_one(void *arg)
{
        (void)arg;
        return fake_stat("requests") >= 1;
}

/*
 * A 401 for a request sent with the previous key, answered after a reload
 * brought a new one, does not stop the pacer: the new key is not the one
 * rejected, and the next request goes out with it. (The reload comes once
 * the request has reached the API, whose answer the fault holds back 3 s.)
 */
START_TEST(test_pacer_401_for_the_previous_key_keeps_the_new_one)
{
        struct event_base *base = event_base_new();
        struct answers a = { .want = 1 };

        fake_clean();
        fault("{\"path_prefix\":\"/v2/shipments/\",\"status\":401,\"delay_ms\":3000,\"count\":1}");
        struct pacer_settings st = { .api_url = fk.url, .api_key = "EZTKrevokedkey", .rate = 50, .concurrency = 1,
                                     .timeout_s = 30, .max_retry_after = 300 };
        struct pacer *p = pacer_new(base, &st);
        get_n(p, &a, "/shipments/shp_rekey%s%s", 1);
        ck_assert(run_until(base, fake_saw_one, NULL, 30000));
        st.api_key = KEY;
        pacer_reload(p, &st);
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(a.status[0], 401);
        ck_assert(!pacer_auth_failed(p));
        get_n(p, &a, "/shipments/shp_rekey%s%s", 1);
        a.want = 2;
        ck_assert(run_until(base, answered, &a, 30000));
        ck_assert_int_eq(a.n, 2);
        ck_assert_int_eq(a.status[1], 404);
        ck_assert_int_eq(fake_stat("auth_failures"), 0);
        pacer_free(p);
        event_base_free(base);
}
END_TEST

/* ---- backfill ---- */

struct bf_rig {
        struct event_base *base;
        struct ingest *ingest;
        struct pacer *pacer;
        struct backfill *bf;
        struct uuid7_gen uuid;
        PGconn *db;
};

static void
seed_events(const char *prefix, int n)
{
        for (int i = 0; i < n; i++) {
                char b[1024];
                snprintf(b, sizeof(b),
                         "{\"id\":\"evt_%s%02d\",\"object\":\"Event\",\"mode\":\"test\","
                         "\"description\":\"batch.created\",\"created_at\":\"2025-07-01T10:%02d:00Z\","
                         "\"result\":{\"id\":\"batch_%s%02d\",\"object\":\"Batch\"}}",
                         prefix, i, i, prefix, i);
                ck_assert_int_eq(fake_control(&fk, "POST", "/_control/objects", b, NULL, 0), 201);
        }
}

static void
rig_up(struct bf_rig *r, long concurrency, long interval)
{
        const char *ci = getenv("TEST_PG_CONNINFO");
        struct pacer_settings ps = { .api_url = fk.url, .api_key = KEY, .rate = 50,
                                     .concurrency = concurrency, .timeout_s = 30,
                                     .max_retry_after = 300 };
        struct backfill_settings bs = { .interval = interval, .concurrency = concurrency };

        ck_assert_ptr_nonnull(ci);
        memset(r, 0, sizeof(*r));
        r->db = db_open();
        db_exec(r->db, "DELETE FROM sync_state WHERE key = 'backfill_cursor'");
        uuid7_init(&r->uuid);
        r->base = event_base_new();
        r->ingest = ingest_new(r->base, ci, 1, 100, 50, false);
        r->pacer = pacer_new(r->base, &ps);
        r->bf = backfill_new(r->base, ci, r->pacer, r->ingest, &r->uuid, &bs);
        ingest_start(r->ingest);
        backfill_start(r->bf);
}

static void
rig_down(struct bf_rig *r)
{
        backfill_stop(r->bf);
        pacer_stop(r->pacer);
        ingest_close(r->ingest);
        pacer_free(r->pacer);
        backfill_free(r->bf);
        ingest_free(r->ingest);
        event_base_free(r->base);
        PQfinish(r->db);
}

static struct backfill_stats
bf_stats(const struct bf_rig *r)
{
        struct backfill_stats st;

        backfill_snapshot(r->bf, &st);
        return st;
}

static bool
run_ended(void *arg)
{
        struct backfill_stats st = bf_stats(arg);
        return st.runs_completed + st.runs_failed >= 1 && st.state == BACKFILL_IDLE;
}

static bool
run_completed(void *arg)
{
        struct backfill_stats st = bf_stats(arg);
        return st.runs_completed >= 1 && st.state == BACKFILL_IDLE;
}

static bool
two_runs_completed(void *arg)
{
        struct backfill_stats st = bf_stats(arg);
        return st.runs_completed >= 2 && st.state == BACKFILL_IDLE;
}

static bool
run_in_progress(void *arg)
{
        return bf_stats(arg).state != BACKFILL_IDLE;
}

/* For 2.5 s no request is made and no run starts: runs stays at runs. */
static void
assert_quiet(struct bf_rig *r, uint64_t runs)
{
        long asked = fake_stat("requests");

        run_until(r->base, never, NULL, 2500);
        ck_assert_int_eq(fake_stat("requests"), asked);
        ck_assert_int_eq(bf_stats(r).runs, runs);
}

/*
 * A 401 in the middle of the payload fetches, with more events left than
 * fetches in flight: the run ends (failed, back to idle, cursor kept), no
 * new run starts on the rejected key, and after the reload the next run
 * completes and saves the cursor.
 */
START_TEST(test_backfill_401_mid_fetch_ends_the_run_and_reload_resumes)
{
        struct bf_rig r;
        struct backfill_stats st;
        char prefix[32];

        fake_clean();
        snprintf(prefix, sizeof(prefix), "m401_%d_", (int)getpid());
        seed_events(prefix, 6);
        char rule[256];
        snprintf(rule, sizeof(rule), "{\"path_prefix\":\"/v2/events/evt_%s01/payloads\",\"status\":401}",
                 prefix);
        fault(rule);
        rig_up(&r, 2, 1);
        ck_assert(run_until(r.base, run_ended, &r, 30000));
        backfill_snapshot(r.bf, &st);
        ck_assert_int_eq(st.runs_failed, 1);
        ck_assert_int_eq(st.runs_completed, 0);
        ck_assert_int_eq(st.state, BACKFILL_IDLE);
        ck_assert_int_eq(st.last_success_unix, 0);
        ck_assert_int_eq(db_long(r.db, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor'", NULL), 0);
        assert_quiet(&r, 1); /* the key is rejected: no run starts, nothing more is asked */
        /* a new key: the next run goes through every state to the end */
        struct pacer_settings ps = { .api_url = fk.url, .api_key = KEY, .rate = 50, .concurrency = 2,
                                     .timeout_s = 30, .max_retry_after = 300 };
        struct backfill_settings bs = { .interval = 1, .concurrency = 2 };
        pacer_reload(r.pacer, &ps);
        backfill_reload(r.bf, &bs);
        ck_assert(run_until(r.base, run_completed, &r, 30000));
        backfill_snapshot(r.bf, &st);
        ck_assert_int_eq(st.runs_completed, 1);
        ck_assert_uint_gt(st.last_success_unix, 0);
        char like[64], newest[64];
        snprintf(like, sizeof(like), "evt_%s%%", prefix);
        snprintf(newest, sizeof(newest), "evt_%s05", prefix);
        ck_assert_int_eq(db_long(r.db, "SELECT count(*) FROM webhook_events WHERE event_id LIKE $1", like), 6);
        ck_assert_int_eq(db_long(r.db, "SELECT count(*) FROM sync_state WHERE key = 'backfill_cursor' "
                                       "AND value = $1", newest), 1);
        rig_down(&r);
}
END_TEST

/* A listing that fails ends the run at once (failed, idle); the next tick tries again and completes. */
START_TEST(test_backfill_list_error_ends_the_run_then_the_next_completes)
{
        struct bf_rig r;
        struct backfill_stats st;
        char prefix[32];

        fake_clean();
        snprintf(prefix, sizeof(prefix), "m500_%d_", (int)getpid());
        seed_events(prefix, 3);
        fault("{\"path_prefix\":\"/v2/events\",\"status\":500,\"count\":1}");
        rig_up(&r, 2, 1);
        ck_assert(run_until(r.base, run_completed, &r, 30000));
        backfill_snapshot(r.bf, &st);
        ck_assert_int_eq(st.runs_failed, 1);
        ck_assert_int_ge(st.runs_completed, 1);
        ck_assert_int_eq(st.recovered, 3);
        ck_assert_int_eq(st.unusable, 0);
        rig_down(&r);
}
END_TEST

/*
 * backfill_interval 0: no run of its own. backfill_now starts one anyway
 * (connecting first), and asked again during a run it starts one more
 * right after it; then nothing more runs.
 */
START_TEST(test_backfill_now_runs_with_interval_off_and_after_the_run_in_progress)
{
        struct bf_rig r;
        struct backfill_stats st;
        char prefix[32];

        fake_clean();
        snprintf(prefix, sizeof(prefix), "mnow_%d_", (int)getpid());
        seed_events(prefix, 3);
        fault("{\"path_prefix\":\"/v2/events\",\"delay_ms\":500,\"count\":1}"); /* the first list waits */
        rig_up(&r, 2, 0);
        run_until(r.base, never, NULL, 1500);
        backfill_snapshot(r.bf, &st);
        ck_assert_int_eq(st.runs, 0);
        ck_assert_int_eq(fake_stat("requests"), 0);
        backfill_now(r.bf);
        ck_assert(run_until(r.base, run_in_progress, &r, 30000));
        backfill_now(r.bf); /* during the run: one more after it */
        ck_assert(run_until(r.base, two_runs_completed, &r, 30000));
        backfill_snapshot(r.bf, &st);
        ck_assert_int_eq(st.runs_completed, 2);
        ck_assert_int_eq(st.runs_failed, 0);
        ck_assert_int_eq(st.recovered, 3);
        char like[64];
        snprintf(like, sizeof(like), "evt_%s%%", prefix);
        ck_assert_int_eq(db_long(r.db, "SELECT count(*) FROM webhook_events WHERE event_id LIKE $1", like), 3);
        assert_quiet(&r, 2);
        rig_down(&r);
}
END_TEST

Suite *
pacer_suite(void)
{
        Suite *s = suite_create("pacer");
        TCase *tc = tcase_create("pacer");

        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_add_test(tc, test_pacer_rate_holds_at_the_api_through_a_stall);
        tcase_add_test(tc, test_pacer_429_pauses_everyone_for_capped_retry_after);
        tcase_add_test(tc, test_pacer_401_stops_until_reload);
        tcase_add_test(tc, test_pacer_401_for_the_previous_key_keeps_the_new_one);
        suite_add_tcase(s, tc);
        return s;
}

Suite *
backfill_suite(void)
{
        Suite *s = suite_create("backfill");
        TCase *tc = tcase_create("backfill");

        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, fake_up, fake_down);
        tcase_add_test(tc, test_backfill_401_mid_fetch_ends_the_run_and_reload_resumes);
        tcase_add_test(tc, test_backfill_list_error_ends_the_run_then_the_next_completes);
        tcase_add_test(tc, test_backfill_now_runs_with_interval_off_and_after_the_run_in_progress);
        suite_add_tcase(s, tc);
        return s;
}

/* ---- the deferred projector, driven directly ---- */

/* One event stored deferred as the daemon stores it: its row, its key queued. */
static const char SQL_DEFER[] =
        "SELECT status FROM eps_ingest_batch(ARRAY[$1::uuid], ARRAY[$2::text], ARRAY['tracker.updated'], "
        "ARRAY['test'], ARRAY[$3::text], ARRAY[$4::text], ARRAY['webhook'], ARRAY['2025-01-02T03:04:05Z'], "
        "NULL, NULL, NULL, true)";

struct pj_rig {
        struct event_base *base;
        struct projector *p;
        PGconn *db;
        uint64_t want_projected, want_failed;
};

static struct projector_stats
pj_stats(const struct pj_rig *r)
{
        struct projector_stats st;

        projector_snapshot(r->p, &st);
        return st;
}

static bool
pj_reached(void *arg)
{
        const struct pj_rig *r = arg;
        struct projector_stats st = pj_stats(r);
        return st.projected >= r->want_projected && st.failed >= r->want_failed;
}

/* Stores a tracker event with n details deferred and hands the projector the
 * snapshot the scanner made of it, as ingest does after the commit; its row
 * id into uuid. */
static void
pj_event(struct pj_rig *r, const char *evid, const char *trk, int n, char uuid[37])
{
        char body[4096], details[3072] = "";
        size_t off = 0;

        for (int i = 0; i < n; i++)
                off += (size_t)snprintf(details + off, sizeof(details) - off,
                                        "%s{\"object\":\"TrackingDetail\",\"message\":\"scan %d\","
                                        "\"status\":\"in_transit\",\"datetime\":\"2025-01-01T0%d:00:00Z\","
                                        "\"source\":\"USPS\",\"tracking_location\":{\"city\":\"X\"}}",
                                        i ? "," : "", i, i);
        snprintf(body, sizeof(body),
                 "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"tracker.updated\",\"mode\":\"test\","
                 "\"created_at\":\"2025-01-02T03:04:05Z\",\"result\":{\"id\":\"%s\",\"object\":\"Tracker\","
                 "\"tracking_code\":\"EZ_%s\",\"carrier\":\"USPS\",\"status\":\"in_transit\","
                 "\"updated_at\":\"2025-01-02T03:04:05Z\",\"tracking_details\":[%s]}}",
                 evid, trk, trk, details);
        char *id = db_text(r->db, "SELECT eps_uuid7()::text", NULL);
        snprintf(uuid, 37, "%s", id);
        free(id);
        const char *pv[4] = { uuid, evid, trk, body };
        PGresult *res = PQexecParams(r->db, SQL_DEFER, 4, NULL, pv, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1, "%s",
                      PQresultErrorMessage(res));
        ck_assert_str_eq(PQgetvalue(res, 0, 0), "pending");
        PQclear(res);
        struct epevent ev;
        struct err e;
        ck_assert_int_eq(epevent_parse(body, strlen(body), &ev, &e), 0);
        ck_assert_ptr_nonnull(ev.trk);
        projector_take(r->p, uuid, ev.object_id, ev.trk); /* it owns the snapshot now */
        ev.trk = NULL;
        epevent_fini(&ev);
}

static long
pj_count(struct pj_rig *r, const char *sql, const char *param)
{
        return db_long(r->db, sql, param);
}

/*
 * The projector projects the snapshots ingest hands it (eps_project_typed),
 * each event once: a key another transaction holds is skipped, not waited
 * for, and projected from its raw row once free; a typed batch whose
 * projection raises is rolled back whole and its events go through the
 * queue's batches, where the poison one alone is failed; a snapshot handed
 * to a stopped projector is dropped and its event stays queued.
 */
START_TEST(test_projector_typed_batches_take_each_key_once)
{
        const char *ci = getenv("TEST_PG_CONNINFO");
        struct pj_rig r = { .base = event_base_new() };
        char u[37], u2[37], u6[37];
        struct projector_stats st;

        ck_assert_ptr_nonnull(ci);
        r.db = db_open();
        db_exec(r.db, "TRUNCATE shipment_events, trackers, shipments, webhook_events, projection_queue, "
                      "sync_jobs CASCADE");
        r.p = projector_new(r.base, ci, 30000);
        pj_event(&r, "evt_pj1", "trk_pj1", 2, u);
        pj_event(&r, "evt_pj2", "trk_pj2", 3, u2);
        pj_event(&r, "evt_pj3", "trk_pj3", 1, u);
        /* another projector holds evt_pj2's key */
        PGconn *holder = db_open();
        db_exec(holder, "BEGIN");
        ck_assert_int_eq(db_long(holder, "SELECT count(*) FROM (SELECT 1 FROM projection_queue WHERE id = $1::uuid "
                                         "FOR UPDATE) k", u2), 1);
        projector_start(r.p);
        projector_kick(r.p);
        r.want_projected = 2;
        ck_assert(run_until(r.base, pj_reached, &r, 60000));
        st = pj_stats(&r);
        ck_assert_uint_eq(st.typed, 2);
        ck_assert_uint_eq(st.failed, 0);
        /* the held key is passed over, batch after batch, not waited for */
        run_until(r.base, never, NULL, 1500);
        st = pj_stats(&r);
        ck_assert_uint_eq(st.projected, 2);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM projection_queue WHERE id = $1::uuid", u2), 1);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM projection_queue", NULL), 1);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM trackers", NULL), 2);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM shipment_events", NULL), 3);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM webhook_events WHERE status = 'projected' "
                                      "AND event_id IN ('evt_pj1', 'evt_pj3')", NULL), 2);

        /* a typed batch with a poison event in it */
        db_exec(r.db, "CREATE OR REPLACE FUNCTION test_pj_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                      " BEGIN IF NEW.easypost_id = 'trk_pj4' THEN RAISE EXCEPTION USING"
                      " ERRCODE = 'check_violation', MESSAGE = 'refused'; END IF; RETURN NEW; END $$");
        db_exec(r.db, "CREATE TRIGGER test_pj_poison BEFORE INSERT OR UPDATE ON trackers FOR EACH ROW"
                      " EXECUTE FUNCTION test_pj_poison()");
        pj_event(&r, "evt_pj4", "trk_pj4", 1, u);
        pj_event(&r, "evt_pj5", "trk_pj5", 2, u);
        projector_kick(r.p);
        r.want_projected = 3;
        r.want_failed = 1;
        ck_assert(run_until(r.base, pj_reached, &r, 60000));
        st = pj_stats(&r);
        ck_assert_uint_eq(st.projected, 3);
        ck_assert_uint_eq(st.failed, 1);
        ck_assert_uint_eq(st.typed, 2);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM webhook_events WHERE event_id = 'evt_pj4' "
                                      "AND status = 'failed' AND error LIKE '23514%'", NULL), 1);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_pj5'", NULL), 1);
        db_exec(r.db, "DROP TRIGGER test_pj_poison ON trackers");
        db_exec(r.db, "DROP FUNCTION test_pj_poison()");

        /* the held key, released: projected from its raw row, once */
        db_exec(holder, "ROLLBACK");
        r.want_projected = 4;
        ck_assert(run_until(r.base, pj_reached, &r, 60000));
        st = pj_stats(&r);
        ck_assert_uint_eq(st.projected, 4);
        ck_assert_uint_eq(st.typed, 2);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM projection_queue", NULL), 0);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM trackers", NULL), 4);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM shipment_events", NULL), 2 + 3 + 1 + 2);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM shipment_events e JOIN webhook_events w "
                                      "ON w.id = e.webhook_event_id WHERE w.event_id = 'evt_pj2'", NULL), 3);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM webhook_events WHERE status = 'projected'", NULL), 4);

        /* stopped: the snapshot is dropped, the event waits in the queue */
        projector_stop(r.p);
        pj_event(&r, "evt_pj6", "trk_pj6", 1, u6);
        st = pj_stats(&r);
        ck_assert_uint_eq(st.dropped, 1);
        ck_assert_int_eq(pj_count(&r, "SELECT count(*) FROM projection_queue WHERE id = $1::uuid", u6), 1);
        projector_free(r.p);
        event_base_free(r.base);
        PQfinish(holder);
        PQfinish(r.db);
}
END_TEST

Suite *
projector_suite(void)
{
        Suite *s = suite_create("projector");
        TCase *tc = tcase_create("projector");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_projector_typed_batches_take_each_key_once);
        suite_add_tcase(s, tc);
        return s;
}
