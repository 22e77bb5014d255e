/*
 * reconcile.h - converges the database to EasyPost's trackers: lists
 * GET /trackers (newest first, 100 a page, paged with before_id, filtered on
 * the trackers' creation time) through the pacer and applies each Tracker
 * through the projection, newer wins (eps_reconcile_page). One run at a time
 * across replicas (a lease in sync_state); a run stopped by a restart, a
 * 401 or a long 429 pause resumes from its cursor. Runs on a schedule
 * (elected per slot), when asked (a re-enabled webhook, a backfill that
 * stored events without a payload, --reconcile), on a connection of its own.
 */
#ifndef EPS_RECONCILE_H
#define EPS_RECONCILE_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

struct cfg;
struct pacer;
struct reconcile;
struct strbuf;

/* Why a run starts; the names are reconcile_runs.reason. */
enum reconcile_reason {
        RECONCILE_WEBHOOK,  /* a disabled webhook was re-enabled */
        RECONCILE_BACKFILL, /* a backfill stored events it could not recover whole */
        RECONCILE_SCHEDULE, /* every interval, one replica per slot */
        RECONCILE_MANUAL,   /* easypost-syncd --reconcile */
};

/* What the reconciler needs of the configuration; strings are copied. */
struct reconcile_settings {
        const char *instance_id; /* names the replica in reconcile_runs */
        long interval;           /* seconds between scheduled runs, <= 0: off */
        long window_days;        /* days before the asked-for time (or now) a run's window starts */
};

/* A run's totals, for the progress callback, /metrics and --reconcile. */
struct reconcile_totals {
        uint64_t listed, changed, status_changed, created;
};

/* Counters for /metrics. */
struct reconcile_stats {
        uint64_t runs_completed, runs_stopped;
        struct reconcile_totals sum;  /* over this process's pages */
        uint64_t skipped;             /* trackers of those pages the schema refused */
        struct reconcile_totals last; /* of the last completed run */
        uint64_t last_run_unix;       /* wall-clock second the last run completed, 0 = never */
        uint64_t drift_runs[4];       /* completed runs that changed or created, by reason */
        bool running;
};

/* Progress of a run: after each page (end false) and when it ends (end true:
 * outcome "completed", "stopped" or "busy" (another replica holds the run),
 * why says what stopped it). more: another run follows (an asked-for one
 * waited behind a resumed one). */
struct reconcile_progress {
        bool end, more;
        const char *outcome, *why, *reason;
        long long run;
        struct reconcile_totals t;
};
typedef void (*reconcile_progress_fn)(const struct reconcile_progress *p, void *arg);

/* The reconciler with its own connection to conninfo; pacer is borrowed. */
struct reconcile *reconcile_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
                                const struct reconcile_settings *st);
/* Connects; resumes a stopped run soon after, then runs on the interval's slots. */
void reconcile_start(struct reconcile *r);
/* New settings (SIGHUP; the pacer may have a new key): a stopped run resumes. */
void reconcile_reload(struct reconcile *r, const struct reconcile_settings *st);
/* Asks for a run of the trackers created from window_days before since (a
 * time as EasyPost writes it; NULL or unreadable: now) until now; after the
 * run in progress, if any. Two asks before it starts make one, the wider. */
void reconcile_now(struct reconcile *r, enum reconcile_reason why, const char *since);
/* Calls fn with each run's progress (--reconcile). */
void reconcile_on_progress(struct reconcile *r, reconcile_progress_fn fn, void *arg);
/* Stops runs (drain); a run in flight stops at free, its cursor kept. */
void reconcile_stop(struct reconcile *r);
/* Ends a run in flight, closes the connection and frees; after pacer_free. */
void reconcile_free(struct reconcile *r);
/* Fills the counters. */
void reconcile_snapshot(const struct reconcile *r, struct reconcile_stats *out);
/* Appends the easypost_sync_reconcile_* metrics to sb. */
void reconcile_render_metrics(const struct reconcile *r, struct strbuf *sb);
/* reconcile_runs.reason of a reason. */
const char *reconcile_reason_name(enum reconcile_reason why);

/* easypost-syncd --reconcile [--since DATE]: one run (after a stopped one it
 * resumes), progress on stderr. since NULL: reconcile_window_days before now. */
enum {
        RECONCILE_EXIT_SAME = 0,    /* completed; the database already matched */
        RECONCILE_EXIT_CHANGED = 1, /* completed; trackers changed or created */
        RECONCILE_EXIT_ERROR = 2,   /* not completed (API, database, another replica's run) */
};
int reconcile_cli(const struct cfg *cfg, const char *since);

#endif
