/*
 * projector.h - the deferred projector (projection = deferred): on a
 * connection of its own, projects the snapshots ingest hands over
 * (eps_project_typed) and runs eps_project_pending in batches for the rest
 * of the queue, whenever ingest reports pending events, and every second
 * for what another replica or a crash left behind.
 */
#ifndef EPS_PROJECTOR_H
#define EPS_PROJECTOR_H

#include <event2/event.h>
#include <stdint.h>

#include "epevent.h"

struct projector;
struct strbuf;

/* Counters for /metrics. */
struct projector_stats {
        uint64_t projected; /* events projected by this process */
        uint64_t failed;    /* events it took whose projection failed (stored 'failed') */
        uint64_t typed;     /* of the projected, from the snapshot ingest typed */
        uint64_t dropped;   /* snapshots not kept (bounds, stopping): projected from the raw row */
};

/* A projector on its own connection to conninfo; a batch unanswered for db_timeout_ms drops it. */
struct projector *projector_new(struct event_base *base, const char *conninfo, unsigned db_timeout_ms);
/* Connects and starts the one-second poll. */
void projector_start(struct projector *p);
/* Stops the poll and new batches (drain). */
void projector_stop(struct projector *p);
/* Closes the connection (a batch in flight is abandoned) and frees. */
void projector_free(struct projector *p);
/* More events are pending: project now (ingest's on_pending hook; arg = the projector). */
void projector_kick(void *arg);
/* Ingest's on_typed hook (arg = the projector): keeps trk, the typed
 * snapshot of pending event uuid, for a typed batch, or frees it. */
void projector_take(void *arg, const char *uuid, const char *object_id, struct eptracker *trk);
/* Fills the counters. */
void projector_snapshot(const struct projector *p, struct projector_stats *out);
/* Appends the deferred projection metrics to b (p may be NULL: projection inline). */
void projector_render_metrics(const struct projector *p, struct strbuf *b);

#endif
