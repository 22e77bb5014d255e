/*
 * find.h - `easypost-syncd --find TEXT`: the shipments whose tracking code,
 * reference or recipient (name, company, street, city) contains TEXT,
 * whatever the case and the accents, through eps_find_shipments(). Blocking
 * libpq, a one-shot command like --status; never inside the daemon.
 */
#ifndef EPS_FIND_H
#define EPS_FIND_H

#include <stdio.h>

#include "util.h"

/* Outcomes, which are also the process's exit status. */
enum find_result {
        FIND_FOUND = 0, /* one line per match on out */
        FIND_NONE = 1,  /* nothing matched; out gets nothing */
        FIND_ERROR = 2, /* e says why: database, schema, or a text too short to search */
};

/* Matches printed at most; a line on err says when there were more. */
#define FIND_LIMIT 50

/* Searches conninfo's database for text and prints each match to out as one
 * line of tab-separated fields: shipment (shp_ id), tracker (trk_ id),
 * tracking code, reference, status, recipient, matched fields (comma-
 * separated); "-" for a field without a value. Exact tracking codes come
 * first, then the newest shipments. A note goes to err when more than
 * FIND_LIMIT matched. */
MUST_CHECK enum find_result find_run(const char *conninfo, const char *text, FILE *out, FILE *err,
                                     struct err *e);

#endif
