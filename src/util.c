/*
 * util.c - allocation, clocks, randomness and backoff shared by all modules.
 * Nothing here knows about the event loop.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void
err_set(struct err *e, int code, const char *fmt, ...)
{
        va_list ap;

        if (e == NULL)
                return;
        e->code = code;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
}

static void
oom(size_t n)
{
        fprintf(stderr, "lvl=crit mod=util msg=\"out of memory allocating %zu bytes\"\n", n);
        abort();
}

void *
xmalloc(size_t n)
{
        void *p = malloc(n ? n : 1);

        if (p == NULL)
                oom(n);
        return p;
}

void *
xcalloc(size_t n, size_t size)
{
        void *p = calloc(n ? n : 1, size ? size : 1);

        if (p == NULL)
                oom(n * size);
        return p;
}

void *
xrealloc(void *p, size_t n)
{
        void *q = realloc(p, n ? n : 1);

        if (q == NULL)
                oom(n);
        return q;
}

char *
xstrdup(const char *s)
{
        return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
        char *p = xmalloc(n + 1);

        memcpy(p, s, n);
        p[n] = '\0';
        return p;
}

uint64_t
clock_mono_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
clock_real_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void
random_fill(void *buf, size_t n)
{
        unsigned char *p = buf;

        while (n > 0) {
                ssize_t r = getrandom(p, n, 0);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        fprintf(stderr, "lvl=crit mod=util msg=\"getrandom failed\"\n");
                        abort();
                }
                p += r;
                n -= (size_t)r;
        }
}

unsigned
backoff_ms(unsigned attempt, unsigned base_ms, unsigned cap_ms)
{
        uint64_t ms = base_ms;
        uint32_t r;

        for (unsigned i = 0; i < attempt && ms < cap_ms; i++)
                ms <<= 1;
        if (ms > cap_ms)
                ms = cap_ms;
        random_fill(&r, sizeof(r));
        /* jitter in [-20 %, +20 %] */
        int64_t span = (int64_t)ms * 2 / 5;
        int64_t jitter = span > 0 ? (int64_t)(r % (uint64_t)(span + 1)) - span / 2 : 0;
        int64_t out = (int64_t)ms + jitter;
        return out < 1 ? 1u : (unsigned)out;
}

char *
file_read_all(const char *path, size_t *len, struct err *e)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        char *buf = NULL;
        size_t cap = 0, n = 0;

        if (fd < 0) {
                err_set(e, errno, "%s: %s", path, strerror(errno));
                return NULL;
        }
        if (fstat(fd, &st) == 0 && st.st_size > 0)
                cap = (size_t)st.st_size;
        buf = xmalloc(cap + 1);
        for (;;) {
                if (n == cap) {
                        cap = cap ? cap * 2 : 4096;
                        buf = xrealloc(buf, cap + 1);
                }
                ssize_t r = read(fd, buf + n, cap - n);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        err_set(e, errno, "%s: %s", path, strerror(errno));
                        free(buf);
                        close(fd);
                        return NULL;
                }
                if (r == 0)
                        break;
                n += (size_t)r;
        }
        close(fd);
        buf[n] = '\0';
        if (len)
                *len = n;
        return buf;
}
