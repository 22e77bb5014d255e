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

/* A decoded string, not NUL-terminated; p NULL when absent or JSON null. */
struct epstr {
        const char *p;
        size_t n;
};

/* One element of tracking_details (an object), typed. */
struct epdetail {
        unsigned pos; /* 1-based position in tracking_details */
        struct epstr status, status_detail, message, description, carrier_code, source, datetime;
        struct epstr location; /* tracking_location's JSON text, only when an object */
};

/*
 * A tracker event's snapshot as the projection takes it (eps_project_trackers):
 * each field what PostgreSQL's ->> would give, so that PostgreSQL parses no
 * JSON for it. Made only when that is exact: "result" an object whose id is
 * a trk_ id, every field taken a string or null, tracking_details absent,
 * null or an array of objects, no U+0000 anywhere. Otherwise NULL, and the
 * body is projected from jsonb.
 */
struct eptracker {
        struct epstr shp, mode, code, carrier, status, status_detail, est, signed_by, url;
        struct epstr cdetail; /* carrier_detail's JSON text, whatever its type */
        struct epstr created, updated;       /* result's created_at, updated_at */
        struct epstr ev_updated, ev_created; /* the event's */
        unsigned ndetails;                   /* elements of tracking_details */
        struct epdetail *d;                  /* all of them, in order */
        size_t nd, capd;
        char *arena; /* the strings above point here, nothing else */
        size_t used, cap;
};

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
        /* a tracker.created / tracker.updated event's snapshot, typed (heap,
         * owned), or NULL: see struct eptracker */
        struct eptracker *trk;
};

/* Parses body[0..len). 0 on success; -1 with err (a message fit for a 400). */
MUST_CHECK int epevent_parse(const void *body, size_t len, struct epevent *ev, struct err *e);
void epevent_fini(struct epevent *ev);
/* Frees a snapshot taken out of its event (t may be NULL). */
void eptracker_free(struct eptracker *t);
/* The heap a snapshot holds, in bytes. */
size_t eptracker_bytes(const struct eptracker *t);

/* True when s is a non-empty id of letters, digits, '_' and '-' only: safe
 * to put into JSON, URLs and array literals as it is. */
bool epevent_id_plain(const char *s);

/* True when s is an ISO 8601 timestamp PostgreSQL accepts as timestamptz. */
bool epevent_valid_time(const char *s);

#endif
