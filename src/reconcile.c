/*
 * reconcile.c - converges the database to EasyPost's trackers.
 *
 *   idle --tick--> BEGIN (eps_reconcile_begin: a new run, or the stopped
 *   one resumed from its cursor; no row: another replica holds the lease,
 *   the slot went elsewhere, or nothing to resume) --> LIST one page of
 *   /trackers before the cursor --> PAGE (eps_reconcile_page applies it and
 *   moves the cursor, fenced by the lease) --> LIST ... --> END
 *   (eps_reconcile_end: completed, or stopped with the cursor kept) --> idle
 *
 * A tick starts, in this order: a run asked for (reconcile_now), the
 * scheduled slot's run (elected, like the backfill), or the resumption of a
 * stopped run (every RC_RESUME_S while idle: a replica that died mid-run
 * blocks nothing once its lease has passed). A 429 sends the same page again
 * once the pacer's pause is over (up to RC_MAX_429 in a row); a 401/403 or
 * any other error stops the run, its cursor kept: a new key (reload) or the
 * next tick resumes it.
 */
#include "reconcile.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "db_conn.h"
#include "log.h"
#include "metrics.h"
#include "pacer.h"
#include "util.h"

#define RC_PAGE 100
#define RC_LEASE_S 120       /* renewed by every page */
#define RC_RESUME_S 60       /* idle: look for a stopped run this often */
#define RC_RETRY_S 10        /* an asked-for run another replica holds up: ask again */
#define RC_MAX_429 30        /* 429s in a row before the run stops (and resumes later) */
#define RC_DB_TIMEOUT_MS 30000
#define RC_ID_MAX 64

struct reconcile {
        struct db_conn *conn;
        struct pacer *pacer;
        struct event *timer;
        char *instance_id;
        char token[128]; /* this process's lease holder name */
        long interval, window_days;
        bool stopped;
        bool busy; /* from BEGIN to the end of the run */
        bool want; /* reconcile_now: a run to start */
        enum reconcile_reason want_reason;
        char want_since[40];   /* the time the asked-for window counts back from, "" = now */
        uint64_t want_after_ms; /* not before (another replica held the run) */
        uint64_t next_slot_ms;
        reconcile_progress_fn progress;
        void *progress_arg;
        struct reconcile_stats stats;
        /* the run in progress */
        bool asked;    /* this BEGIN was for want */
        bool resumed;
        char run[24], reason[16], start[32], end[32];
        char before[RC_ID_MAX];
        char next[RC_ID_MAX];
        unsigned n429;
        bool why_set;
        char why[200];
        struct reconcile_totals t; /* this process's share of the run */
};

static void tick(evutil_socket_t fd, short what, void *arg);

const char *
reconcile_reason_name(enum reconcile_reason why)
{
        static const char *const names[] = { "webhook", "backfill", "schedule", "manual" };
        return (unsigned)why < ARRAY_LEN(names) ? names[why] : "manual";
}

static bool
api_open(const struct reconcile *r)
{
        return !r->stopped && pacer_enabled(r->pacer) && !pacer_auth_failed(r->pacer);
}

/* The next tick: an asked-for run at once (or when it may ask again), else
 * the next slot or the next look for a stopped run, whichever comes first. */
static void
arm(struct reconcile *r)
{
        if (!api_open(r) || r->busy)
                return;
        uint64_t now = clock_real_ms();
        uint64_t ms = RC_RESUME_S * 1000u;
        if (r->want)
                ms = r->want_after_ms > now ? r->want_after_ms - now : 0;
        if (r->interval > 0 && r->next_slot_ms > 0) {
                uint64_t slot = r->next_slot_ms > now ? r->next_slot_ms - now : 0;
                if (slot < ms)
                        ms = slot;
        }
        if (!db_conn_ready(r->conn) && ms < 1000)
                ms = 1000;
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_del(r->timer);
        evtimer_add(r->timer, &tv);
}

static void
next_slot(struct reconcile *r)
{
        if (r->interval <= 0) {
                r->next_slot_ms = 0;
                return;
        }
        uint64_t period = (uint64_t)r->interval * 1000u;
        r->next_slot_ms = (clock_real_ms() / period + 1) * period + 20;
}

static void
report(struct reconcile *r, bool end, const char *outcome, const char *why)
{
        if (r->progress == NULL)
                return;
        struct reconcile_progress p = { .end = end, .more = end && r->want, .outcome = outcome,
                                        .why = why, .reason = r->reason, .t = r->t };
        p.run = atoll(r->run);
        r->progress(&p, r->progress_arg);
}

/* Back to idle. */
static void
finish(struct reconcile *r, const char *outcome, const char *why)
{
        r->busy = false;
        r->stats.running = false;
        if (!r->stopped)
                report(r, true, outcome, why);
        r->run[0] = '\0';
        memset(&r->t, 0, sizeof(r->t));
        arm(r);
}

/* ---- END ---- */

/* The run is over here: why NULL completed, "" taken over, else stopped. */
static void
run_over(struct reconcile *r)
{
        const char *why = r->why_set ? r->why : NULL;

        if (why == NULL) {
                r->stats.runs_completed++;
                r->stats.last_run_unix = clock_real_ms() / 1000u;
                r->stats.last = r->t;
                if (r->t.changed + r->t.created > 0) {
                        for (unsigned i = 0; i < ARRAY_LEN(r->stats.drift_runs); i++)
                                if (strcmp(r->reason, reconcile_reason_name((enum reconcile_reason)i)) == 0)
                                        r->stats.drift_runs[i]++;
                }
                log_info("reconcile", "reconcile run %s (%s) done: %llu trackers listed, %llu changed "
                                      "(%llu with another status), %llu created",
                         r->run, r->reason, (unsigned long long)r->t.listed,
                         (unsigned long long)r->t.changed, (unsigned long long)r->t.status_changed,
                         (unsigned long long)r->t.created);
                finish(r, "completed", NULL);
        } else if (why[0]) {
                /* an asked-for run resumed this one: ask again only after the
                 * pause a stopped run waits anyway, or an error that repeats
                 * (EasyPost down, a page that always fails) would have it
                 * resumed and stopped again back to back, at the API's rate */
                if (r->want)
                        r->want_after_ms = clock_real_ms() + RC_RESUME_S * 1000u;
                r->stats.runs_stopped++;
                log_warn("reconcile", "reconcile run %s stopped: %s (it resumes from its cursor)", r->run,
                         why);
                finish(r, "stopped", why);
        } else {
                log_info("reconcile", "reconcile run %s was taken over by another replica", r->run);
                finish(r, "busy", "another replica took the run over");
        }
}

static void
ended_cb(PGresult *res, void *arg)
{
        struct reconcile *r = arg;

        if (r->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                log_warn("reconcile", "recording the end of reconcile run %s failed: %s", r->run,
                         res ? PQresultErrorMessage(res) : "connection lost");
        } else if (PQntuples(res) == 1) {
                /* the whole run's totals, pages a replica before this one did included */
                r->t.listed = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
                r->t.changed = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
                r->t.status_changed = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
                r->t.created = strtoull(PQgetvalue(res, 0, 3), NULL, 10);
        }
        run_over(r);
}

/* why == NULL: completed; "" : taken over by another replica (nothing to record). */
static void
end_run(struct reconcile *r, const char *why)
{
        r->why_set = why != NULL;
        snprintf(r->why, sizeof(r->why), "%s", why ? why : "");
        const char *vals[4] = { r->run, r->token, why ? "stopped" : "completed", why };
        if (why != NULL && why[0] == '\0') {
                run_over(r);
                return;
        }
        if (db_conn_query(r->conn,
                          "SELECT listed, changed, status_changed, created"
                          " FROM eps_reconcile_end($1::bigint, $2, $3, $4)",
                          4, vals, ended_cb, r) != 0) {
                if (why == NULL) { /* not recorded: the run stays open and resumes at its last page */
                        r->why_set = true;
                        snprintf(r->why, sizeof(r->why), "database unavailable at the end");
                }
                run_over(r);
        }
}

/* ---- LIST and PAGE ---- */

static void send_list(struct reconcile *r);

static bool
id_plain(const char *s)
{
        size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
        return n > 0 && n < RC_ID_MAX && s[n] == '\0';
}

static void
page_cb(PGresult *res, void *arg)
{
        struct reconcile *r = arg;

        if (r->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                end_run(r, res ? "applying a page failed" : "database connection lost");
                if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
                        log_warn("reconcile", "applying a page: %s", PQresultErrorMessage(res));
                return;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
                end_run(r, "");
                return;
        }
        struct reconcile_totals p = { strtoull(PQgetvalue(res, 0, 1), NULL, 10),
                                      strtoull(PQgetvalue(res, 0, 2), NULL, 10),
                                      strtoull(PQgetvalue(res, 0, 3), NULL, 10),
                                      strtoull(PQgetvalue(res, 0, 4), NULL, 10) };
        r->t.listed += p.listed;
        r->t.changed += p.changed;
        r->t.status_changed += p.status_changed;
        r->t.created += p.created;
        r->stats.sum.listed += p.listed;
        r->stats.sum.changed += p.changed;
        r->stats.sum.status_changed += p.status_changed;
        r->stats.sum.created += p.created;
        unsigned long long skipped = strtoull(PQgetvalue(res, 0, 5), NULL, 10);
        if (skipped > 0) {
                r->stats.skipped += skipped;
                log_warn("reconcile", "reconcile run %s: %llu trackers of a page skipped: the database "
                         "refused their data (PostgreSQL's log names them)", r->run, skipped);
        }
        report(r, false, "running", NULL);
        if (r->next[0]) {
                memcpy(r->before, r->next, sizeof(r->before));
                send_list(r);
        } else {
                end_run(r, NULL);
        }
}

static void
list_done(const struct httpc_resp *resp, void *arg)
{
        struct reconcile *r = arg;
        char why[200];

        if (r->stopped)
                return;
        if (resp->rc == CURLE_OK && resp->status == 429 && ++r->n429 <= RC_MAX_429) {
                send_list(r); /* the pacer waits out the pause first */
                return;
        }
        if (resp->rc != CURLE_OK || resp->status != 200) {
                if (resp->rc == CURLE_ABORTED_BY_CALLBACK)
                        snprintf(why, sizeof(why), "API requests stopped (key rejected, or shutting down)");
                else if (resp->rc != CURLE_OK)
                        snprintf(why, sizeof(why), "listing trackers: %s", resp->error);
                else
                        snprintf(why, sizeof(why), "listing trackers: HTTP %ld", resp->status);
                end_run(r, why);
                return;
        }
        r->n429 = 0;
        json_t *o = json_loadb(resp->body, resp->len, 0, NULL);
        json_t *list = json_object_get(o, "trackers");
        if (!json_is_array(list)) {
                json_decref(o);
                end_run(r, "listing trackers: no tracker list in the answer");
                return;
        }
        const char *last = NULL;
        if (json_array_size(list) > 0)
                last = json_string_value(json_object_get(json_array_get(list, json_array_size(list) - 1), "id"));
        r->next[0] = '\0';
        /* an empty page ends the list whatever has_more says: nothing to page below */
        if (json_is_true(json_object_get(o, "has_more")) && json_array_size(list) > 0) {
                if (last == NULL || !id_plain(last)) {
                        json_decref(o);
                        end_run(r, "listing trackers: the last tracker of a page has no usable id");
                        return;
                }
                snprintf(r->next, sizeof(r->next), "%s", last);
        }
        char *text = json_dumps(list, JSON_COMPACT);
        json_decref(o);
        char lease[16];
        snprintf(lease, sizeof(lease), "%d", RC_LEASE_S);
        const char *vals[5] = { r->run, r->token, lease, text ? text : "[]", r->next[0] ? r->next : NULL };
        if (db_conn_query(r->conn,
                          "SELECT ok, listed, changed, status_changed, created, skipped"
                          " FROM eps_reconcile_page($1::bigint, $2, $3::int, $4::jsonb, $5)",
                          5, vals, page_cb, r) != 0)
                end_run(r, "database unavailable");
        free(text);
}

static void
send_list(struct reconcile *r)
{
        char *url = pacer_url(r->pacer, "/trackers?page_size=100&start_datetime=%s&end_datetime=%s",
                              r->start, r->end);
        if (r->before[0]) {
                size_t n = strlen(url) + strlen(r->before) + 16;
                url = xrealloc(url, n);
                strcat(url, "&before_id=");
                strcat(url, r->before);
        }
        pacer_get(r->pacer, url, list_done, r);
}

/* ---- BEGIN ---- */

static void
begin_cb(PGresult *res, void *arg)
{
        struct reconcile *r = arg;

        if (r->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                if (res)
                        log_warn("reconcile", "starting a run: %s", PQresultErrorMessage(res));
                r->busy = false;
                arm(r);
                return;
        }
        if (PQntuples(res) != 1) {
                r->busy = false;
                if (r->asked) {
                        /* another replica runs one: ask again once it may be over */
                        r->want_after_ms = clock_real_ms() + RC_RETRY_S * 1000u;
                        report(r, true, "busy", "another replica holds the run");
                }
                arm(r);
                return;
        }
        snprintf(r->run, sizeof(r->run), "%s", PQgetvalue(res, 0, 0));
        snprintf(r->reason, sizeof(r->reason), "%s", PQgetvalue(res, 0, 1));
        snprintf(r->start, sizeof(r->start), "%s", PQgetvalue(res, 0, 2));
        snprintf(r->end, sizeof(r->end), "%s", PQgetvalue(res, 0, 3));
        const char *b = PQgetvalue(res, 0, 4);
        snprintf(r->before, sizeof(r->before), "%s", !PQgetisnull(res, 0, 4) && id_plain(b) ? b : "");
        r->resumed = strcmp(PQgetvalue(res, 0, 5), "t") == 0;
        if (r->asked && !r->resumed)
                r->want = false;
        r->n429 = 0;
        r->stats.running = true;
        memset(&r->t, 0, sizeof(r->t));
        log_info("reconcile", "reconcile run %s (%s) %s: trackers created %s .. %s%s%s", r->run, r->reason,
                 r->resumed ? "resumed" : "started", r->start, r->end, r->before[0] ? ", before " : "",
                 r->before);
        send_list(r);
}

/* since: the time the window counts back from (EasyPost's text), NULL: now. */
static void
begin(struct reconcile *r, const char *reason, const char *since, const char *slot)
{
        char lease[16], days[16];

        snprintf(lease, sizeof(lease), "%d", RC_LEASE_S);
        snprintf(days, sizeof(days), "%ld", r->window_days);
        const char *vals[7] = { r->token, r->instance_id, lease, reason, since, slot, days };
        r->busy = true;
        if (db_conn_query(r->conn,
                          "SELECT run, reason,"
                          " to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
                          " to_char(date_trunc('second', window_end) AT TIME ZONE 'UTC' + interval '1 second',"
                          "         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
                          " before_id, resumed"
                          " FROM eps_reconcile_begin($1, $2, $3::int, $4,"
                          "   coalesce(eps_ts($5), now()) - make_interval(days => $7::int), $6::bigint)",
                          7, vals, begin_cb, r) != 0) {
                r->busy = false;
                arm(r);
        }
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
        struct reconcile *r = arg;
        int64_t now = (int64_t)(clock_real_ms() / 1000u);
        const char *since = r->want_since[0] ? r->want_since : NULL;

        (void)fd;
        (void)what;
        if (r->busy || !api_open(r))
                return;
        if (!db_conn_ready(r->conn)) {
                arm(r);
                return;
        }
        r->asked = false;
        if (r->want && clock_real_ms() >= r->want_after_ms) {
                r->asked = true;
                begin(r, reconcile_reason_name(r->want_reason), since, NULL);
        } else if (r->interval > 0 && r->next_slot_ms > 0 && clock_real_ms() + 50 >= r->next_slot_ms) {
                char slot[24];
                snprintf(slot, sizeof(slot), "%lld", (long long)(now / r->interval * r->interval));
                next_slot(r);
                begin(r, "schedule", NULL, slot);
        } else {
                begin(r, NULL, NULL, NULL); /* resume a stopped run, if any */
        }
}

/* ---- lifecycle ---- */

static const struct db_conn_hooks no_hooks = { 0 };

static void
set(struct reconcile *r, const struct reconcile_settings *st)
{
        free(r->instance_id);
        r->instance_id = xstrdup(st->instance_id ? st->instance_id : "");
        r->interval = st->interval;
        r->window_days = st->window_days > 0 ? st->window_days : 0;
}

struct reconcile *
reconcile_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
              const struct reconcile_settings *st)
{
        struct reconcile *r = xcalloc(1, sizeof(*r));

        r->pacer = pacer;
        r->conn = db_conn_new(base, conninfo, "reconcile", &no_hooks, NULL);
        db_conn_set_timeout(r->conn, RC_DB_TIMEOUT_MS);
        r->timer = evtimer_new(base, tick, r);
        set(r, st);
        snprintf(r->token, sizeof(r->token), "%.64s/%ld/%llu", r->instance_id, (long)getpid(),
                 (unsigned long long)clock_real_ms());
        return r;
}

void
reconcile_start(struct reconcile *r)
{
        if (!pacer_enabled(r->pacer))
                return;
        db_conn_start(r->conn);
        next_slot(r);
        struct timeval tv = { 1, 0 }; /* a stopped run resumes soon after start */
        evtimer_add(r->timer, &tv);
}

void
reconcile_reload(struct reconcile *r, const struct reconcile_settings *st)
{
        long was = r->interval;

        set(r, st);
        if (r->interval != was)
                next_slot(r);
        if (r->stopped || r->busy || !api_open(r))
                return;
        if (db_conn_state(r->conn) == DB_DOWN)
                db_conn_start(r->conn);
        struct timeval tv = { 1, 0 }; /* a run stopped by a 401 resumes with the new key */
        evtimer_del(r->timer);
        evtimer_add(r->timer, &tv);
}

void
reconcile_now(struct reconcile *r, enum reconcile_reason why, const char *since)
{
        /* two asks before a run: the wider window (EasyPost's times are UTC ISO 8601 text) */
        if (!r->want || (since && since[0] && (!r->want_since[0] || strcmp(since, r->want_since) < 0)))
                snprintf(r->want_since, sizeof(r->want_since), "%s", since ? since : "");
        if (!r->want)
                r->want_reason = why;
        r->want = true;
        r->want_after_ms = 0;
        if (r->stopped || !pacer_enabled(r->pacer))
                return;
        if (db_conn_state(r->conn) == DB_DOWN)
                db_conn_start(r->conn);
        arm(r);
}

void
reconcile_on_progress(struct reconcile *r, reconcile_progress_fn fn, void *arg)
{
        r->progress = fn;
        r->progress_arg = arg;
}

void
reconcile_stop(struct reconcile *r)
{
        r->stopped = true;
        evtimer_del(r->timer);
}

void
reconcile_free(struct reconcile *r)
{
        if (r == NULL)
                return;
        r->stopped = true;
        db_conn_free(r->conn); /* in-flight callbacks run now, as lost, and see stopped */
        event_free(r->timer);
        free(r->instance_id);
        free(r);
}

void
reconcile_snapshot(const struct reconcile *r, struct reconcile_stats *out)
{
        memset(out, 0, sizeof(*out));
        if (r)
                *out = r->stats;
}

void
reconcile_render_metrics(const struct reconcile *r, struct strbuf *sb)
{
        struct reconcile_stats s;

        reconcile_snapshot(r, &s);
        strbuf_printf(sb,
                      "# HELP easypost_sync_reconcile_runs_total Reconcile runs that ended here, by outcome "
                      "(a stopped run resumes from its cursor).\n"
                      "# TYPE easypost_sync_reconcile_runs_total counter\n"
                      "easypost_sync_reconcile_runs_total{outcome=\"completed\"} %llu\n"
                      "easypost_sync_reconcile_runs_total{outcome=\"stopped\"} %llu\n",
                      (unsigned long long)s.runs_completed, (unsigned long long)s.runs_stopped);
        strbuf_printf(sb,
                      "# HELP easypost_sync_reconcile_trackers_total Trackers the reconciler listed, "
                      "changed (the database was behind), created (the database lacked them) and "
                      "skipped (the database refused their data).\n"
                      "# TYPE easypost_sync_reconcile_trackers_total counter\n"
                      "easypost_sync_reconcile_trackers_total{result=\"listed\"} %llu\n"
                      "easypost_sync_reconcile_trackers_total{result=\"changed\"} %llu\n"
                      "easypost_sync_reconcile_trackers_total{result=\"created\"} %llu\n"
                      "easypost_sync_reconcile_trackers_total{result=\"skipped\"} %llu\n",
                      (unsigned long long)s.sum.listed, (unsigned long long)s.sum.changed,
                      (unsigned long long)s.sum.created, (unsigned long long)s.skipped);
        strbuf_printf(sb,
                      "# HELP easypost_sync_reconcile_last_run_drift Trackers the last completed run "
                      "changed or created (0: the database matched EasyPost).\n"
                      "# TYPE easypost_sync_reconcile_last_run_drift gauge\n"
                      "easypost_sync_reconcile_last_run_drift %llu\n"
                      "# HELP easypost_sync_reconcile_drift_runs_total Completed reconcile runs that "
                      "found the database behind EasyPost, by what started them.\n"
                      "# TYPE easypost_sync_reconcile_drift_runs_total counter\n"
                      "easypost_sync_reconcile_drift_runs_total{reason=\"webhook\"} %llu\n"
                      "easypost_sync_reconcile_drift_runs_total{reason=\"backfill\"} %llu\n"
                      "easypost_sync_reconcile_drift_runs_total{reason=\"schedule\"} %llu\n"
                      "easypost_sync_reconcile_drift_runs_total{reason=\"manual\"} %llu\n"
                      "# HELP easypost_sync_reconcile_last_run_timestamp_seconds Unix time of the last "
                      "completed reconcile run here (0 = never).\n"
                      "# TYPE easypost_sync_reconcile_last_run_timestamp_seconds gauge\n"
                      "easypost_sync_reconcile_last_run_timestamp_seconds %llu\n"
                      "# HELP easypost_sync_reconcile_running 1 while this replica runs a reconcile.\n"
                      "# TYPE easypost_sync_reconcile_running gauge\n"
                      "easypost_sync_reconcile_running %d\n",
                      (unsigned long long)(s.last.changed + s.last.created),
                      (unsigned long long)s.drift_runs[0], (unsigned long long)s.drift_runs[1],
                      (unsigned long long)s.drift_runs[2], (unsigned long long)s.drift_runs[3],
                      (unsigned long long)s.last_run_unix, s.running ? 1 : 0);
}

/* ---- easypost-syncd --reconcile ---- */

struct cli {
        struct event_base *base;
        struct reconcile *r;
        bool changed, failed;
};

/* A database that cannot be reached ends the command instead of a silent wait. */
static void
cli_watch(evutil_socket_t fd, short what, void *arg)
{
        struct cli *c = arg;

        (void)fd;
        (void)what;
        if (db_conn_state(c->r->conn) == DB_BACKOFF && !c->r->busy) {
                fprintf(stderr, "easypost-syncd: reconcile: cannot connect to the database\n");
                c->failed = true;
                event_base_loopbreak(c->base);
        }
}

static void
cli_progress(const struct reconcile_progress *p, void *arg)
{
        struct cli *c = arg;

        fprintf(stderr, "reconcile run %lld (%s): %s: %llu listed, %llu changed (%llu with another "
                        "status), %llu created%s%s\n",
                p->run, p->reason[0] ? p->reason : "-", p->end ? p->outcome : "page",
                (unsigned long long)p->t.listed, (unsigned long long)p->t.changed,
                (unsigned long long)p->t.status_changed, (unsigned long long)p->t.created,
                p->why ? ": " : "", p->why ? p->why : "");
        if (!p->end)
                return;
        if (strcmp(p->outcome, "completed") == 0) {
                if (p->t.changed + p->t.created > 0)
                        c->changed = true;
        } else {
                c->failed = true;
        }
        if (!p->more || c->failed)
                event_base_loopbreak(c->base);
}

int
reconcile_cli(const struct cfg *cfg, const char *since)
{
        struct cli c = { 0 };
        char instance[96], host[64] = "localhost";

        if (cfg->api_key[0] == '\0') {
                fprintf(stderr, "easypost-syncd: --reconcile needs an API key (api_key or EASYPOST_API_KEY)\n");
                return RECONCILE_EXIT_ERROR;
        }
        gethostname(host, sizeof(host) - 1);
        snprintf(instance, sizeof(instance), "%s%s%s:%d:reconcile", cfg->instance_id,
                 cfg->instance_id[0] ? "/" : "", host, (int)getpid());
        c.base = event_base_new();
        if (c.base == NULL)
                return RECONCILE_EXIT_ERROR;
        struct pacer_settings ps = { .api_url = cfg->api_url, .api_key = cfg->api_key,
                                     .rate = cfg->api_rate, .concurrency = cfg->api_concurrency,
                                     .timeout_s = cfg->api_timeout,
                                     .max_retry_after = cfg->api_max_retry_after };
        /* --since: the window starts there; else reconcile_window_days before now */
        struct reconcile_settings rs = { .instance_id = instance, .interval = 0,
                                         .window_days = since ? 0 : cfg->reconcile_window_days };
        struct pacer *p = pacer_new(c.base, &ps);
        struct reconcile *r = reconcile_new(c.base, cfg->database_url, p, &rs);
        c.r = r;
        reconcile_on_progress(r, cli_progress, &c);
        db_conn_start(r->conn);
        reconcile_now(r, RECONCILE_MANUAL, since);
        struct event *watch = event_new(c.base, -1, EV_PERSIST, cli_watch, &c);
        struct timeval tv = { 1, 0 };
        event_add(watch, &tv);
        event_base_dispatch(c.base);
        event_free(watch);
        reconcile_stop(r);
        pacer_free(p);
        reconcile_free(r);
        event_base_free(c.base);
        return c.failed ? RECONCILE_EXIT_ERROR : c.changed ? RECONCILE_EXIT_CHANGED : RECONCILE_EXIT_SAME;
}
