/*
 * ingest.h - the writer: a bounded queue of verified events committed to
 * PostgreSQL in batches over N db_conn connections.
 *
 * Natural batching: a connection takes everything pending (up to batch_max
 * events and batch_max_bytes) as one pipeline segment = one transaction, and while it is in flight the
 * next batch fills. An item's done callback runs exactly once, only after its
 * transaction's Sync (committed) or when its outcome must be 503.
 */
#ifndef EPS_INGEST_H
#define EPS_INGEST_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "epevent.h"
#include "metrics.h"

enum ingest_result {
        INGEST_STORED,      /* committed (projected, stored raw, or dead-lettered) */
        INGEST_DUPLICATE,   /* an event with this id was already stored */
        INGEST_UNAVAILABLE, /* not committed: database down or transient error */
};

enum ingest_source { INGEST_WEBHOOK, INGEST_BACKFILL };

struct ingest_item;
/* Called once; the callee owns the item from then on and frees it. */
typedef void (*ingest_done_fn)(struct ingest_item *it, enum ingest_result r);

struct ingest_item {
        struct ingest_item *next;  /* queue link, owned by ingest while submitted */
        struct epevent ev;
        char uuid[37];
        const char *body;          /* raw body; borrowed from the HTTP request ... */
        size_t len;
        char *owned_body;          /* ... or owned here once detached */
        enum ingest_source source;
        char *dead_error;          /* set when the event failed alone: store raw + error */
        bool solo;                 /* its batch failed on some event's data: send it alone */
        bool partial;              /* holds less than the delivery (a list item): replaceable */
        unsigned char retries;     /* sent again after a deadlock or serialization failure */
        uint64_t queued_us;        /* when it was submitted (CLOCK_MONOTONIC) */
        char status[16];           /* outcome text from the database */
        ingest_done_fn done;
        void *arg;                 /* for done: the submitter's context */
};

struct ingest_stats {
        uint64_t stored, duplicates, dead_letters, unavailable;
        uint64_t batches, batch_events;
        uint64_t batch_size_buckets[8]; /* <=1, 2, 4, 16, 64, 256, 1024, more */
        uint64_t poison_splits;         /* batches sent again one event at a time */
        uint64_t retries;               /* batches sent again after a deadlock */
        uint64_t batch_byte_cuts;       /* batches closed by their bytes, events still waiting */
        uint64_t partition_missing;     /* events answered 503: no partition for their rows */
        uint64_t partition_missing_us;  /* when the last one was (CLOCK_MONOTONIC), 0 never */
        uint64_t events[METRICS_NDESC][METRICS_OUT_COUNT]; /* answered, by description and outcome */
};

struct ingest;

/* defer: tracker events are stored 'pending' and projected later (see projector.h). */
struct ingest *ingest_new(struct event_base *base, const char *conninfo, unsigned nconn,
                          unsigned queue_limit, unsigned batch_max, bool defer);
/* Called after a commit that left events 'pending' (deferred projection). */
void ingest_on_pending(struct ingest *g, void (*fn)(void *arg), void *arg);
/* Deferred: after that commit, fn is handed each new pending tracker event's
 * typed snapshot with the event's row id and result.id; fn owns trk (arg is
 * on_pending's). Called before on_pending. */
typedef void (*ingest_typed_fn)(void *arg, const char *uuid, const char *object_id, struct eptracker *trk);
void ingest_on_typed(struct ingest *g, ingest_typed_fn fn);
/* Answers every queued and in-flight item INGEST_UNAVAILABLE and closes the
 * connections; the object stays valid (no room, database down, depth 0) for
 * whoever still asks, until ingest_free. */
void ingest_close(struct ingest *g);
/* ingest_close, then frees. */
void ingest_free(struct ingest *g);
void ingest_start(struct ingest *g);
void ingest_set_batch_max(struct ingest *g, unsigned batch_max);
/* Bodies per batch at most (INGEST_BATCH_BYTES_DEFAULT until set); an event
 * larger than that goes alone. */
#define INGEST_BATCH_BYTES_DEFAULT ((size_t)64 << 20)
void ingest_set_batch_bytes(struct ingest *g, size_t bytes);
/* A batch unanswered for ms drops its connection: its events get 503 and the
 * connection comes back by itself. Before ingest_start. */
void ingest_set_db_timeout(struct ingest *g, unsigned ms);
/* An event was answered 503 within the last minute because a row of it had
 * no partition to go to (its month not made yet): /readyz reports it. */
bool ingest_partition_missing(const struct ingest *g);

/* Room for one more item? (queue_limit counts items not yet answered) */
bool ingest_has_room(const struct ingest *g);
/* True when at least one connection is READY. */
bool ingest_db_up(const struct ingest *g);
/* Takes ownership of it until it->done. Never fails: check has_room first. */
void ingest_submit(struct ingest *g, struct ingest_item *it);
/* Frees what the item owns (parsed fields, a detached body, a dead-letter
 * error); the item itself stays the caller's. */
void ingest_item_fini(struct ingest_item *it);
/* Copies the borrowed body so the request that lent it can be answered early. */
void ingest_item_detach(struct ingest_item *it);

unsigned ingest_depth(const struct ingest *g);
unsigned ingest_limit(const struct ingest *g);
unsigned ingest_conns(const struct ingest *g);
unsigned ingest_conns_ready(const struct ingest *g);
unsigned ingest_conns_busy(const struct ingest *g);
unsigned long ingest_reconnects(const struct ingest *g);
const struct ingest_stats *ingest_stats(const struct ingest *g);
/* Appends the events, batches, queue and connection metrics to b. */
void ingest_render_metrics(const struct ingest *g, struct strbuf *b);
/* True when nothing is queued or in flight. */
bool ingest_idle(const struct ingest *g);

#endif
