/*
 * app.c - the root context: builds the modules in order, owns signals and
 * the shutdown state machine, tears down in reverse.
 *
 *   RUNNING --SIGTERM/SIGINT--> DRAINING --queue empty or deadline--> STOPPED
 *                                   \--second signal------------------^
 *
 * DRAINING stops accepting connections, answers new webhooks on open
 * connections with 503, and waits for every queued event to be committed and
 * answered. SIGHUP re-reads the configuration: parse, validate, keep the
 * non-reloadable keys, swap; a bad file keeps the old configuration.
 */
#include "app.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "ingest.h"
#include "jobs.h"
#include "sync.h"
#include "webhook_health.h"
#include "log.h"
#include "sig.h"

extern char **environ;

#define DRAIN_POLL_MS 20

char *
app_basic_auth_header(const char *user, const char *pass)
{
        if (user == NULL || user[0] == '\0')
                return NULL;
        size_t n = strlen(user) + 1 + strlen(pass);
        char *plain = xmalloc(n + 1);
        snprintf(plain, n + 1, "%s:%s", user, pass);
        char *out = xmalloc(6 + 4 * ((n + 2) / 3) + 1);
        memcpy(out, "Basic ", 6);
        EVP_EncodeBlock((unsigned char *)out + 6, (unsigned char *)plain, (int)n);
        memset(plain, 0, n);
        free(plain);
        return out;
}

static void
free_secret_str(char *s)
{
        if (s) {
                memset(s, 0, strlen(s));
                free(s);
        }
}

static void
apply_logging(const struct cfg *c)
{
        log_configure((enum log_level)log_level_parse(c->log_level),
                      (enum log_format)log_format_parse(c->log_format));
}

static void
drain_poll_cb(evutil_socket_t fd, short what, void *arg)
{
        struct app *a = arg;
        struct timeval tv = { 0, DRAIN_POLL_MS * 1000 };

        (void)fd;
        (void)what;
        if (ingest_idle(a->ingest)) {
                log_info("app", "drained: every accepted event answered");
                a->state = APP_STOPPED;
                event_base_loopexit(a->base, NULL);
                return;
        }
        evtimer_add(a->ev_drain_poll, &tv);
}

static void
drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
        struct app *a = arg;

        (void)fd;
        (void)what;
        log_warn("app", "shutdown_timeout reached with %u events unanswered: they get 503",
                 ingest_depth(a->ingest));
        a->state = APP_STOPPED;
        event_base_loopexit(a->base, NULL);
}

void
app_drain(struct app *a)
{
        struct timeval dl = { a->cfg->shutdown_timeout, 0 };
        struct timeval now = { 0, 0 };

        if (a->state != APP_RUNNING)
                return;
        a->state = APP_DRAINING;
        log_info("app", "draining: %u events in flight", ingest_depth(a->ingest));
        http_stop_accepting(a->http);
        jobs_stop(a->jobs);
        sync_stop(a->sync);
        webhook_health_stop(a->webhook_health);
        evtimer_add(a->ev_drain_deadline, &dl);
        evtimer_add(a->ev_drain_poll, &now);
}

static void
term_cb(evutil_socket_t sig, short what, void *arg)
{
        struct app *a = arg;

        (void)what;
        if (a->state == APP_RUNNING) {
                log_info("app", "signal %d: shutting down", (int)sig);
                app_drain(a);
        } else {
                log_warn("app", "second signal %d: exiting now", (int)sig);
                a->state = APP_STOPPED;
                event_base_loopexit(a->base, NULL);
        }
}

static void
reload(struct app *a)
{
        struct err e;
        char changed[512];
        struct cfg *next = cfg_load(a->cfg_path, environ, a->overrides, a->noverrides, &e);

        if (next == NULL || cfg_validate(next, CFG_FOR_DAEMON, &e) != 0) {
                log_err("app", "reload refused, keeping the running configuration: %s", e.msg);
                cfg_free(next);
                return;
        }
        struct sig_keyset *keys =
                sig_keyset_new((const char *const *)next->secrets, next->nsecrets, &e);
        if (keys == NULL) {
                log_err("app", "reload refused, keeping the running configuration: %s", e.msg);
                cfg_free(next);
                return;
        }
        cfg_keep_static(next, a->cfg, changed, sizeof(changed));
        if (changed[0])
                log_warn("app", "reload: %s need a restart; keeping the running values", changed);
        sig_keyset_free(a->keys);
        a->keys = keys;
        free_secret_str(a->basic_auth);
        a->basic_auth = app_basic_auth_header(next->basic_auth_user, next->basic_auth_password);
        ingest_set_batch_max(a->ingest, (unsigned)next->batch_max);
        cfg_free(a->cfg);
        a->cfg = next;
        apply_logging(a->cfg);
        jobs_reload(a->jobs);
        sync_reload(a->sync);
        webhook_health_reload(a->webhook_health);
        log_info("app", "configuration reloaded (%zu webhook secrets)", sig_keyset_count(a->keys));
}

static void
hup_cb(evutil_socket_t sig, short what, void *arg)
{
        (void)sig;
        (void)what;
        reload(arg);
}

int
app_init(struct app *a, struct cfg *cfg, struct err *e)
{
        char host[64] = "localhost";

        a->cfg = cfg;
        a->state = APP_RUNNING;
        a->started_us = clock_mono_us();
        apply_logging(cfg);
        uuid7_init(&a->uuid);
        if (cfg->instance_id[0]) {
                snprintf(a->instance_id, sizeof(a->instance_id), "%s", cfg->instance_id);
        } else {
                gethostname(host, sizeof(host) - 1);
                snprintf(a->instance_id, sizeof(a->instance_id), "%s:%d", host, (int)getpid());
        }
        /* one fd per client connection: take the hard limit, not the 1024 default */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                        log_warn("app", "cannot raise the open-file limit");
        }
        if (geteuid() == 0)
                log_warn("app", "running as root: run easypost-syncd as an unprivileged user");
        a->keys = sig_keyset_new((const char *const *)cfg->secrets, cfg->nsecrets, e);
        if (a->keys == NULL)
                return -1;
        a->basic_auth = app_basic_auth_header(cfg->basic_auth_user, cfg->basic_auth_password);
        a->base = event_base_new();
        if (a->base == NULL) {
                err_set(e, -1, "event_base_new failed");
                return -1;
        }
        signal(SIGPIPE, SIG_IGN);
        a->ingest = ingest_new(a->base, cfg->database_url, (unsigned)cfg->db_connections,
                               (unsigned)cfg->queue_limit, (unsigned)cfg->batch_max,
                               strcmp(cfg->projection, "deferred") == 0);
        ingest_set_db_timeout(a->ingest, (unsigned)cfg->db_timeout * 1000u);
        a->jobs = jobs_new(a);
        if (strcmp(cfg->projection, "deferred") == 0)
                ingest_on_pending(a->ingest, jobs_project_kick, a->jobs);
        a->sync = sync_new(a);
        a->webhook_health = webhook_health_new(a);
        a->http = http_new(a, e);
        if (a->http == NULL)
                return -1;
        a->ev_term = evsignal_new(a->base, SIGTERM, term_cb, a);
        a->ev_int = evsignal_new(a->base, SIGINT, term_cb, a);
        a->ev_hup = evsignal_new(a->base, SIGHUP, hup_cb, a);
        a->ev_drain_deadline = evtimer_new(a->base, drain_deadline_cb, a);
        a->ev_drain_poll = evtimer_new(a->base, drain_poll_cb, a);
        evsignal_add(a->ev_term, NULL);
        evsignal_add(a->ev_int, NULL);
        evsignal_add(a->ev_hup, NULL);
        ingest_start(a->ingest);
        jobs_start(a->jobs);
        sync_start(a->sync);
        webhook_health_start(a->webhook_health);
        log_info("app", "easypost-syncd %s listening on %s (port %u), webhooks at %s, %zu secret(s), "
                        "instance %s",
                 PACKAGE_VERSION, cfg->listen, http_port(a->http), cfg->webhook_path,
                 sig_keyset_count(a->keys), a->instance_id);
        return 0;
}

int
app_run(struct app *a)
{
        return event_base_dispatch(a->base) < 0 ? -1 : 0;
}

void
app_fini(struct app *a)
{
        /* Answer whatever is still queued (503) while the HTTP side exists, and
         * give the loop one pass to write those answers. The ingest object
         * stays until nothing can reach it any more: in that pass a keep-alive
         * client may still ask /readyz, a curl answer may reach backfill. */
        if (a->ev_drain_deadline)
                evtimer_del(a->ev_drain_deadline);
        if (a->ev_drain_poll)
                evtimer_del(a->ev_drain_poll);
        if (a->sync)
                sync_stop(a->sync);
        if (a->webhook_health)
                webhook_health_stop(a->webhook_health);
        ingest_close(a->ingest);
        if (a->base)
                event_base_loop(a->base, EVLOOP_NONBLOCK);
        jobs_free(a->jobs); /* lost-query callbacks still reach sync */
        a->jobs = NULL;
        sync_free(a->sync);
        a->sync = NULL;
        webhook_health_free(a->webhook_health); /* last: cancelled callbacks reach it */
        a->webhook_health = NULL;
        http_free(a->http);
        ingest_free(a->ingest);
        a->ingest = NULL;
        if (a->ev_term)
                event_free(a->ev_term);
        if (a->ev_int)
                event_free(a->ev_int);
        if (a->ev_hup)
                event_free(a->ev_hup);
        if (a->ev_drain_deadline)
                event_free(a->ev_drain_deadline);
        if (a->ev_drain_poll)
                event_free(a->ev_drain_poll);
        sig_keyset_free(a->keys);
        free_secret_str(a->basic_auth);
        cfg_free(a->cfg);
        if (a->base)
                event_base_free(a->base);
        memset(a, 0, sizeof(*a));
}
