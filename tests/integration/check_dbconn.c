/*
 * check_dbconn.c - db_conn against the real PostgreSQL: a failure found
 * while a statement is pushed is reported from the loop, after the push has
 * returned, never from inside it; a statement stuck on a lock is dropped at
 * the deadline (the connection comes back) or cancelled by the per-transaction
 * statement_timeout (which does not outlive its transaction); every session,
 * the daemon's too, runs in UTC whatever the database's default TimeZone.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "db_conn.h"
#include "itest.h"

struct probe {
        struct event_base *base;
        bool returned;     /* db_conn_query has returned */
        int called;        /* the query's callback ran this often */
        bool called_early; /* ... once before db_conn_query returned */
        bool lost;         /* ... with no result (connection lost) */
        char state[8];     /* the SQLSTATE of an error result */
        char value[64];    /* the first value of a result with rows */
};

static void
on_ready(struct db_conn *c, void *arg)
{
        (void)c;
        event_base_loopbreak(((struct probe *)arg)->base);
}

static const struct db_conn_hooks hooks = { .on_ready = on_ready };

static void
query_cb(PGresult *res, void *arg)
{
        struct probe *p = arg;

        p->called++;
        p->called_early |= !p->returned;
        p->lost = res == NULL;
        p->state[0] = p->value[0] = '\0';
        if (res && PQresultErrorField(res, PG_DIAG_SQLSTATE))
                snprintf(p->state, sizeof(p->state), "%s", PQresultErrorField(res, PG_DIAG_SQLSTATE));
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
                snprintf(p->value, sizeof(p->value), "%s", PQgetvalue(res, 0, 0));
        event_base_loopbreak(p->base);
}

/* Runs the loop until a callback breaks it, at most ms. */
static void
run_for(struct event_base *base, int ms)
{
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
}

START_TEST(test_failure_during_push_calls_back_after_return)
{
        struct probe p = { .base = event_base_new() }, q = { .base = p.base };
        struct db_conn *c = db_conn_new(p.base, getenv("TEST_PG_CONNINFO"), "probe", &hooks, &p);

        db_conn_start(c);
        run_for(p.base, 10000);
        ck_assert_msg(db_conn_ready(c), "no connection to %s", getenv("TEST_PG_CONNINFO"));

        /* p in flight; then the peer goes away and libpq has noticed it
         * (as it would inside any call), so the next send fails */
        ck_assert_int_eq(db_conn_query(c, "SELECT pg_sleep(2)", 0, NULL, query_cb, &p), 0);
        p.returned = true;
        ck_assert_int_eq(shutdown(PQsocket(db_conn_pq(c)), SHUT_RDWR), 0);
        PQconsumeInput(db_conn_pq(c));
        ck_assert_int_eq(PQstatus(db_conn_pq(c)), CONNECTION_BAD);
        int rc = db_conn_query(c, "SELECT 1", 0, NULL, query_cb, &q);
        q.returned = true;
        ck_assert_int_eq(rc, -1); /* refused: q is never called back */
        ck_assert_msg(p.called == 0, "the in-flight query was answered inside db_conn_query");
        ck_assert(!db_conn_ready(c));
        run_for(p.base, 5000);
        ck_assert_int_eq(p.called, 1);
        ck_assert(p.lost);
        ck_assert_int_eq(q.called, 0);

        /* and it comes back by itself */
        run_for(p.base, 10000);
        ck_assert(db_conn_ready(c));
        p.returned = false;
        p.called = 0;
        ck_assert_int_eq(db_conn_query(c, "SELECT 1", 0, NULL, query_cb, &p), 0);
        p.returned = true;
        ck_assert(!p.called_early);
        run_for(p.base, 5000);
        ck_assert_int_eq(p.called, 1);
        ck_assert(!p.lost);
        db_conn_free(c);
        event_base_free(p.base);
}
END_TEST

/* A connection of its own, ready (the loop broken by on_ready). */
static struct db_conn *
probe_conn(struct probe *p)
{
        struct db_conn *c = db_conn_new(p->base, getenv("TEST_PG_CONNINFO"), "probe", &hooks, p);

        db_conn_start(c);
        run_for(p->base, 10000);
        ck_assert_msg(db_conn_ready(c), "no connection to %s", getenv("TEST_PG_CONNINFO"));
        return c;
}

/* Runs sql on c and the loop until its callback (at most ms). */
static void
query(struct db_conn *c, struct probe *p, const char *sql, int ms)
{
        p->called = 0;
        p->returned = false;
        ck_assert_int_eq(db_conn_query(c, sql, 0, NULL, query_cb, p), 0);
        p->returned = true;
        run_for(p->base, ms);
        ck_assert_msg(p->called == 1, "%s: no answer in %d ms", sql, ms);
}

/* Every connection has a deadline from the start; a statement stuck on a
 * lock the test holds is dropped at it, and the connection comes back and
 * works while the lock is still held. */
START_TEST(test_hung_statement_dropped_at_deadline)
{
        struct probe p = { .base = event_base_new() };
        PGconn *locker = db_open();
        struct db_conn *c = probe_conn(&p);

        ck_assert_uint_gt(db_conn_timeout(c), 0); /* a deadline without being told */
        db_conn_set_timeout(c, 1000);
        db_conn_set_limits(c, 0, 0); /* no server-side limit: the deadline must act */
        db_exec(locker, "CREATE TABLE IF NOT EXISTS dbconn_probe (x int)");
        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE dbconn_probe IN ACCESS EXCLUSIVE MODE");
        query(c, &p, "SELECT count(*) FROM dbconn_probe", 20000);
        ck_assert_msg(p.lost, "the stuck statement was answered (%s)", p.state);
        run_for(p.base, 10000); /* on_ready */
        ck_assert(db_conn_ready(c));
        query(c, &p, "SELECT 1", 5000);
        ck_assert(!p.lost);
        ck_assert_str_eq(p.value, "1");
        db_exec(locker, "COMMIT");
        db_conn_free(c);
        PQfinish(locker);
        event_base_free(p.base);
}
END_TEST

/* Without limits of its own a connection's statements get a
 * statement_timeout below its deadline, per transaction: PostgreSQL cancels
 * the stuck one (an error the caller sees, the connection kept), and the
 * setting is gone at the next transaction on the same session, as SET LOCAL
 * (through PgBouncer the session is shared with other clients). */
START_TEST(test_statement_timeout_per_transaction)
{
        struct probe p = { .base = event_base_new() };
        PGconn *locker = db_open();
        struct db_conn *c = probe_conn(&p);

        db_conn_set_timeout(c, 4000); /* statement_timeout: 3 s */
        db_exec(locker, "CREATE TABLE IF NOT EXISTS dbconn_probe (x int)");
        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE dbconn_probe IN ACCESS EXCLUSIVE MODE");
        query(c, &p, "SELECT count(*) FROM dbconn_probe", 20000);
        ck_assert_msg(!p.lost, "the connection was dropped: no statement_timeout");
        ck_assert_str_eq(p.state, "57014"); /* query_canceled */
        ck_assert(db_conn_ready(c));
        ck_assert_uint_eq(db_conn_reconnects(c), 0);
        /* a lock_timeout of its own ends the wait first */
        db_conn_set_limits(c, 3000, 200);
        query(c, &p, "SELECT count(*) FROM dbconn_probe", 20000);
        ck_assert_str_eq(p.state, "55P03"); /* lock_not_available */
        db_exec(locker, "COMMIT");
        /* the same session, no limits sent: the server's defaults are back */
        db_conn_set_limits(c, 0, 0);
        query(c, &p, "SELECT current_setting('statement_timeout') || ' ' || current_setting('lock_timeout')",
              5000);
        ck_assert_str_eq(p.value, "0 0");
        ck_assert_uint_eq(db_conn_reconnects(c), 0);
        db_conn_free(c);
        PQfinish(locker);
        event_base_free(p.base);
}
END_TEST

/* With the database's default TimeZone far from UTC, the daemon's sessions
 * still run in UTC: a tracker's est_delivery_date sent without a zone is
 * stored as that time in UTC (the ingest connection writes it), and a
 * db_conn session reports UTC. */
START_TEST(test_sessions_in_utc)
{
        PGconn *c = db_open();
        struct daemon d;
        struct probe p = { .base = event_base_new() };
        char *db = db_text(c, "SELECT current_database()", NULL), sql[256];

        snprintf(sql, sizeof(sql), "ALTER DATABASE %s SET TimeZone = 'Pacific/Kiritimati'", db);
        db_exec(c, sql);
        struct db_conn *pc = probe_conn(&p);
        query(pc, &p, "SELECT current_setting('TimeZone')", 5000);
        ck_assert_str_eq(p.value, "UTC");
        db_conn_free(pc);
        event_base_free(p.base);

        db_exec(c, "DELETE FROM trackers WHERE easypost_id = 'trk_dbconn_tz'");
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        char *body = make_event("evt_dbconn_tz", "tracker.updated",
                                "{\"id\":\"trk_dbconn_tz\",\"object\":\"Tracker\",\"mode\":\"test\","
                                "\"tracking_code\":\"TZ1\",\"carrier\":\"USPS\",\"status\":\"in_transit\","
                                "\"est_delivery_date\":\"2025-07-01T12:00:00\","
                                "\"updated_at\":\"2025-07-01T00:00:00Z\",\"tracking_details\":[]}");
        ck_assert_int_eq(post_event(d.port, body, strlen(body), NULL, 0), 200);
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = 'trk_dbconn_tz'",
                                      1, 20000), 1);
        char *at = db_text(c, "SELECT to_char(est_delivery_date AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
                              " FROM trackers WHERE easypost_id = 'trk_dbconn_tz'", NULL);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        snprintf(sql, sizeof(sql), "ALTER DATABASE %s RESET TimeZone", db);
        db_exec(c, sql);
        ck_assert_str_eq(at, "2025-07-01 12:00");
        free(at);
        free(body);
        free(db);
        PQfinish(c);
}
END_TEST

Suite *
dbconn_suite(void)
{
        Suite *s = suite_create("dbconn");
        TCase *tc = tcase_create("dbconn");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_failure_during_push_calls_back_after_return);
        tcase_add_test(tc, test_hung_statement_dropped_at_deadline);
        tcase_add_test(tc, test_statement_timeout_per_transaction);
        tcase_add_test(tc, test_sessions_in_utc);
        suite_add_tcase(s, tc);
        return s;
}
