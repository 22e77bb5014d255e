/*
 * pgarr.c - see pgarr.h.
 *
 * A one-dimensional array in PostgreSQL's binary format (array_recv):
 * ndim, has-nulls flag, element type, length and lower bound, then each
 * element as a 32-bit length (-1: NULL) and its bytes.
 */
#include "pgarr.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Arrays keep their buffers for the next statement (no growth by doubling
 * every time), except one grown past this by a large batch. */
#define PGARR_KEEP_BYTES (1u << 20)

static void
grow(struct pgarr *a, size_t n)
{
        a->cap = a->cap ? a->cap * 2 : 256;
        while (a->cap < a->len + n)
                a->cap *= 2;
        a->buf = xrealloc(a->buf, a->cap);
}

/* Room for n more bytes; where they go. */
static inline unsigned char *
reserve(struct pgarr *a, size_t n)
{
        if (a->len + n > a->cap)
                grow(a, n);
        return (unsigned char *)a->buf + a->len;
}

static inline void
be32(unsigned char *b, uint32_t v)
{
        b[0] = (unsigned char)(v >> 24);
        b[1] = (unsigned char)(v >> 16);
        b[2] = (unsigned char)(v >> 8);
        b[3] = (unsigned char)v;
}

static inline void
put(struct pgarr *a, const void *p, size_t n)
{
        memcpy(reserve(a, n), p, n);
        a->len += n;
}

static inline void
put_u32(struct pgarr *a, uint32_t v)
{
        be32(reserve(a, 4), v);
        a->len += 4;
}

void
pgarr_begin(struct pgarr *a, Oid elem, unsigned n)
{
        a->len = 0;
        put_u32(a, 1);    /* ndim */
        put_u32(a, 1);    /* may hold NULLs */
        put_u32(a, elem);
        put_u32(a, n);    /* length */
        put_u32(a, 1);    /* lower bound */
}

void
pgarr_add(struct pgarr *a, const char *p, size_t n)
{
        if (p == NULL) {
                put_u32(a, UINT32_MAX);
                return;
        }
        unsigned char *b = reserve(a, 4 + n);
        be32(b, (uint32_t)n);
        memcpy(b + 4, p, n);
        a->len += 4 + n;
}

void
pgarr_str(struct pgarr *a, const char *s)
{
        pgarr_add(a, s, s ? strlen(s) : 0);
}

void
pgarr_int(struct pgarr *a, uint32_t v)
{
        unsigned char *b = reserve(a, 8);
        be32(b, 4);
        be32(b + 4, v);
        a->len += 8;
}

static int
hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        c |= 0x20;
        return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

void
pgarr_uuid(struct pgarr *a, const char *uuid)
{
        unsigned char u[16];
        unsigned k = 0;

        /* 8-4-4-4-12 hex digits, made by uuid7_next_str: always well formed */
        for (const char *c = uuid; *c && k < 16; c++) {
                if (*c == '-')
                        continue;
                int hi = hexval(c[0]), lo = c[1] ? hexval(c[1]) : -1;
                if (hi < 0 || lo < 0)
                        abort();
                u[k++] = (unsigned char)(hi << 4 | lo);
                c++;
        }
        if (k != 16)
                abort();
        pgarr_add(a, (const char *)u, sizeof(u));
}

void
pgarr_trim(struct pgarr *a)
{
        if (a->cap > PGARR_KEEP_BYTES) {
                free(a->buf);
                *a = (struct pgarr){ 0 };
        }
}

Oid
pgarr_type(Oid elem)
{
        switch (elem) {
        case PGARR_UUIDOID: return 2951;
        case PGARR_INT4OID: return 1007;
        case PGARR_JSONBOID: return 3807;
        default: return 1009; /* text[] */
        }
}

Oid
pgarr_snapshot_elem(int k)
{
        static const Oid elem[PGARR_SNAPSHOT] = {
                /* t_: shp, mode, code, carrier, status, status_detail, est, signed_by, url,
                 * carrier_detail, created, updated, the event's updated, created, details */
                PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID,
                PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_JSONBOID,
                PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_INT4OID,
                /* d_: key, position, status, status_detail, message, description,
                 * carrier_code, source, datetime, tracking_location (its JSON text: parsed
                 * only for the details written, d_location_text) */
                PGARR_INT4OID, PGARR_INT4OID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID,
                PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID, PGARR_TEXTOID,
        };
        return elem[k];
}

void
pgarr_snapshot_begin(struct pgarr *a, unsigned n, unsigned nd)
{
        for (int k = 0; k < PGARR_SNAPSHOT; k++)
                pgarr_begin(&a[k], pgarr_snapshot_elem(k), k < PGARR_TRK ? n : nd);
}

static void
add_epstr(struct pgarr *a, struct epstr v)
{
        pgarr_add(a, v.p, v.n);
}

/* jsonb in binary: a version byte (1), then the JSON text */
static void
add_jsonb(struct pgarr *a, struct epstr v)
{
        if (v.p == NULL) {
                put_u32(a, UINT32_MAX);
                return;
        }
        unsigned char *b = reserve(a, 5 + v.n);
        be32(b, (uint32_t)v.n + 1);
        b[4] = 1;
        memcpy(b + 5, v.p, v.n);
        a->len += 5 + v.n;
}

void
pgarr_snapshot_add(struct pgarr *a, unsigned key, const struct eptracker *t)
{
        struct pgarr *ta = a, *da = a + PGARR_TRK;

        if (t == NULL) {
                for (int k = 0; k < PGARR_TRK; k++)
                        pgarr_add(&ta[k], NULL, 0);
                return;
        }
        add_epstr(&ta[0], t->shp);
        add_epstr(&ta[1], t->mode);
        add_epstr(&ta[2], t->code);
        add_epstr(&ta[3], t->carrier);
        add_epstr(&ta[4], t->status);
        add_epstr(&ta[5], t->status_detail);
        add_epstr(&ta[6], t->est);
        add_epstr(&ta[7], t->signed_by);
        add_epstr(&ta[8], t->url);
        add_jsonb(&ta[9], t->cdetail);
        add_epstr(&ta[10], t->created);
        add_epstr(&ta[11], t->updated);
        add_epstr(&ta[12], t->ev_updated);
        add_epstr(&ta[13], t->ev_created);
        pgarr_int(&ta[14], t->ndetails);
        for (size_t j = 0; j < t->nd; j++) {
                const struct epdetail *d = &t->d[j];
                pgarr_int(&da[0], key);
                pgarr_int(&da[1], d->pos);
                add_epstr(&da[2], d->status);
                add_epstr(&da[3], d->status_detail);
                add_epstr(&da[4], d->message);
                add_epstr(&da[5], d->description);
                add_epstr(&da[6], d->carrier_code);
                add_epstr(&da[7], d->source);
                add_epstr(&da[8], d->datetime);
                add_epstr(&da[9], d->location);
        }
}
