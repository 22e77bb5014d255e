/*
 * sig.c - verifies X-Hmac-Signature headers.
 *
 * Keys are normalised once (NFKD through libunistring, as EasyPost's client
 * libraries do) and kept as keyed EVP_MAC contexts; each verification starts
 * its context again from the key's saved state (EVP_MAC_init without a key),
 * which neither re-derives the key schedule nor allocates a new context, as
 * duplicating one did (about ten allocations per request). One thread only:
 * the contexts are working state. The header is compared
 * as a whole string with CRYPTO_memcmp against every configured key.
 */
#include "sig.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>
#include <uninorm.h>
#include <unistr.h>

struct sig_keyset {
        EVP_MAC *mac;
        size_t n;
        EVP_MAC_CTX *ctx[SIG_MAX_KEYS];
};

unsigned char *
sig_nfkd(const char *s, size_t *outlen)
{
        size_t n = strlen(s);
        size_t outn = 0;
        uint8_t *out;

        if (u8_check((const uint8_t *)s, n) != NULL)
                return NULL;
        out = u8_normalize(UNINORM_NFKD, (const uint8_t *)s, n, NULL, &outn);
        if (out == NULL)
                return NULL;
        *outlen = outn;
        return out;
}

struct sig_keyset *
sig_keyset_new(const char *const *secrets, size_t n, struct err *e)
{
        struct sig_keyset *ks;
        char digest[] = "SHA256";

        if (n == 0 || n > SIG_MAX_KEYS) {
                err_set(e, -1, "between 1 and %d webhook secrets are needed", SIG_MAX_KEYS);
                return NULL;
        }
        ks = xcalloc(1, sizeof(*ks));
        ks->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (ks->mac == NULL) {
                err_set(e, -1, "OpenSSL has no HMAC");
                free(ks);
                return NULL;
        }
        for (size_t i = 0; i < n; i++) {
                size_t klen = 0;
                unsigned char *key;
                OSSL_PARAM params[2];

                if (secrets[i][0] == '\0') {
                        err_set(e, -1, "webhook secret %zu is empty", i + 1);
                        goto fail;
                }
                key = sig_nfkd(secrets[i], &klen);
                if (key == NULL) {
                        err_set(e, -1, "webhook secret %zu is not valid UTF-8", i + 1);
                        goto fail;
                }
                params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
                params[1] = OSSL_PARAM_construct_end();
                ks->ctx[i] = EVP_MAC_CTX_new(ks->mac);
                if (ks->ctx[i] == NULL || !EVP_MAC_init(ks->ctx[i], key, klen, params)) {
                        OPENSSL_cleanse(key, klen);
                        free(key);
                        err_set(e, -1, "HMAC key setup failed");
                        goto fail;
                }
                OPENSSL_cleanse(key, klen);
                free(key);
                ks->n++;
        }
        return ks;
fail:
        sig_keyset_free(ks);
        return NULL;
}

void
sig_keyset_free(struct sig_keyset *ks)
{
        if (ks == NULL)
                return;
        for (size_t i = 0; i < SIG_MAX_KEYS; i++)
                EVP_MAC_CTX_free(ks->ctx[i]);
        EVP_MAC_free(ks->mac);
        free(ks);
}

size_t
sig_keyset_count(const struct sig_keyset *ks)
{
        return ks->n;
}

static void
compute(EVP_MAC_CTX *c, const void *body, size_t len, char out[SIG_HEADER_LEN + 1])
{
        static const char hex[] = "0123456789abcdef";
        unsigned char md[32];
        size_t mdlen = 0;

        if (!EVP_MAC_init(c, NULL, 0, NULL) || !EVP_MAC_update(c, body, len) ||
            !EVP_MAC_final(c, md, &mdlen, sizeof(md)) || mdlen != sizeof(md))
                abort(); /* only on OOM inside OpenSSL */
        memcpy(out, SIG_PREFIX, sizeof(SIG_PREFIX) - 1);
        char *p = out + sizeof(SIG_PREFIX) - 1;
        for (size_t i = 0; i < sizeof(md); i++) {
                *p++ = hex[md[i] >> 4];
                *p++ = hex[md[i] & 15];
        }
        *p = '\0';
}

void
sig_sign(const struct sig_keyset *ks, size_t slot, const void *body, size_t len,
         char out[SIG_HEADER_LEN + 1])
{
        compute(ks->ctx[slot], body, len, out);
}

int
sig_verify(const struct sig_keyset *ks, const char *header, const void *body, size_t len,
           size_t *slot, struct err *e)
{
        char want[SIG_HEADER_LEN + 1];
        int match = -1;

        if (header == NULL || header[0] == '\0') {
                err_set(e, 1, "missing signature");
                return -1;
        }
        if (strncmp(header, SIG_PREFIX, sizeof(SIG_PREFIX) - 1) != 0) {
                err_set(e, 2, "signature without the hmac-sha256-hex= prefix");
                return -1;
        }
        if (strlen(header) != SIG_HEADER_LEN) {
                err_set(e, 3, "signature of the wrong length");
                return -1;
        }
        for (size_t i = 0; i < ks->n; i++) {
                compute(ks->ctx[i], body, len, want);
                if (CRYPTO_memcmp(want, header, SIG_HEADER_LEN) == 0 && match < 0)
                        match = (int)i;
        }
        OPENSSL_cleanse(want, sizeof(want));
        if (match < 0) {
                err_set(e, 4, "signature mismatch");
                return -1;
        }
        if (slot)
                *slot = (size_t)match;
        return 0;
}
