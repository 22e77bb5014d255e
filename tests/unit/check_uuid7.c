/* check_uuid7.c - version/variant bits, monotonic order, clock steps, the random pool;
 * the binary arrays (pgarr) the ids and snapshots are sent in. */
#include <stdlib.h>
#include <string.h>

#include "pgarr.h"
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

static uint32_t
rd32(const char *p)
{
        const unsigned char *b = (const unsigned char *)p;
        return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* array_recv's layout: header, then (length, bytes) per element, -1 for NULL;
 * an id's 16 bytes are libuuid's parse of its text, for every id made. */
START_TEST(test_pgarr_layout_and_ids)
{
        struct uuid7_gen g;
        struct pgarr a = { 0 };
        char s[37];
        uuid_t want;

        uuid7_init(&g);
        pgarr_begin(&a, PGARR_UUIDOID, 1000);
        ck_assert_uint_eq(rd32(a.buf), 1);
        ck_assert_uint_eq(rd32(a.buf + 8), PGARR_UUIDOID);
        ck_assert_uint_eq(rd32(a.buf + 12), 1000);
        ck_assert_uint_eq(rd32(a.buf + 16), 1);
        for (int i = 0; i < 1000; i++) {
                size_t at = a.len;
                uuid7_next_str(&g, s);
                if (i % 2)
                        for (char *c = s; *c; c++)
                                *c = (char)(*c >= 'a' && *c <= 'f' ? *c - 32 : *c); /* upper case too */
                pgarr_uuid(&a, s);
                ck_assert_int_eq(uuid_parse(s, want), 0);
                ck_assert_uint_eq(rd32(a.buf + at), 16);
                ck_assert_mem_eq(a.buf + at + 4, want, 16);
        }
        ck_assert_uint_eq(a.len, 20 + 1000 * 20);
        pgarr_begin(&a, PGARR_TEXTOID, 3);
        pgarr_str(&a, "abc");
        pgarr_str(&a, NULL);
        pgarr_int(&a, 7);
        ck_assert_uint_eq(a.len, 20 + 7 + 4 + 8);
        ck_assert_uint_eq(rd32(a.buf + 20), 3);
        ck_assert_mem_eq(a.buf + 24, "abc", 3);
        ck_assert_uint_eq(rd32(a.buf + 27), UINT32_MAX);
        ck_assert_uint_eq(rd32(a.buf + 31), 4);
        ck_assert_uint_eq(rd32(a.buf + 35), 7);
        free(a.buf);
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
        tcase_add_test(tc, test_pgarr_layout_and_ids);
        suite_add_tcase(s, tc);
        return s;
}
