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
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "ingest.h"
#include "metrics.h"
#include "ops.h"
#include "procstat.h"
#include "webhook.h"
#include "projector.h"
#include "schema.h"
#include "timers.h"
#include "pacer.h"
#include "syncjobs.h"
#include "backfill.h"
#include "reconcile.h"
#include "webhook_health.h"
#include "log.h"
#include "sig.h"

extern char **environ;

#define DRAIN_POLL_MS 20

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
        webhook_stop(a->webhook);
        timers_stop(a->timers);
        projector_stop(a->projector);
        syncjobs_stop(a->syncjobs);
        backfill_stop(a->backfill);
        reconcile_stop(a->reconcile);
        webhook_health_stop(a->webhook_health);
        pacer_stop(a->pacer);
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

static struct timers_settings
timers_settings(const struct app *a)
{
        const struct cfg *c = a->cfg;
        return (struct timers_settings){ .instance_id = a->instance_id,
                                         .metrics_interval = c->metrics_interval,
                                         .analytics_interval = c->analytics_interval,
                                         .retention_days = c->metrics_retention_days,
                                         .parts = { .instance_id = a->instance_id,
                                                    .event_retention_days = c->event_retention_days,
                                                    .history_retention_days = c->history_retention_days,
                                                    .dead_letter_retention_days =
                                                            c->dead_letter_retention_days,
                                                    .sync_job_retention_days = c->sync_job_retention_days } };
}

/* The figures of one system_metrics row, from the modules that own them. */
static void
sample(struct timers_sample *out, void *arg)
{
        struct app *a = arg;
        const struct ingest_stats *st = ingest_stats(a->ingest);
        struct http_stats hs;
        struct pacer_stats ps;
        struct procstat pr;

        http_snapshot(a->http, &hs);
        for (int e = 0; e < EP_COUNT; e++) {
                for (int k = 1; k <= 5; k++)
                        out->requests += hs.requests[e][k];
                out->c4xx += hs.requests[e][4];
                out->c5xx += hs.requests[e][5];
        }
        out->stored = st->stored;
        out->duplicates = st->duplicates;
        procstat_read(&pr);
        out->rss_bytes = pr.rss_bytes;
        out->open_fds = pr.open_fds;
        out->cpu_seconds = pr.cpu_seconds;
        out->queue_depth = ingest_depth(a->ingest);
        out->queue_limit = ingest_limit(a->ingest);
        out->conns = ingest_conns(a->ingest);
        out->conns_up = ingest_conns_ready(a->ingest);
        out->conns_busy = ingest_conns_busy(a->ingest);
        webhook_take_ack_window(a->webhook, &out->ack_window);
        pacer_snapshot(a->pacer, &ps);
        out->api_in_flight = ps.in_flight;
        out->uptime_s = (double)(clock_mono_us() - a->started_us) / 1e6;
}

static void
ready(struct ops_ready *out, void *arg)
{
        struct app *a = arg;
        struct pacer_stats ps;
        struct webhook_health_stats ws;

        pacer_snapshot(a->pacer, &ps);
        webhook_health_snapshot(a->webhook_health, &ws);
        out->db = ingest_db_up(a->ingest);
        out->room = ingest_has_room(a->ingest);
        out->running = a->state == APP_RUNNING;
        out->schema = schema_version(a->schema);
        out->api = !ps.enabled ? "off" : ps.auth_failed ? "unauthorized" : "ok";
        out->webhook = ws.state;
        out->partitions = ingest_partition_missing(a->ingest) ? "missing" : "ok";
}

/* Every module's part of /metrics. */
static void
render(struct strbuf *b, void *arg)
{
        struct app *a = arg;

        http_render_metrics(a->http, b);
        ingest_render_metrics(a->ingest, b);
        webhook_render_metrics(a->webhook, b);
        timers_render_metrics(a->timers, b);
        projector_render_metrics(a->projector, b);
        pacer_render_metrics(a->pacer, b);
        syncjobs_render_metrics(a->syncjobs, b);
        backfill_render_metrics(a->backfill, b);
        reconcile_render_metrics(a->reconcile, b);
        webhook_health_render_metrics(a->webhook_health, b);
        procstat_render(b);
}

static struct webhook_settings
webhook_settings(const struct app *a)
{
        const struct cfg *c = a->cfg;
        return (struct webhook_settings){ .path = c->webhook_path, .request_timeout = c->request_timeout,
                                          .basic_auth_user = c->basic_auth_user,
                                          .basic_auth_password = c->basic_auth_password,
                                          .keys = a->keys };
}

/* Routes every endpoint: the webhook on the main listener, the ops ones where metrics_listen says. */
static int
route(struct app *a, struct err *e)
{
        if (http_route(a->http, HTTP_MAIN, a->cfg->webhook_path, webhook_cb, a->webhook) != 0) {
                err_set(e, -1, "webhook_path %s clashes with another endpoint", a->cfg->webhook_path);
                return -1;
        }
        if (http_route(a->http, HTTP_OPS, "/healthz", ops_healthz_cb, a->ops) != 0 ||
            http_route(a->http, HTTP_OPS, "/readyz", ops_readyz_cb, a->ops) != 0 ||
            http_route(a->http, HTTP_OPS, "/metrics", ops_metrics_cb, a->ops) != 0)
                log_warn("app", "webhook_path %s hides an ops endpoint", a->cfg->webhook_path);
        return 0;
}

static struct pacer_settings
pacer_settings(const struct cfg *c)
{
        return (struct pacer_settings){ .api_url = c->api_url, .api_key = c->api_key,
                                        .rate = c->api_rate, .concurrency = c->api_concurrency,
                                        .timeout_s = c->api_timeout,
                                        .max_retry_after = c->api_max_retry_after };
}

static struct syncjobs_settings
syncjobs_settings(const struct app *a)
{
        const struct cfg *c = a->cfg;
        return (struct syncjobs_settings){ .instance_id = a->instance_id, .interval = c->sync_interval,
                                           .concurrency = c->api_concurrency,
                                           .lease_s = c->api_timeout + 5,
                                           .max_attempts = c->sync_max_attempts,
                                           .gauges_s = c->metrics_interval };
}

static struct backfill_settings
backfill_settings(const struct cfg *c)
{
        return (struct backfill_settings){ .interval = c->backfill_interval,
                                           .concurrency = c->api_concurrency,
                                           .max_attempts = c->sync_max_attempts };
}

static struct reconcile_settings
reconcile_settings(const struct app *a)
{
        return (struct reconcile_settings){ .instance_id = a->instance_id,
                                            .interval = a->cfg->reconcile_interval,
                                            .window_days = a->cfg->reconcile_window_days };
}

/* A re-enabled webhook: the trackers that changed while nothing was delivered. */
static void
reconcile_after_webhook(const char *disabled_at, void *arg)
{
        reconcile_now(arg, RECONCILE_WEBHOOK, disabled_at);
}

/* A backfill stored events without their payload: what they changed is unknown. */
static void
reconcile_after_backfill(void *arg)
{
        reconcile_now(arg, RECONCILE_BACKFILL, NULL);
}

static struct webhook_health_settings
webhook_health_settings(const struct cfg *c)
{
        return (struct webhook_health_settings){ .public_url = c->public_url,
                                                 .interval = c->webhook_check_interval,
                                                 .auto_enable = strcmp(c->webhook_auto_enable, "on") == 0 };
}

/* The pacer first: a new key clears its stop before the others re-arm. */
static void
reload_sync(struct app *a)
{
        struct pacer_settings ps = pacer_settings(a->cfg);
        struct syncjobs_settings ss = syncjobs_settings(a);
        struct backfill_settings bs = backfill_settings(a->cfg);
        struct webhook_health_settings hs = webhook_health_settings(a->cfg);
        struct reconcile_settings rs = reconcile_settings(a);

        pacer_reload(a->pacer, &ps);
        syncjobs_reload(a->syncjobs, &ss);
        backfill_reload(a->backfill, &bs);
        reconcile_reload(a->reconcile, &rs);
        webhook_health_reload(a->webhook_health, &hs);
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
        ingest_set_batch_max(a->ingest, (unsigned)next->batch_max);
        ingest_set_batch_bytes(a->ingest, (size_t)next->batch_max_bytes);
        cfg_free(a->cfg);
        a->cfg = next;
        apply_logging(a->cfg);
        struct timers_settings ts = timers_settings(a);
        struct webhook_settings ws = webhook_settings(a);
        webhook_reload(a->webhook, &ws);
        timers_reload(a->timers, &ts);
        reload_sync(a);
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
        /* Not epoll's changelist (one epoll_ctl saved per request): the
         * lingering close (linger.c) keeps a dup() of each socket evhttp
         * closes, and the changelist would remove evhttp's registration only
         * after that close, when the removal fails and leaves the socket
         * registered, always writable, for as long as it lingers: a busy loop
         * (hostile test_lingering_socket_costs_no_cpu). */
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
        ingest_set_batch_bytes(a->ingest, (size_t)cfg->batch_max_bytes);
        struct timers_settings ts = timers_settings(a);
        a->timers = timers_new(a->base, cfg->database_url, &ts, sample, a);
        a->schema = schema_new(a->base, cfg->database_url, strcmp(cfg->projection, "inline") == 0);
        if (strcmp(cfg->projection, "deferred") == 0) {
                a->projector = projector_new(a->base, cfg->database_url, (unsigned)cfg->db_timeout * 1000u);
                ingest_on_pending(a->ingest, projector_kick, a->projector);
                ingest_on_typed(a->ingest, projector_take);
        }
        struct pacer_settings ps = pacer_settings(cfg);
        struct syncjobs_settings ss = syncjobs_settings(a);
        struct backfill_settings bs = backfill_settings(cfg);
        a->pacer = pacer_new(a->base, &ps);
        a->syncjobs = syncjobs_new(a->base, cfg->database_url, a->pacer, &ss);
        a->backfill = backfill_new(a->base, cfg->database_url, a->pacer, a->ingest, &a->uuid, &bs);
        struct reconcile_settings rs = reconcile_settings(a);
        a->reconcile = reconcile_new(a->base, cfg->database_url, a->pacer, &rs);
        backfill_on_partial(a->backfill, reconcile_after_backfill, a->reconcile);
        struct webhook_health_settings hs = webhook_health_settings(cfg);
        a->webhook_health = webhook_health_new(a->base, cfg->database_url, a->pacer, a->backfill,
                                               a->ingest, &hs);
        webhook_health_on_reenabled(a->webhook_health, reconcile_after_webhook, a->reconcile);
        struct webhook_settings ws = webhook_settings(a);
        a->webhook = webhook_new(a->base, a->ingest, &a->uuid, &ws);
        a->ops = ops_new(ready, render, a);
        a->http = http_new(a->base, cfg, e);
        if (a->http == NULL || route(a, e) != 0)
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
        schema_start(a->schema);
        timers_start(a->timers);
        if (a->projector)
                projector_start(a->projector);
        if (!pacer_enabled(a->pacer))
                log_info("sync", "no API key: sync worker, backfill and webhook check are off");
        syncjobs_start(a->syncjobs);
        backfill_start(a->backfill);
        reconcile_start(a->reconcile);
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
        if (a->pacer) {
                syncjobs_stop(a->syncjobs);
                backfill_stop(a->backfill);
                reconcile_stop(a->reconcile);
                webhook_health_stop(a->webhook_health);
                pacer_stop(a->pacer);
        }
        ingest_close(a->ingest);
        if (a->base)
                event_base_loop(a->base, EVLOOP_NONBLOCK);
        timers_free(a->timers);
        a->timers = NULL;
        projector_free(a->projector);
        a->projector = NULL;
        schema_free(a->schema);
        a->schema = NULL;
        pacer_free(a->pacer); /* cancelled requests still reach syncjobs, backfill, webhook_health */
        a->pacer = NULL;
        syncjobs_free(a->syncjobs);
        a->syncjobs = NULL;
        backfill_free(a->backfill);
        a->backfill = NULL;
        reconcile_free(a->reconcile);
        a->reconcile = NULL;
        webhook_health_free(a->webhook_health);
        a->webhook_health = NULL;
        http_free(a->http);
        a->http = NULL;
        ingest_free(a->ingest);
        a->ingest = NULL;
        webhook_free(a->webhook);
        a->webhook = NULL;
        ops_free(a->ops);
        a->ops = NULL;
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
        cfg_free(a->cfg);
        if (a->base)
                event_base_free(a->base);
        memset(a, 0, sizeof(*a));
}
