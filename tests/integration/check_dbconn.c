/*
 * check_dbconn.c - db_conn against the real PostgreSQL: a failure found
 * while a statement is pushed is reported from the loop, after the push has
 * returned, never from inside it.
 */
#include <event2/event.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "db_conn.h"
#include "itest.h"

struct probe {
        struct event_base *base;
        bool returned;     /* db_conn_query has returned */
        int called;        /* the query's callback ran this often */
        bool called_early; /* ... once before db_conn_query returned */
        bool lost;         /* ... with no result (connection lost) */
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

Suite *
dbconn_suite(void)
{
        Suite *s = suite_create("dbconn");
        TCase *tc = tcase_create("dbconn");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_failure_during_push_calls_back_after_return);
        suite_add_tcase(s, tc);
        return s;
}
