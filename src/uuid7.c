/*
 * uuid7.c - time-ordered ids for primary keys, so inserts land at the right
 * edge of the B-tree. Monotonic per generator even if the clock steps back:
 * the counter continues from the last timestamp, and when it runs out the
 * next millisecond is borrowed.
 */
#include "uuid7.h"

#include <string.h>

#include "util.h"

void
uuid7_init(struct uuid7_gen *g)
{
        memset(g, 0, sizeof(*g));
        g->clock_ms = clock_real_ms;
        g->pool_used = sizeof(g->pool);
}

/* The next UUID7_RAND unused random bytes of the pool, refilled when spent. */
static const unsigned char *
pool_take(struct uuid7_gen *g)
{
        if (g->pool_used + UUID7_RAND > sizeof(g->pool)) {
                random_fill(g->pool, sizeof(g->pool));
                g->pool_used = 0;
        }
        const unsigned char *r = g->pool + g->pool_used;
        g->pool_used += UUID7_RAND;
        return r;
}

void
uuid7_next(struct uuid7_gen *g, uuid_t out)
{
        uint64_t ms = g->clock_ms();
        const unsigned char *rnd = pool_take(g);

        if (ms > g->last_ms) {
                /* new millisecond: random start with headroom for the counter */
                g->seq = (unsigned)((rnd[0] << 8) | rnd[1]) & 0x7ff;
        } else if (++g->seq > 0xfff) {
                ms = g->last_ms + 1;
                g->seq = (unsigned)((rnd[0] << 8) | rnd[1]) & 0x7ff;
        } else {
                ms = g->last_ms;
        }
        g->last_ms = ms;

        for (int i = 0; i < 6; i++)
                out[i] = (unsigned char)(ms >> (40 - 8 * i));
        out[6] = (unsigned char)(0x70 | (g->seq >> 8));
        out[7] = (unsigned char)(g->seq & 0xff);
        memcpy(out + 8, rnd + 2, 8);
        out[8] = (unsigned char)((out[8] & 0x3f) | 0x80);
}

void
uuid7_next_str(struct uuid7_gen *g, char out[37])
{
        uuid_t u;

        uuid7_next(g, u);
        uuid_unparse_lower(u, out);
}
