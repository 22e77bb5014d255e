/*
 * app.h - the root object: owns the loop, the configuration and every module.
 * Init order: cfg -> keys -> ingest -> jobs -> sync -> http -> signals;
 * teardown stops sync first, then frees ingest, jobs, sync, http.
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
        struct jobs *jobs;
        struct sync *sync;
        struct webhook_health *webhook_health;
        struct http *http;
        enum app_state state;
        struct event *ev_term, *ev_int, *ev_hup, *ev_drain_deadline, *ev_drain_poll;
        struct uuid7_gen uuid;
        uint64_t started_us;
        char instance_id[128];
        char *basic_auth;             /* expected "Basic base64(user:pass)" or NULL */
        uint64_t next_rid;
};

/* Builds everything from cfg (takes ownership). Dies before the loop on error. */
MUST_CHECK int app_init(struct app *a, struct cfg *cfg, struct err *e);
int app_run(struct app *a);
void app_fini(struct app *a);

/* Starts draining (SIGTERM path); safe to call twice. */
void app_drain(struct app *a);

/* Expected Authorization header for basic auth, or NULL (caller frees). */
char *app_basic_auth_header(const char *user, const char *pass);

#endif
