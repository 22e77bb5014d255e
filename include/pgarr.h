/*
 * pgarr.h - one-dimensional arrays in PostgreSQL's binary format, built for
 * a statement's parameters, and the typed tracker snapshots of
 * eps_project_trackers as such arrays.
 */
#ifndef EPS_PGARR_H
#define EPS_PGARR_H
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "epevent.h"

#define PGARR_UUIDOID 2950
#define PGARR_TEXTOID 25
#define PGARR_INT4OID 23
#define PGARR_JSONBOID 3802

/* the snapshot arrays: per snapshot (t_*), then per tracking detail (d_*) */
#define PGARR_TRK 15
#define PGARR_DETAIL 10
#define PGARR_SNAPSHOT (PGARR_TRK + PGARR_DETAIL)

/* An array being built: begin, one add per element. buf is owned; a
 * struct pgarr keeps it for the next array (pgarr_trim frees a large one). */
struct pgarr {
        char *buf;
        size_t len, cap;
};

void pgarr_begin(struct pgarr *a, Oid elem, unsigned n);
/* One element: p/n, or NULL when p is NULL. */
void pgarr_add(struct pgarr *a, const char *p, size_t n);
void pgarr_str(struct pgarr *a, const char *s);
void pgarr_int(struct pgarr *a, uint32_t v);
/* A UUID in its text form (36 characters). */
void pgarr_uuid(struct pgarr *a, const char *uuid);
/* Frees the buffer when it grew past what is worth keeping. */
void pgarr_trim(struct pgarr *a);
/* The type of the array of elem, e.g. PGARR_TEXTOID -> text[]. */
Oid pgarr_type(Oid elem);

/* The element type of snapshot array k (0 .. PGARR_SNAPSHOT-1). */
Oid pgarr_snapshot_elem(int k);
/* Begins the PGARR_SNAPSHOT arrays at a: n snapshots, nd details in all. */
void pgarr_snapshot_begin(struct pgarr *a, unsigned n, unsigned nd);
/* Adds a snapshot, NULL for an event that has none, its details under key
 * (its 1-based position among the snapshots). */
void pgarr_snapshot_add(struct pgarr *a, unsigned key, const struct eptracker *t);

#endif
