/*
 * util.h - the few helpers every module shares: allocation that aborts on
 * out-of-memory, clocks, random bytes and the error buffer pure modules fill.
 */
#ifndef EPS_UTIL_H
#define EPS_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define MUST_CHECK __attribute__((warn_unused_result))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Filled by library-like modules instead of logging; the caller logs once. */
struct err {
        int code;
        char msg[256];
};

void err_set(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Abort on out-of-memory (the Redis zmalloc policy): callers never check. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

uint64_t clock_mono_us(void);   /* CLOCK_MONOTONIC: intervals and deadlines */
uint64_t clock_real_ms(void);   /* CLOCK_REALTIME: timestamps and UUIDv7 */

/* Cryptographically strong random bytes (getrandom); aborts if the kernel refuses. */
void random_fill(void *buf, size_t n);

/* Exponential backoff with +/-20 % jitter: min(cap, base << attempt). */
unsigned backoff_ms(unsigned attempt, unsigned base_ms, unsigned cap_ms);

/* Reads a whole file into a NUL-terminated heap buffer; NULL with err on failure. */
char *file_read_all(const char *path, size_t *len, struct err *e);

#endif
