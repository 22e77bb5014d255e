/*
 * syncjobs.h - the sync-job worker: claims rows of sync_jobs on a database
 * connection of its own, fetches each named shipment or tracker through the
 * pacer, and records the outcome under its claim (instance + attempt).
 * Idle when the pacer has no API key or the key was rejected.
 */
#ifndef EPS_SYNCJOBS_H
#define EPS_SYNCJOBS_H

#include <event2/event.h>
#include <stdint.h>

struct pacer;
struct strbuf;
struct syncjobs;

/* What the worker needs of the configuration; strings are copied. */
struct syncjobs_settings {
        const char *instance_id; /* names the claim */
        long interval;           /* seconds between claims, <= 0: off */
        long concurrency;        /* jobs held at once */
        long lease_s;            /* a claim's lease */
        long max_attempts;       /* a job past it ends failed */
        long gauges_s;           /* the table's rows by status are read this often */
};

/* Outcomes recorded by this process, and the table's rows as last read. */
struct syncjobs_stats {
        uint64_t done, retried, failed;
        long long pending, running, failed_rows; /* rows by status; 0 until read */
        double oldest_pending_s;                  /* age of the oldest pending job, 0 if none */
};

/* The worker with its own connection to conninfo; API requests go through pacer (borrowed). */
struct syncjobs *syncjobs_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
                              const struct syncjobs_settings *st);
/* Connects and arms the claim timer. */
void syncjobs_start(struct syncjobs *w);
/* New settings (SIGHUP): claims again now (a new key may have come with them). */
void syncjobs_reload(struct syncjobs *w, const struct syncjobs_settings *st);
/* Stops claiming (drain); answers still in flight are dropped at free. */
void syncjobs_stop(struct syncjobs *w);
/* Closes the connection and frees; call after pacer_free has answered every request. */
void syncjobs_free(struct syncjobs *w);
/* Fills the counters. */
void syncjobs_snapshot(const struct syncjobs *w, struct syncjobs_stats *out);
/* Appends the sync job metrics to b. */
void syncjobs_render_metrics(const struct syncjobs *w, struct strbuf *b);

#endif
