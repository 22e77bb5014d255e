/*
 * jobs.h - periodic work beside the webhooks: a system_metrics row every
 * metrics_interval, the analytics views refreshed every analytics_interval,
 * and the schema version check behind /readyz. Each timer is one-shot and
 * re-armed when its work finishes, so runs never overlap; each runs on a
 * connection of its own, so a slow refresh never delays a webhook.
 */
#ifndef EPS_JOBS_H
#define EPS_JOBS_H

#include <stdbool.h>
#include <stdint.h>

struct app;
struct jobs;

#define JOBS_NVIEWS 3

struct jobs_view_stats {
        const char *name;
        uint64_t ok, failed, skipped;
        double last_duration_ms;
        long long last_rows;
};

struct jobs *jobs_new(struct app *a);
void jobs_start(struct jobs *j);
/* Stops the timers (drain); work in flight is abandoned at free. */
void jobs_stop(struct jobs *j);
void jobs_free(struct jobs *j);
/* Intervals may have changed (SIGHUP): re-arm idle timers with the new ones. */
void jobs_reload(struct jobs *j);

/* Highest applied migration seen on the jobs connection; -1 until known. */
int jobs_schema_version(const struct jobs *j);
bool jobs_db_up(const struct jobs *j);
const struct jobs_view_stats *jobs_views(const struct jobs *j);
/* Deferred projection: more events are pending (an ingest hook; arg = jobs). */
void jobs_project_kick(void *arg);
uint64_t jobs_projected(const struct jobs *j);

#endif
