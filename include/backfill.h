/*
 * backfill.h - recovers events that webhooks missed: lists /events from the
 * newest down to a saved cursor through the pacer, fetches the missing ones'
 * delivered bodies and ingests them through the webhook path. One run at a
 * time across replicas (a lease it renews), every backfill_interval, on a
 * database connection of its own; an event that fails max_attempts runs is
 * set aside as a dead letter.
 */
#ifndef EPS_BACKFILL_H
#define EPS_BACKFILL_H

#include <event2/event.h>
#include <stdint.h>

struct backfill;
struct strbuf;
struct ingest;
struct pacer;
struct uuid7_gen;

/* A run's steps; every change goes through one transition function. */
enum backfill_state {
        BACKFILL_IDLE,   /* between runs */
        BACKFILL_CURSOR, /* elected, the lease taken, the saved cursor read */
        BACKFILL_LIST,   /* listing /events pages, newest first, down to the cursor */
        BACKFILL_CHECK,  /* asking which listed ids are not stored */
        BACKFILL_FETCH,  /* fetching payloads and ingesting them */
        BACKFILL_SAVE,   /* saving where the next run starts */
};

/* What backfill needs of the configuration. */
struct backfill_settings {
        long interval;    /* seconds between runs, <= 0: off */
        long concurrency; /* payload fetches at once */
        long max_attempts; /* failed runs after which an event is set aside */
};

/* Counters for /metrics. */
struct backfill_stats {
        uint64_t runs;               /* runs started */
        uint64_t runs_completed, runs_failed;
        uint64_t events;             /* events handed to ingest */
        uint64_t recovered;          /* of those, newly stored */
        uint64_t unusable;           /* bodies that did not parse or named another event */
        uint64_t unrecovered;        /* of the stored, from the list item alone (no payload) */
        uint64_t last_run_unrecovered; /* the same, in the last run that ended */
        uint64_t set_aside;          /* stored as dead letters after max_attempts failed runs */
        uint64_t last_success_unix;  /* wall-clock second of the last completed run, 0 = never */
        enum backfill_state state;
};

/* Backfill with its own connection to conninfo; pacer, ingest and uuid are borrowed. */
struct backfill *backfill_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
                              struct ingest *ingest, struct uuid7_gen *uuid,
                              const struct backfill_settings *st);
/* Connects; the first run starts a second later, then every interval. */
void backfill_start(struct backfill *b);
/* New settings (SIGHUP): re-arms an idle backfill (a run stopped by a 401 runs again). */
void backfill_reload(struct backfill *b, const struct backfill_settings *st);
/* Starts a run now (after the one in progress, if any), whatever interval says. */
void backfill_now(struct backfill *b);
/* Stops runs (drain); a run in flight ends at free. */
void backfill_stop(struct backfill *b);
/* Ends a run in flight, closes the connection and frees; after pacer_free. */
void backfill_free(struct backfill *b);
/* Fills the counters. */
void backfill_snapshot(const struct backfill *b, struct backfill_stats *out);
/* Appends the backfill metrics to sb. */
void backfill_render_metrics(const struct backfill *b, struct strbuf *sb);
/* Called after a run that stored events as listed (no payload: what they
 * changed is not known), whatever its outcome. */
typedef void (*backfill_partial_fn)(void *arg);
void backfill_on_partial(struct backfill *b, backfill_partial_fn fn, void *arg);
/* Name of a state, for logs and tests. */
const char *backfill_state_name(enum backfill_state s);

#endif
