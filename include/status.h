/*
 * status.h - easypost-syncd --status: a report of the pipeline read from the
 * database that a person takes in at one glance (events of the last hour and
 * day, dead letters, projection backlog, sync jobs, backfill, analytics
 * refreshes, the newest system_metrics row per instance), as text or as one
 * JSON object, with a verdict. Blocking libpq: a one-shot command, like
 * --migrate; it never runs inside the daemon.
 */
#ifndef EPS_STATUS_H
#define EPS_STATUS_H

#include <stdbool.h>
#include <stdio.h>

#include "cfg.h"
#include "util.h"

/* The verdict, which is also the process's exit status. */
enum status_verdict {
        STATUS_HEALTHY = 0,   /* nothing needs attention */
        STATUS_ATTENTION = 1, /* the report names each reason */
        STATUS_ERROR = 2,     /* no report: database unreachable, schema too old, a query failed */
};

/* Thresholds of the verdict that the configuration does not give. */
#define STATUS_BACKLOG_MAX_S 300     /* oldest pending projection */
#define STATUS_SYNC_OVERDUE_S 900    /* a due sync job nobody claimed (with an API key) */
#define STATUS_STALE_INTERVALS 3     /* analytics / metrics / backfill intervals missed */

/* Reads the report from cfg's database and prints it to out (text, or one
 * JSON object when json). Uses cfg's intervals and API key to judge the
 * timers. Returns the verdict; on STATUS_ERROR e says why and out gets only
 * {"status":"error","error":...} when json (nothing as text). */
MUST_CHECK enum status_verdict status_run(const struct cfg *cfg, bool json, FILE *out,
                                          struct err *e);

#endif
