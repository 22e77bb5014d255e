/* check_uuid7.c - version/variant bits, monotonic order, clock steps, the random pool. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "uuid7.h"

static uint64_t fake_now;
static uint64_t
fake_clock(void)
{
        return fake_now;
}

START_TEST(test_layout)
{
        struct uuid7_gen g;
        uuid_t u;

        uuid7_init(&g);
        g.clock_ms = fake_clock;
        fake_now = 0x0123456789abULL;
        uuid7_next(&g, u);
        ck_assert_uint_eq(u[6] >> 4, 7);       /* version */
        ck_assert_uint_eq(u[8] >> 6, 2);       /* variant 10 */
        uint64_t ms = 0;
        for (int i = 0; i < 6; i++)
                ms = (ms << 8) | u[i];
        ck_assert_uint_eq(ms, fake_now);
        char s[37];
        uuid7_next_str(&g, s);
        ck_assert_uint_eq(strlen(s), 36);
        ck_assert_int_eq(s[14], '7');
        uuid_t back;
        ck_assert_int_eq(uuid_parse(s, back), 0);
}
END_TEST

START_TEST(test_monotonic_same_ms_and_backwards)
{
        struct uuid7_gen g;
        uuid_t prev, cur;

        uuid7_init(&g);
        g.clock_ms = fake_clock;
        fake_now = 1700000000000ULL;
        uuid7_next(&g, prev);
        for (int i = 0; i < 10000; i++) {
                if (i == 5000)
                        fake_now -= 60000; /* clock stepped back a minute */
                uuid7_next(&g, cur);
                ck_assert_msg(memcmp(prev, cur, 16) < 0, "not increasing at %d", i);
                ck_assert_uint_eq(cur[6] >> 4, 7);
                ck_assert_uint_eq(cur[8] >> 6, 2);
                memcpy(prev, cur, 16);
        }
}
END_TEST

/* Ids drawn across several refills of the random pool each get their own
 * bytes: no two of them share their 62 random bits. */
START_TEST(test_pool_never_repeats)
{
        enum { N = UUID7_POOL_IDS * 4 + 3 };
        static uuid_t ids[N];
        struct uuid7_gen g;

        uuid7_init(&g);
        g.clock_ms = fake_clock;
        fake_now = 1700000000000ULL;
        for (int i = 0; i < N; i++) {
                if (i % 7 == 0)
                        fake_now++; /* a new millisecond draws the counter's start too */
                uuid7_next(&g, ids[i]);
        }
        for (int i = 0; i < N; i++)
                for (int j = i + 1; j < N; j++)
                        ck_assert_msg(memcmp(ids[i] + 8, ids[j] + 8, 8) != 0,
                                      "ids %d and %d share their random bits", i, j);
}
END_TEST

Suite *
uuid7_suite(void)
{
        Suite *s = suite_create("uuid7");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 10);
        tcase_add_test(tc, test_layout);
        tcase_add_test(tc, test_monotonic_same_ms_and_backwards);
        tcase_add_test(tc, test_pool_never_repeats);
        suite_add_tcase(s, tc);
        return s;
}
