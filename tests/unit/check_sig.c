/* check_sig.c - the official EasyPost vectors, NFKD keys, malformed headers. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sig.h"
#include "testutil.h"

static struct sig_keyset *
keys1(const char *secret)
{
        struct err e;
        const char *s[1] = { secret };
        struct sig_keyset *ks = sig_keyset_new(s, 1, &e);
        ck_assert_msg(ks != NULL, "%s", e.msg);
        return ks;
}

START_TEST(test_nfkd_key)
{
        size_t n = 0;
        unsigned char *k = sig_nfkd("s\xc3\xa9" "cret", &n);
        static const unsigned char want[] = { 0x73, 0x65, 0xcc, 0x81, 0x63, 0x72, 0x65, 0x74 };

        ck_assert_uint_eq(n, sizeof(want));
        ck_assert_mem_eq(k, want, sizeof(want));
        free(k);
        ck_assert_ptr_null(sig_nfkd("bad\xff", &n));
}
END_TEST

/* Every vector in webhook_hmac_vectors.json, valid and invalid. */
START_TEST(test_official_vectors)
{
        SKIP_WITHOUT_FIXTURES();
        size_t len;
        char *text = fixture_read("webhook_hmac_vectors.json", &len);
        json_error_t je;
        json_t *root = json_loadb(text, len, 0, &je);
        ck_assert_ptr_nonnull(root);
        const char *secret = json_string_value(json_object_get(root, "secret"));
        struct sig_keyset *ks = keys1(secret);
        struct err e;
        size_t i, slot, checked = 0;
        json_t *v;

        json_array_foreach(json_object_get(root, "vectors"), i, v) {
                size_t blen;
                char *body = fixture_read(json_string_value(json_object_get(v, "body_file")), &blen);
                ck_assert_uint_eq(blen, json_integer_value(json_object_get(v, "body_length")));
                const char *hdr = json_string_value(json_object_get(v, "expected_header"));
                ck_assert_msg(sig_verify(ks, hdr, body, blen, &slot, &e) == 0, "vector %zu: %s", i,
                              e.msg);
                char out[SIG_HEADER_LEN + 1];
                sig_sign(ks, 0, body, blen, out);
                ck_assert_str_eq(out, hdr);
                /* one byte changed must fail */
                body[blen / 2] ^= 1;
                ck_assert_int_ne(sig_verify(ks, hdr, body, blen, &slot, &e), 0);
                free(body);
                checked++;
        }
        ck_assert_uint_ge(checked, 3);
        json_array_foreach(json_object_get(root, "negative_vectors"), i, v) {
                size_t blen;
                char *body = fixture_read(json_string_value(json_object_get(v, "body_file")), &blen);
                const char *s = json_string_value(json_object_get(v, "secret"));
                struct sig_keyset *nk = s ? keys1(s) : ks;
                const char *hdr = json_string_value(json_object_get(v, "header"));
                ck_assert_int_ne(sig_verify(nk, hdr, body, blen, &slot, &e), 0);
                if (nk != ks)
                        sig_keyset_free(nk);
                free(body);
                checked++;
        }
        ck_assert_uint_ge(checked, 8);
        sig_keyset_free(ks);
        json_decref(root);
        free(text);
}
END_TEST

START_TEST(test_malformed_headers)
{
        struct sig_keyset *ks = keys1("topsecret");
        const char body[] = "{\"id\":\"evt_1\"}";
        char good[SIG_HEADER_LEN + 1], tmp[SIG_HEADER_LEN + 8];
        struct err e;
        size_t slot = 99;

        sig_sign(ks, 0, body, strlen(body), good);
        ck_assert_int_eq(sig_verify(ks, good, body, strlen(body), &slot, &e), 0);
        ck_assert_uint_eq(slot, 0);
        ck_assert_int_ne(sig_verify(ks, NULL, body, strlen(body), &slot, &e), 0);
        ck_assert_int_ne(sig_verify(ks, "", body, strlen(body), &slot, &e), 0);
        /* wrong prefix */
        snprintf(tmp, sizeof(tmp), "hmac-sha1-hex=%s", good + strlen(SIG_PREFIX));
        ck_assert_int_ne(sig_verify(ks, tmp, body, strlen(body), &slot, &e), 0);
        /* truncated (odd length) and truncated by a whole byte */
        snprintf(tmp, sizeof(tmp), "%.*s", (int)SIG_HEADER_LEN - 1, good);
        ck_assert_int_ne(sig_verify(ks, tmp, body, strlen(body), &slot, &e), 0);
        snprintf(tmp, sizeof(tmp), "%.*s", (int)SIG_HEADER_LEN - 2, good);
        ck_assert_int_ne(sig_verify(ks, tmp, body, strlen(body), &slot, &e), 0);
        /* trailing newline, upper-case hex */
        snprintf(tmp, sizeof(tmp), "%s\n", good);
        ck_assert_int_ne(sig_verify(ks, tmp, body, strlen(body), &slot, &e), 0);
        snprintf(tmp, sizeof(tmp), "%s", good);
        for (char *p = tmp + strlen(SIG_PREFIX); *p; p++)
                if (*p >= 'a' && *p <= 'f')
                        *p = (char)(*p - 'a' + 'A');
        if (strcmp(tmp, good) != 0)
                ck_assert_int_ne(sig_verify(ks, tmp, body, strlen(body), &slot, &e), 0);
        /* signature of another body */
        ck_assert_int_ne(sig_verify(ks, good, "{}", 2, &slot, &e), 0);
        sig_keyset_free(ks);
}
END_TEST

START_TEST(test_rotation_slots)
{
        struct err e;
        const char *s[2] = { "new-secret", "old-secret" };
        struct sig_keyset *ks = sig_keyset_new(s, 2, &e);
        struct sig_keyset *old = keys1("old-secret");
        char hdr[SIG_HEADER_LEN + 1];
        size_t slot = 99;

        ck_assert_ptr_nonnull(ks);
        sig_sign(old, 0, "x", 1, hdr);
        ck_assert_int_eq(sig_verify(ks, hdr, "x", 1, &slot, &e), 0);
        ck_assert_uint_eq(slot, 1);
        const char *empty[1] = { "" };
        ck_assert_ptr_null(sig_keyset_new(empty, 1, &e));
        sig_keyset_free(ks);
        sig_keyset_free(old);
}
END_TEST

Suite *
sig_suite(void)
{
        Suite *s = suite_create("sig");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 10);
        tcase_add_test(tc, test_nfkd_key);
        tcase_add_test(tc, test_official_vectors);
        tcase_add_test(tc, test_malformed_headers);
        tcase_add_test(tc, test_rotation_slots);
        suite_add_tcase(s, tc);
        return s;
}
