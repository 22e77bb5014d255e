/*
 * check_httpc.c - Retry-After as the API may send it: seconds, an HTTP-date,
 * values too large to hold, and garbage.
 */
#include <check.h>
#include <time.h>

#include "httpc.h"

START_TEST(test_retry_after_forms)
{
        time_t now = 1445412480; /* Wed, 21 Oct 2015 07:28:00 GMT */

        ck_assert_int_eq(httpc_retry_after("120", now), 120);
        ck_assert_int_eq(httpc_retry_after(" 7\r\n", now), 7);
        ck_assert_int_eq(httpc_retry_after("0", now), 0);
        /* too large: held at the ceiling, never wrapped */
        ck_assert_int_eq(httpc_retry_after("99999999999999999999999999999999", now), HTTPC_RETRY_AFTER_MAX);
        ck_assert_int_eq(httpc_retry_after("86401", now), HTTPC_RETRY_AFTER_MAX);
        /* HTTP-date: the three forms RFC 9110 names */
        ck_assert_int_eq(httpc_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), 120);
        ck_assert_int_eq(httpc_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT\r\n", now), 60);
        ck_assert_int_eq(httpc_retry_after("Wed Oct 21 07:28:30 2015", now), 30);
        ck_assert_int_eq(httpc_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), 0);   /* past */
        ck_assert_int_eq(httpc_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now), HTTPC_RETRY_AFTER_MAX);
        /* neither */
        ck_assert_int_eq(httpc_retry_after("-5", now), -1);
        ck_assert_int_eq(httpc_retry_after("12abc", now), -1);
        ck_assert_int_eq(httpc_retry_after("soon", now), -1);
        ck_assert_int_eq(httpc_retry_after("", now), -1);
}
END_TEST

Suite *
httpc_suite(void)
{
        Suite *s = suite_create("httpc");
        TCase *tc = tcase_create("retry_after");

        tcase_add_test(tc, test_retry_after_forms);
        suite_add_tcase(s, tc);
        return s;
}
