/*
 * uuid7.h - RFC 9562 UUID version 7: 48-bit Unix ms, version 7, a 12-bit
 * counter that keeps ids strictly increasing within a process, variant 10,
 * 62 random bits. libuuid gives the uuid_t type and the text form.
 */
#ifndef EPS_UUID7_H
#define EPS_UUID7_H

#include <stdint.h>
#include <uuid/uuid.h>

/* Random bytes come from a pool refilled by one getrandom per
 * UUID7_POOL_IDS ids instead of one system call per id (a process that forks
 * must not share a generator: parent and child would draw the same bytes). */
#define UUID7_RAND 10 /* random bytes per id: 12 bits of counter start, 62 of id */
#define UUID7_POOL_IDS 64

struct uuid7_gen {
        uint64_t last_ms;
        unsigned seq;
        uint64_t (*clock_ms)(void); /* realtime ms; tests substitute a fake clock */
        unsigned char pool[UUID7_RAND * UUID7_POOL_IDS];
        size_t pool_used; /* bytes of pool already handed out */
};

void uuid7_init(struct uuid7_gen *g);
void uuid7_next(struct uuid7_gen *g, uuid_t out);
/* Next id as 36 lowercase characters plus NUL. */
void uuid7_next_str(struct uuid7_gen *g, char out[37]);

#endif
