/*
 * reproject.h - `easypost-syncd --reproject`: rebuilds the projections
 * (trackers, the shipments' tracker status, shipment_events, the other
 * objects' tables) from the stored raw events, through the same projection
 * code, online: one short transaction per step (eps_reproject_step), under
 * the ingest's lock order. The run's cursor lives in sync_state, so a
 * stopped run resumes. Blocking libpq, instead of the daemon, never in it.
 */
#ifndef EPS_REPROJECT_H
#define EPS_REPROJECT_H

#include <stdio.h>

#include "util.h"

#define REPROJECT_BATCH_DEFAULT 100 /* trackers (or events) per transaction */

/* A run's totals (over every process that worked on it). */
struct reproject_totals {
        long long trackers;         /* rebuilt from their stored events */
        long long events;           /* tracker events projected again */
        long long history_deleted;  /* shipment_events rows of those trackers before */
        long long history_inserted; /* and after */
        long long refetch;          /* trackers whose row was ahead of every event: fetch queued */
        long long orphans;          /* history rows of deleted tracker rows, removed */
        long long objects;          /* other events projected again */
        long long failed;           /* trackers or events the projection refused (left as they were) */
        long long kept;             /* trackers without a stored event (fetched only), untouched */
};

/* Runs (or resumes) the rebuild to its end, batch trackers or events per
 * transaction; a progress line on progress at most once a second and at each
 * phase, the totals at the end. 0 when it finished (t filled), -1 with err
 * when the database failed (the run stays resumable). */
MUST_CHECK int reproject_run(const char *conninfo, int batch, FILE *progress,
                             struct reproject_totals *t, struct err *e);

#endif
