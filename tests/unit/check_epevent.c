/* check_epevent.c - Event validation on fixtures and on hostile documents. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epevent.h"
#include "metrics.h"
#include "testutil.h"

static int
parse(const char *s, struct epevent *ev)
{
        struct err e;
        int rc = epevent_parse(s, strlen(s), ev, &e);
        if (rc == 0)
                return 0;
        return -1;
}

START_TEST(test_fixture_events)
{
        SKIP_WITHOUT_FIXTURES();
        static const struct {
                const char *file, *desc, *object;
        } cases[] = {
                { "hmac_body_tracker_updated.json", "tracker.updated", "trk_1" },
                { "hmac_body_batch_created.json", "batch.created", NULL },
                { "event_tracker_updated_delivered_docs.json", "tracker.updated", "trk_..." },
                { "event_tracker_created_thirdparty.json", "tracker.created",
                  "trk_117dee57e33d40c8892c29a3f2fee617" },
                { "event_batch_created_docs.json", "batch.created", NULL },
                { "event_batch_updated_docs.json", "batch.updated", NULL },
                { "event_scan_form_created_docs.json", "scan_form.created", NULL },
                { "event_retrieve.json", "batch.created", "" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                size_t len;
                char *body = fixture_read(cases[i].file, &len);
                struct epevent ev;
                struct err e;
                ck_assert_msg(epevent_parse(body, len, &ev, &e) == 0, "%s: %s", cases[i].file, e.msg);
                ck_assert_str_eq(ev.description, cases[i].desc);
                ck_assert_msg(strncmp(ev.id, "evt_", 4) == 0, "%s", cases[i].file);
                if (cases[i].object)
                        ck_assert_str_eq(ev.object_id, cases[i].object);
                ck_assert(!ev.has_nul);
                /* EasyPost's tracker events are typed for the projection */
                ck_assert_msg((ev.trk != NULL) == (strncmp(ev.description, "tracker.", 8) == 0), "%s",
                              cases[i].file);
                epevent_fini(&ev);
                free(body);
        }
}
END_TEST

START_TEST(test_rejects)
{
        static const char *const bad[] = {
                "",
                "[]",
                "\"Event\"",
                "{",
                "{\"object\":\"Event\",\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":5,\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":\"\",\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\"}",
                "{\"object\":\"Tracker\",\"id\":\"evt_1\",\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"id\":\"evt_2\",\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":\"evt_\\u0000\",\"description\":\"x\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"n\":1e999999}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"n\":-1.5e-99999}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"n\":01}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"s\":\"\\udc00\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"s\":\"a\tb\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":{\"k\":1,\"\\u006b\":2}}",
                /* duplicates of every key length the scanner hashes differently: up to 8
                 * bytes, a word and a tail, and 32 or more (hashed while scanned) */
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":{\"tracking_code\":1,\"tracking_\\u0063ode\":2}}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":{\"a_key_of_thirty_two_bytes_long_x\":1,\"b\":0,\"a_key_of_thirty_two_bytes_long_\\u0078\":2}}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":{\"a key longer than the buffer of thirty-two\":1,\"a key longer than the buffer of thirty-two\":2}}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\"} x",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"a\":[1,]}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"a\":tru}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"\xc0\xaf\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"\xed\xa0\x80\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"s\":\"\\x\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"\xff\xfe\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"s\":\"\\ud800\"}",
        };
        struct epevent ev;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(parse(bad[i], &ev) != 0, "accepted case %zu", i);
        /* deep nesting */
        size_t depth = 10000;
        char *deep = malloc(depth * 2 + 100);
        size_t k = (size_t)sprintf(deep, "{\"object\":\"Event\",\"id\":\"e\",\"description\":\"d\",\"x\":");
        for (size_t i = 0; i < depth; i++)
                deep[k++] = '[';
        for (size_t i = 0; i < depth; i++)
                deep[k++] = ']';
        deep[k++] = '}';
        deep[k] = '\0';
        ck_assert_int_ne(parse(deep, &ev), 0);
        free(deep);
}
END_TEST

/* Keys of every length up to past the 32-byte buffer: a key read in place and
 * the same key written with an escape are the same key (a duplicate), keys one
 * byte apart are not, and a body that ends inside or right after a key is
 * refused without a byte read past its end (the buffer is exactly its size). */
START_TEST(test_keys_in_place_and_escaped)
{
        struct epevent ev;
        struct err e;
        char k[48], body[256];

        for (size_t n = 1; n <= 40; n++) {
                for (size_t i = 0; i < n; i++)
                        k[i] = (char)('a' + (i * 7 + n) % 26);
                k[n] = '\0';
                char last = k[n - 1];
                k[n - 1] = '\0';
                /* the same key, its last byte escaped */
                snprintf(body, sizeof(body),
                         "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":"
                         "{\"%s%c\":1,\"%s\\u00%02x\":2}}", k, last, k, (unsigned)last);
                ck_assert_msg(parse(body, &ev) != 0, "duplicate of length %zu accepted", n);
                /* one byte apart */
                snprintf(body, sizeof(body),
                         "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":"
                         "{\"%s%c\":1,\"%s%c\":2}}", k, last, k, last == 'z' ? 'a' : last + 1);
                ck_assert_msg(parse(body, &ev) == 0, "distinct keys of length %zu refused", n);
                epevent_fini(&ev);
                k[n - 1] = last;
                /* cut inside the key, after its quote, after the colon */
                int full = snprintf(body, sizeof(body), "{\"id\":\"evt_1\",\"%s\":", k);
                for (int cut = full - (int)n - 2; cut <= full; cut++) {
                        char *exact = malloc((size_t)cut);
                        ck_assert_ptr_nonnull(exact);
                        memcpy(exact, body, (size_t)cut);
                        ck_assert_int_ne(epevent_parse(exact, (size_t)cut, &ev, &e), 0);
                        free(exact);
                }
        }
}
END_TEST

/* What the scanner accepts, with the fields it extracts. */
START_TEST(test_accepts)
{
        struct epevent ev;
        static const char *const good[] = {
                " {\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\"} \n",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"n\":[0,-0.5,1e5,2E-3,123456789012345678901234567890]}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"s\":\"\\ud83d\\ude00 \xf0\x9f\x98\x80 \\\" \\/\"}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"a\":{\"k\":{\"k\":1}},\"b\":{\"k\":2}}",
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"result\":[1,{\"id\":\"not this\"}]}",
                /* keys that differ in their last byte only, at every hashed length */
                "{\"object\":\"Event\",\"id\":\"evt_1\",\"description\":\"x\",\"r\":{\"abcdefgh\":1,\"abcdefgi\":2,"
                "\"tracking_code1\":1,\"tracking_code2\":2,\"a_key_of_thirty_two_bytes_long_x\":1,"
                "\"a_key_of_thirty_two_bytes_long_y\":2,\"a key longer than the buffer of thirty-two\":1,"
                "\"a key longer than the buffer of thirty-twO\":2}}",
        };
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                ck_assert_msg(parse(good[i], &ev) == 0, "refused case %zu", i);
                ck_assert_str_eq(ev.id, "evt_1");
                ck_assert_str_eq(ev.object_id, "");
                epevent_fini(&ev);
        }
        /* escapes are decoded before the fields are compared and kept */
        ck_assert_int_eq(parse("{\"\\u006fbject\":\"Ev\\u0065nt\",\"id\":\"evt_\\u0031\",\"description\":\"d\","
                               "\"result\":{\"id\":\"trk_\\u0032\",\"x\":{\"id\":\"no\"}}}", &ev), 0);
        ck_assert_str_eq(ev.id, "evt_1");
        ck_assert_str_eq(ev.object_id, "trk_2");
        epevent_fini(&ev);
        /* 100,000 keys within one object: accepted, no duplicate among them */
        size_t n = 100000, k = 0;
        char *big = malloc(n * 16 + 100);
        k += (size_t)sprintf(big, "{\"object\":\"Event\",\"id\":\"e\",\"description\":\"d\"");
        for (size_t i = 0; i < n; i++)
                k += (size_t)sprintf(big + k, ",\"k%zu\":%zu", i, i);
        big[k++] = '}';
        big[k] = '\0';
        ck_assert_int_eq(parse(big, &ev), 0);
        big[k - 1] = ',';
        k += (size_t)sprintf(big + k - 1, "\"k7\":1}") - 1; /* now a duplicate */
        ck_assert_int_ne(parse(big, &ev), 0);
        free(big);
        /* numeric keeps 16383 digits after the point (found by epevent_fuzz) */
        char *num = malloc(7000 + 200);
        for (int zeros = 6382; zeros <= 6383; zeros++) {
                int m = sprintf(num, "{\"object\":\"Event\",\"id\":\"e\",\"description\":\"d\",\"n\":0.");
                memset(num + m, '0', (size_t)zeros);
                sprintf(num + m + zeros, "1e-10000}");
                ck_assert_int_eq(parse(num, &ev), zeros == 6382 ? 0 : -1);
        }
        free(num);
}
END_TEST

START_TEST(test_nul_and_fields)
{
        struct epevent ev;
        const char *doc = "{\"object\":\"Event\",\"id\":\"evt_9\",\"description\":\"tracker.updated\","
                          "\"mode\":\"test\",\"created_at\":\"2024-02-29T10:00:00.123Z\","
                          "\"result\":{\"id\":\"trk_9\",\"m\":\"a\\u0000b\"}}";

        ck_assert_int_eq(parse(doc, &ev), 0);
        ck_assert_str_eq(ev.id, "evt_9");
        ck_assert_str_eq(ev.mode, "test");
        ck_assert_str_eq(ev.object_id, "trk_9");
        ck_assert_str_eq(ev.created_at, "2024-02-29T10:00:00.123Z");
        ck_assert(ev.has_nul);
        ck_assert_ptr_nonnull(strstr(ev.clean, "\"ab\""));
        epevent_fini(&ev);
        /* escaped backslash followed by u0000 text is not a NUL */
        const char *doc2 = "{\"object\":\"Event\",\"id\":\"evt_9\",\"description\":\"d\","
                           "\"result\":null,\"m\":\"\\\\u0000\"}";
        ck_assert_int_eq(parse(doc2, &ev), 0);
        ck_assert(!ev.has_nul);
        ck_assert_str_eq(ev.object_id, "");
        epevent_fini(&ev);
}
END_TEST

/* The copy without U+0000 is the body's own text less the \u0000 escapes:
 * numbers are not rewritten (0.1, an integer past 64 bits), an escaped
 * backslash before "u0000" stays; U+0000 in a key is refused (jsonb cannot
 * hold it). */
START_TEST(test_clean_copy_keeps_the_text)
{
        struct epevent ev;
        const char *doc = "{\"object\":\"Event\",\"id\":\"evt_n\",\"description\":\"insurance.purchased\","
                          "\"result\":{\"id\":\"ins_1\",\"amount\":0.1,\"w\":123456789012345678901234567890,"
                          "\"note\":\"a\\u0000b\\u0000\",\"raw\":\"\\\\u0000\",\"e\":1.5e400}}";
        const char *want = "{\"object\":\"Event\",\"id\":\"evt_n\",\"description\":\"insurance.purchased\","
                           "\"result\":{\"id\":\"ins_1\",\"amount\":0.1,\"w\":123456789012345678901234567890,"
                           "\"note\":\"ab\",\"raw\":\"\\\\u0000\",\"e\":1.5e400}}";

        ck_assert_int_eq(parse(doc, &ev), 0);
        ck_assert(ev.has_nul);
        ck_assert_str_eq(ev.clean, want);
        epevent_fini(&ev);

        const char *key = "{\"object\":\"Event\",\"id\":\"evt_k\",\"description\":\"d\","
                          "\"result\":{\"a\\u0000\":1}}";
        struct err e;
        ck_assert_int_eq(epevent_parse(key, strlen(key), &ev, &e), -1);
        ck_assert_int_eq(e.code, 400);
        ck_assert_ptr_nonnull(strstr(e.msg, "U+0000 in an object key"));
        ck_assert_ptr_null(ev.clean);
        /* also after a value that held one */
        const char *after = "{\"object\":\"Event\",\"id\":\"evt_k\",\"description\":\"d\","
                            "\"result\":{\"v\":\"\\u0000\",\"a\\u0000\":1}}";
        ck_assert_int_eq(epevent_parse(after, strlen(after), &ev, &e), -1);
        ck_assert_ptr_nonnull(strstr(e.msg, "U+0000 in an object key"));
}
END_TEST

/* A tracker whose details would take more than twice its body (empty
 * objects) is not typed: it waits in the queue as its body, and PostgreSQL
 * types it. Ordinary details are typed. */
START_TEST(test_typed_only_when_details_fit_the_body)
{
        struct epevent ev;
        struct strbuf b = { 0 };

        for (int round = 0; round < 2; round++) {
                strbuf_printf(&b, "{\"object\":\"Event\",\"id\":\"evt_t\",\"description\":\"tracker.updated\","
                                  "\"result\":{\"id\":\"trk_t\",\"tracking_details\":[");
                for (int i = 0; i < 1000; i++)
                        strbuf_printf(&b, "%s%s", i ? "," : "",
                                      round == 0 ? "{}"
                                                 : "{\"message\":\"Arrived at the facility\",\"status\":"
                                                   "\"in_transit\",\"datetime\":\"2024-05-01T10:00:00Z\","
                                                   "\"source\":\"USPS\",\"carrier_code\":\"NT\"}");
                strbuf_printf(&b, "]}}");
                ck_assert_int_eq(parse(b.data, &ev), 0);
                if (round == 0) {
                        ck_assert_ptr_null(ev.trk);
                } else {
                        ck_assert_ptr_nonnull(ev.trk);
                        ck_assert_uint_eq(ev.trk->nd, 1000);
                        ck_assert_uint_le(eptracker_bytes(ev.trk), 3 * b.len);
                }
                epevent_fini(&ev);
                strbuf_free(&b);
        }
}
END_TEST

START_TEST(test_times)
{
        ck_assert(epevent_valid_time("2014-11-19T10:51:54Z"));
        ck_assert(epevent_valid_time("2025-03-06T19:48:05.456Z"));
        ck_assert(epevent_valid_time("2025-03-06T19:48:05+02:00"));
        ck_assert(epevent_valid_time("2025-03-06T19:48:05"));
        ck_assert(!epevent_valid_time("2023-02-29T00:00:00Z"));
        ck_assert(!epevent_valid_time("2023-13-01T00:00:00Z"));
        ck_assert(!epevent_valid_time("yesterday"));
        ck_assert(!epevent_valid_time("2023-01-01T00:00:00Zjunk"));
        /* offsets PostgreSQL refuses (found by extract_fuzz) */
        ck_assert(!epevent_valid_time("2025-01-02T03:04:05+05:99"));
        ck_assert(!epevent_valid_time("2020-01-02T03:04:05-0799"));
        ck_assert(!epevent_valid_time("2020-01-02T03:04:05+15:60"));
        ck_assert(!epevent_valid_time("2020-01-02T03:04:05-0860"));
        ck_assert(epevent_valid_time("2020-01-02T03:04:05+15:59"));
        ck_assert(epevent_valid_time("2020-01-02T03:04:05-0800"));
        ck_assert(epevent_valid_time("2020-01-02T03:04:05+05"));
}
END_TEST

static bool
str_is(struct epstr v, const char *want)
{
        if (want == NULL)
                return v.p == NULL;
        return v.p && v.n == strlen(want) && memcmp(v.p, want, v.n) == 0;
}

/* A tracker event's snapshot, typed by the scanner as PostgreSQL's ->> gives each field. */
START_TEST(test_tracker_typed)
{
        struct epevent ev;
        const char *doc =
                "{\"object\":\"Event\",\"id\":\"evt_t\",\"description\":\"tracker.updated\","
                "\"updated_at\":\"2025-01-03T00:00:00Z\",\"created_at\":\"2025-01-02T00:00:00Z\","
                "\"result\":{\"id\":\"trk_t\",\"status\":\"in\\u00e9\\\"\\/x\",\"status_detail\":null,"
                "\"shipment_id\":\"shp_t\",\"carrier_detail\":{\"a\": [1, \"\\u0041\"]},"
                "\"tracking_details\":[{\"message\":\"m1\",\"datetime\":\"2025-01-01T00:00:00Z\","
                "\"tracking_location\":{\"city\":\"C\"}},{\"message\":\"\\ud83d\\ude00\","
                "\"tracking_location\":\"str\",\"source\":null}]}}";

        ck_assert_int_eq(parse(doc, &ev), 0);
        ck_assert_ptr_nonnull(ev.trk);
        ck_assert(str_is(ev.trk->status, "in\xc3\xa9\"/x"));
        ck_assert(str_is(ev.trk->status_detail, NULL));
        ck_assert(str_is(ev.trk->mode, NULL));
        ck_assert(str_is(ev.trk->shp, "shp_t"));
        ck_assert(str_is(ev.trk->cdetail, "{\"a\": [1, \"\\u0041\"]}"));
        ck_assert(str_is(ev.trk->ev_updated, "2025-01-03T00:00:00Z"));
        ck_assert(str_is(ev.trk->ev_created, "2025-01-02T00:00:00Z"));
        ck_assert_str_eq(ev.created_at, "2025-01-02T00:00:00Z");
        ck_assert_uint_eq(ev.trk->ndetails, 2);
        ck_assert_uint_eq(ev.trk->nd, 2);
        ck_assert_uint_eq(ev.trk->d[1].pos, 2);
        ck_assert(str_is(ev.trk->d[0].location, "{\"city\":\"C\"}"));
        ck_assert(str_is(ev.trk->d[1].location, NULL));
        ck_assert(str_is(ev.trk->d[1].message, "\xf0\x9f\x98\x80"));
        ck_assert(str_is(ev.trk->d[1].source, NULL));
        ck_assert(str_is(ev.trk->d[0].datetime, "2025-01-01T00:00:00Z"));
        epevent_fini(&ev);
        ck_assert_ptr_null(ev.trk);

        /* shapes left to PostgreSQL's jsonb: never guessed */
        static const char *const untyped[] = {
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"trk_t\",\"status\":5}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"trk_t\",\"tracking_details\":[1]}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"trk_t\",\"tracking_details\":{}}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"trk_t\",\"tracking_details\":[{\"message\":[]}]}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"trk_t\",\"m\":\"a\\u0000\"}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":\"shp_t\"}",
                "\"description\":\"tracker.updated\",\"result\":{\"id\":5}",
                "\"description\":\"tracker.updated\",\"result\":[]",
                "\"description\":\"tracker.updated\",\"updated_at\":1,\"result\":{\"id\":\"trk_t\"}",
                "\"description\":\"shipment.updated\",\"result\":{\"id\":\"trk_t\"}",
        };
        for (size_t i = 0; i < sizeof(untyped) / sizeof(untyped[0]); i++) {
                char buf[512];
                snprintf(buf, sizeof(buf), "{\"object\":\"Event\",\"id\":\"evt_u\",%s}", untyped[i]);
                ck_assert_int_eq(parse(buf, &ev), 0);
                ck_assert_msg(ev.trk == NULL, "typed: %s", buf);
                epevent_fini(&ev);
        }
        /* the least a tracker event can be: typed, no details */
        ck_assert_int_eq(parse("{\"object\":\"Event\",\"id\":\"e\",\"description\":\"tracker.created\","
                               "\"result\":{\"id\":\"trk_1\",\"tracking_details\":null}}", &ev), 0);
        ck_assert_ptr_nonnull(ev.trk);
        ck_assert_uint_eq(ev.trk->ndetails, 0);
        epevent_fini(&ev);
}
END_TEST

Suite *
epevent_suite(void)
{
        Suite *s = suite_create("epevent");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 20);
        tcase_add_test(tc, test_fixture_events);
        tcase_add_test(tc, test_rejects);
        tcase_add_test(tc, test_accepts);
        tcase_add_test(tc, test_keys_in_place_and_escaped);
        tcase_add_test(tc, test_nul_and_fields);
        tcase_add_test(tc, test_clean_copy_keeps_the_text);
        tcase_add_test(tc, test_typed_only_when_details_fit_the_body);
        tcase_add_test(tc, test_times);
        tcase_add_test(tc, test_tracker_typed);
        suite_add_tcase(s, tc);
        return s;
}
