/*
 * sig_fuzz.c - libFuzzer target for sig.c: sig_verify on an arbitrary header
 * and body, the sign/verify round trip under single-byte damage, and
 * sig_nfkd / sig_keyset_new on arbitrary secrets.
 *
 * Input: byte 0 picks the mode, then the header (or secret) up to the first
 * NUL, then the body. Any verdict that contradicts HMAC-SHA256 aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sig.h"

static struct sig_keyset *ks;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
        /* the official vectors' secret (precomposed) and a plain one: two slots */
        const char *secrets[2] = { "s\xc3\xa9" "cret", "whsec_second" };
        struct err e;

        (void)argc;
        (void)argv;
        ks = sig_keyset_new(secrets, 2, &e);
        if (ks == NULL)
                abort();
        return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char want[SIG_HEADER_LEN + 1], sig[SIG_HEADER_LEN + 1];
        struct err e;
        size_t slot = 99;

        if (size < 1)
                return 0;
        uint8_t mode = data[0];
        data++;
        size--;
        const uint8_t *nul = memchr(data, '\0', size);
        size_t hlen = nul ? (size_t)(nul - data) : size;
        char *hdr = xstrndup((const char *)data, hlen);
        const uint8_t *body = nul ? nul + 1 : data + size;
        size_t blen = nul ? size - hlen - 1 : 0;

        switch (mode % 4) {
        case 0: /* arbitrary header: accepted only if it is exactly a key's signature */
                if (sig_verify(ks, hdr, body, blen, &slot, &e) == 0) {
                        if (slot >= sig_keyset_count(ks))
                                abort();
                        sig_sign(ks, slot, body, blen, want);
                        if (strcmp(want, hdr) != 0)
                                abort();
                } else if (e.msg[0] == '\0') {
                        abort();
                }
                break;
        case 1: { /* the right signature, then damaged by the header bytes */
                size_t k = (mode >> 2) & 1;
                sig_sign(ks, k, body, blen, want);
                if (strlen(want) != SIG_HEADER_LEN ||
                    sig_verify(ks, want, body, blen, &slot, &e) != 0 || slot != k)
                        abort();
                memcpy(sig, want, sizeof(sig));
                for (size_t i = 0; i < hlen; i++) {
                        size_t at = (i * 31 + (size_t)mode) % SIG_HEADER_LEN;
                        sig[at] = (char)(sig[at] ^ hdr[i]);
                }
                /* accepted exactly when the damage cancelled out */
                int same = strcmp(want, sig) == 0;
                int ok = sig_verify(ks, sig, body, blen, &slot, &e) == 0;
                if (ok != same)
                        abort();
                break;
        }
        case 2: /* no header at all */
                if (sig_verify(ks, NULL, body, blen, &slot, &e) == 0)
                        abort();
                break;
        case 3: { /* an arbitrary secret: NFKD, key set, round trip */
                size_t n = 0;
                unsigned char *k = sig_nfkd(hdr, &n);
                int utf8 = k != NULL;
                free(k);
                const char *one[1] = { hdr };
                struct sig_keyset *ks2 = sig_keyset_new(one, 1, &e);
                if (ks2 != NULL) {
                        sig_sign(ks2, 0, body, blen, sig);
                        if (sig_verify(ks2, sig, body, blen, &slot, &e) != 0 || slot != 0)
                                abort();
                        sig_keyset_free(ks2);
                } else if (hdr[0] != '\0' && utf8) {
                        abort(); /* a non-empty valid UTF-8 secret must make a key */
                }
                break;
        }
        }
        free(hdr);
        return 0;
}
