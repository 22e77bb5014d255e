/*
 * timers.h - the periodic work beside the webhooks: a system_metrics row
 * every metrics_interval, and the analytics views refreshed every
 * analytics_interval (one replica per view and wall-clock slot), with the
 * monthly partitions' upkeep (parts.h) on each analytics tick. Each timer
 * is one-shot and re-armed when its work finishes, so runs never overlap;
 * each, and the upkeep, runs on a connection of its own with a deadline and
 * limits fitting its work, so a slow refresh never delays a webhook or a
 * metrics row, and an upkeep waiting on old snapshots never delays a refresh.
 */
#ifndef EPS_TIMERS_H
#define EPS_TIMERS_H

#include <event2/event.h>
#include <stdint.h>

#include "metrics.h"
#include "parts.h"

struct timers;
struct strbuf;

#define TIMERS_NVIEWS 4

/* What the timers need of the configuration; strings are copied. */
struct timers_settings {
        const char *instance_id;
        long metrics_interval;   /* seconds, <= 0: no system_metrics rows */
        long analytics_interval; /* seconds, <= 0: no refreshes */
        long retention_days;     /* system_metrics rows older than this are deleted */
        struct parts_settings parts; /* the partitions' upkeep, on a connection of its own */
};

/* One system_metrics row's raw figures, filled by the owner's sampler. */
struct timers_sample {
        unsigned long rss_bytes;
        unsigned open_fds;
        double cpu_seconds;                      /* user + system since start */
        unsigned queue_depth, queue_limit;
        unsigned conns, conns_up, conns_busy;
        uint64_t requests, c4xx, c5xx;           /* HTTP answers since start */
        uint64_t stored, duplicates;             /* events since start */
        struct latency_hist ack_window;          /* since the last sample */
        unsigned api_in_flight;
        double uptime_s;
};
/* Fills out; called at start and on each system_metrics tick. */
typedef void (*timers_sample_fn)(struct timers_sample *out, void *arg);

/* One view's refreshes, for /metrics. */
struct timers_view_stats {
        const char *name;
        uint64_t ok, failed, skipped;
        double last_duration_ms;
        long long last_rows;
        uint64_t last_refresh_unix; /* last successful refresh by any replica, 0 = never */
};

/* Timers with their own connections to conninfo; sample fills each system_metrics row. */
struct timers *timers_new(struct event_base *base, const char *conninfo,
                          const struct timers_settings *st, timers_sample_fn sample, void *arg);
/* Connects and arms both timers. */
void timers_start(struct timers *t);
/* New intervals (SIGHUP): re-arms idle timers with them. */
void timers_reload(struct timers *t, const struct timers_settings *st);
/* Stops the timers (drain); work in flight is abandoned at free. */
void timers_stop(struct timers *t);
/* Closes the connections and frees. */
void timers_free(struct timers *t);
/* The views' counters (TIMERS_NVIEWS entries, owned by t). */
const struct timers_view_stats *timers_views(const struct timers *t);
/* Appends the analytics refresh metrics to b. */
void timers_render_metrics(const struct timers *t, struct strbuf *b);

#endif
