/*
 * sig.h - EasyPost webhook signatures: "hmac-sha256-hex=" + lowercase hex of
 * HMAC-SHA256(NFKD(secret), raw body). Pure: no I/O, no logging.
 */
#ifndef EPS_SIG_H
#define EPS_SIG_H

#include <stddef.h>

#include "util.h"

#define SIG_PREFIX "hmac-sha256-hex="
#define SIG_HEADER_LEN (sizeof(SIG_PREFIX) - 1 + 64)
#define SIG_MAX_KEYS 8

struct sig_keyset;

/* Builds a key set from n secrets (UTF-8, NFKD-normalised here). NULL with err
 * when a secret is empty or not valid UTF-8. Caller owns the result. */
MUST_CHECK struct sig_keyset *sig_keyset_new(const char *const *secrets, size_t n, struct err *e);
void sig_keyset_free(struct sig_keyset *ks);
size_t sig_keyset_count(const struct sig_keyset *ks);

/* Writes the header value (SIG_HEADER_LEN chars + NUL) for body under key slot. */
void sig_sign(const struct sig_keyset *ks, size_t slot, const void *body, size_t len,
              char out[SIG_HEADER_LEN + 1]);

/* 0 when header is a valid signature of body under one of the keys (its index
 * in *slot); -1 with err otherwise. Every key is tried and compared in
 * constant time, so timing tells nothing about which part mismatched. */
MUST_CHECK int sig_verify(const struct sig_keyset *ks, const char *header, const void *body,
                          size_t len, size_t *slot, struct err *e);

/* NFKD-normalises UTF-8 s into a heap buffer (caller frees); NULL if s is not UTF-8. */
unsigned char *sig_nfkd(const char *s, size_t *outlen);

#endif
