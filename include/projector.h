/*
 * projector.h - the deferred projector (projection = deferred): on a
 * connection of its own, runs eps_project_pending in batches whenever ingest
 * reports pending events, and every second for what another replica or a
 * crash left behind.
 */
#ifndef EPS_PROJECTOR_H
#define EPS_PROJECTOR_H

#include <event2/event.h>
#include <stdint.h>

struct projector;
struct strbuf;

/* Counters for /metrics. */
struct projector_stats {
        uint64_t projected; /* events projected by this process */
        uint64_t failed;    /* events it took whose projection failed (stored 'failed') */
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
/* Fills the counters. */
void projector_snapshot(const struct projector *p, struct projector_stats *out);
/* Appends the deferred projection metrics to b (p may be NULL: projection inline). */
void projector_render_metrics(const struct projector *p, struct strbuf *b);

#endif
