/*
 * epevent.h - parses and validates one EasyPost Event object from the raw
 * body. Pure: no I/O, no logging. The raw body is never modified or copied;
 * only the few fields the ingest path needs are copied out.
 */
#ifndef EPS_EPEVENT_H
#define EPS_EPEVENT_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define EPEVENT_ID_MAX 64
#define EPEVENT_DESC_MAX 128

struct epevent {
        char id[EPEVENT_ID_MAX + 1];            /* "evt_..." */
        char description[EPEVENT_DESC_MAX + 1]; /* e.g. "tracker.updated" */
        char mode[16];                          /* "test" / "production" / "" */
        char object_id[EPEVENT_ID_MAX + 1];     /* result.id or "" */
        char created_at[40];                    /* ISO 8601 as sent, "" if absent or invalid */
        /* A string holds U+0000, which jsonb cannot store: the body goes to
         * PostgreSQL as text only, and `clean` (heap, owned) holds the same
         * document with those characters removed, for projection. */
        bool has_nul;
        char *clean;
};

/* Parses body[0..len). 0 on success; -1 with err (a message fit for a 400). */
MUST_CHECK int epevent_parse(const void *body, size_t len, struct epevent *ev, struct err *e);
void epevent_fini(struct epevent *ev);

/* True when s is a non-empty id of letters, digits, '_' and '-' only: safe
 * to put into JSON, URLs and array literals as it is. */
bool epevent_id_plain(const char *s);

/* True when s is an ISO 8601 timestamp PostgreSQL accepts as timestamptz. */
bool epevent_valid_time(const char *s);

#endif
