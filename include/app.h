/*
 * app.h - the root object: owns the loop, the configuration and every
 * module, and is the only place that knows them all. Leaf modules get what
 * they need through their constructor and *_reload(), never struct app.
 *
 * Init: cfg -> keys -> ingest -> timers, schema, projector -> pacer ->
 * syncjobs, backfill -> webhook_health -> webhook, ops -> http (app.c routes
 * every endpoint) -> signals -> start. Drain (SIGTERM): stop accepting,
 * webhook 503s, stop timers, projector, syncjobs, backfill, webhook_health,
 * pacer; wait for ingest to answer.
 * Teardown: one loop pass after ingest_close, then free timers, projector,
 * schema, pacer (its cancelled answers still reach syncjobs, backfill and
 * webhook_health), syncjobs, backfill, webhook_health, http, ingest,
 * webhook, ops.
 * SIGHUP: a new cfg and keyset, then ingest, webhook, timers, pacer,
 * syncjobs, backfill and webhook_health each get their *_reload().
 */
#ifndef EPS_APP_H
#define EPS_APP_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

#include "cfg.h"
#include "uuid7.h"

enum app_state {
        APP_RUNNING,  /* serving */
        APP_DRAINING, /* SIGTERM: no new work, finishing what is in flight */
        APP_STOPPED,  /* loop exit requested */
};

struct app {
        struct event_base *base;
        struct cfg *cfg;              /* current; swapped whole on SIGHUP */
        const char *cfg_path;         /* borrowed from argv */
        char **overrides;             /* borrowed from argv */
        size_t noverrides;
        struct sig_keyset *keys;
        struct ingest *ingest;
        struct timers *timers;
        struct projector *projector;  /* NULL unless projection = deferred */
        struct schema *schema;
        struct pacer *pacer;
        struct syncjobs *syncjobs;
        struct backfill *backfill;
        struct reconcile *reconcile;
        struct webhook_health *webhook_health;
        struct webhook *webhook;
        struct ops *ops;
        struct http *http;
        enum app_state state;
        struct event *ev_term, *ev_int, *ev_hup, *ev_drain_deadline, *ev_drain_poll;
        struct uuid7_gen uuid;
        uint64_t started_us;
        char instance_id[128];
};

/* Builds everything from cfg (takes ownership). Dies before the loop on error. */
MUST_CHECK int app_init(struct app *a, struct cfg *cfg, struct err *e);
/* Runs the loop until the drain ends or a second signal. */
int app_run(struct app *a);
/* Tears down in the order above; safe after a failed app_init. */
void app_fini(struct app *a);

/* Starts draining (SIGTERM path); safe to call twice. */
void app_drain(struct app *a);

#endif
