/*
 * webhook_health.c - is EasyPost still delivering to us?
 *
 *   IDLE --tick--> elect (eps_webhook_check_elect, its own connection)
 *     elected ---------------------> GET /webhooks --> report --> [PATCH each
 *     database down: check anyway,   disabled one when auto-enable is on, the
 *       report only (no PATCH) ----^  check elected and the daemon healthy;
 *     another replica has the slot:   each success starts a backfill run]
 *       take the count it recorded --> IDLE (re-armed on the next slot)
 *
 * Ticks fall on multiples of webhook_check_interval on the wall clock, so
 * every replica names the same slot and the database elects one of them.
 * A state change is logged once, not every tick. The check's state changes
 * in enter() only; what the last check found is one value of enum wh_found.
 */
#include "webhook_health.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backfill.h"
#include "db_conn.h"
#include "httpc.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "pacer.h"
#include "util.h"

#define WH_MAX_IDS 16
#define WH_ID_MAX 64
#define WH_FIRST_CHECK_S 2 /* after start: the connection is usually up by then */
#define WH_LOCK_MS 5000    /* the election and its record wait this long for a lock */
#define WH_TAG "webhook_health"

enum wh_state {
        WH_PARKED, /* not armed: stopped, disabled, or the key rejected (reload re-arms) */
        WH_IDLE,   /* armed for the next slot */
        WH_ELECT,  /* the election in flight */
        WH_LIST,   /* GET /webhooks in flight */
        WH_PATCH,  /* re-enabling PATCH requests in flight */
};

enum wh_found {
        WH_UNKNOWN, /* no check (nor another replica's record) seen yet */
        WH_LISTED,  /* the daemon's webhooks listed; `disabled` of them disabled */
        WH_MISSING, /* public_url set and no webhook of the account posts to it */
};

struct webhook_health {
        struct db_conn *conn;
        struct pacer *pacer;
        struct backfill *backfill;
        const struct ingest *ingest;
        struct event *timer;
        char *public_url;
        long interval;
        bool auto_enable;
        bool stopped;        /* drained or freed: never re-armed */
        enum wh_state state;
        long first_s;        /* the next IDLE arms this many seconds ahead (0: next slot) */
        bool elected;        /* this replica holds the current slot */
        enum wh_found found;
        bool reported;       /* this process has logged what a check found */
        unsigned disabled;   /* disabled webhooks of this daemon at the last check */
        char ids[WH_MAX_IDS][WH_ID_MAX]; /* the disabled ones that may be re-enabled */
        unsigned nids;
        unsigned patching;   /* PATCH requests in flight */
        bool check_failing, waiting_logged;
        uint64_t checks_ok, checks_failed, reenabled;
        char since[40]; /* the earliest disabled_at of the disabled webhooks (recorded) */
        webhook_reenabled_fn on_reenabled;
        void *on_reenabled_arg;
};

struct wh_patch {
        struct webhook_health *w;
        char id[WH_ID_MAX];
};

static void arm(struct webhook_health *w, long first_s);
static void send_elect(struct webhook_health *w);
static void send_list(struct webhook_health *w);
static void reenable_all(struct webhook_health *w);
static bool enabled(const struct webhook_health *w);

static const char *
state_name(enum wh_state s)
{
        switch (s) {
        case WH_PARKED: return "parked";
        case WH_IDLE: return "idle";
        case WH_ELECT: return "elect";
        case WH_LIST: return "list";
        case WH_PATCH: return "patch";
        }
        return "?";
}

/* Every change of the check's state goes through here. IDLE arms the timer
 * (PARKED instead when stopped or disabled); ELECT, LIST and PATCH send
 * their requests. */
static void
enter(struct webhook_health *w, enum wh_state to)
{
        if (to == WH_IDLE && (w->stopped || !enabled(w)))
                to = WH_PARKED;
        log_debug(WH_TAG, "check: %s -> %s", state_name(w->state), state_name(to));
        w->state = to;
        switch (to) {
        case WH_PARKED:
                evtimer_del(w->timer);
                w->elected = false;
                break;
        case WH_IDLE:
                w->elected = false;
                arm(w, w->first_s);
                w->first_s = 0;
                break;
        case WH_ELECT: send_elect(w); break;
        case WH_LIST: send_list(w); break;
        case WH_PATCH: reenable_all(w); break;
        }
}

static bool
enabled(const struct webhook_health *w)
{
        return pacer_enabled(w->pacer) && w->interval > 0;
}

/* Database up and the queue below half its limit: deliveries would commit. */
static bool
healthy(const struct webhook_health *w)
{
        const struct ingest *g = w->ingest;

        return ingest_db_up(g) && 2u * ingest_depth(g) < ingest_limit(g);
}

static void
set(struct webhook_health *w, const struct webhook_health_settings *st)
{
        if (w->public_url)
                memset(w->public_url, 0, strlen(w->public_url)); /* may hold a password */
        free(w->public_url);
        w->public_url = xstrdup(st->public_url);
        w->interval = st->interval;
        w->auto_enable = st->auto_enable;
}

static void
ignore_cb(PGresult *res, void *arg)
{
        (void)arg;
        if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn(WH_TAG, "recording the webhook check failed: %s", PQresultErrorMessage(res));
}

static void
finish(struct webhook_health *w)
{
        if (w->elected && w->found != WH_UNKNOWN && !w->stopped) {
                char n[16];
                snprintf(n, sizeof(n), "%u", w->disabled);
                const char *vals[2] = { n, w->disabled > 0 && w->since[0] ? w->since : NULL };
                if (db_conn_query(w->conn, "SELECT eps_webhook_check_record($1::int, $2)", 2, vals,
                                  ignore_cb, w) != 0)
                        log_debug(WH_TAG, "webhook check not recorded: database unavailable");
        }
        enter(w, WH_IDLE);
}

/* ---- re-enabling ---- */

static void
patch_done(const struct httpc_resp *r, void *arg)
{
        struct wh_patch *p = arg;
        struct webhook_health *w = p->w;

        if (r->rc == CURLE_ABORTED_BY_CALLBACK) {
                free(p);
                if (--w->patching == 0)
                        enter(w, WH_PARKED); /* stopping: not re-armed */
                return;
        }
        if (r->rc == CURLE_OK && r->status >= 200 && r->status < 300) {
                w->reenabled++;
                if (w->disabled > 0)
                        w->disabled--;
                log_info(WH_TAG, "re-enabled EasyPost webhook %s (request %s); starting a backfill "
                                    "run for the events of the disabled window",
                         p->id, r->request_id[0] ? r->request_id : "-");
                backfill_now(w->backfill);
                if (w->on_reenabled)
                        w->on_reenabled(w->since, w->on_reenabled_arg);
        } else {
                log_warn(WH_TAG, "re-enabling EasyPost webhook %s failed: %s (HTTP %ld); tried "
                                    "again at the next check",
                         p->id, r->rc != CURLE_OK ? r->error : "API error", r->status);
        }
        free(p);
        if (--w->patching == 0)
                finish(w);
}

/* The API takes requests: a key, not rejected, not stopping. */
static bool
api_open(const struct webhook_health *w)
{
        return !w->stopped && pacer_enabled(w->pacer) && !pacer_auth_failed(w->pacer);
}

/* The check ends when the last PATCH has answered. */
static void
reenable_all(struct webhook_health *w)
{
        w->patching++; /* held while queuing, so that no answer ends the check early */
        for (unsigned i = 0; i < w->nids && api_open(w); i++) {
                struct wh_patch *p = xcalloc(1, sizeof(*p));
                p->w = w;
                snprintf(p->id, sizeof(p->id), "%s", w->ids[i]);
                /* EasyPost re-enables a disabled webhook on any update: no field to change */
                w->patching++;
                pacer_request(w->pacer, "PATCH", pacer_url(w->pacer, "/webhooks/%s", p->id, NULL), "{}",
                              patch_done, p);
        }
        w->nids = 0;
        if (--w->patching == 0)
                finish(w);
}

/* ---- the check ---- */

static bool
id_usable(const char *id)
{
        size_t n = strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
        return n > 0 && n < WH_ID_MAX && id[n] == '\0';
}

/* The webhook's url names this daemon: public_url, trailing slashes aside. */
static bool
url_matches(const char *public_url, const char *url)
{
        size_t a = strlen(public_url), b = strlen(url);

        if (a == 0)
                return true; /* unset: every webhook of the account is ours */
        while (a > 0 && public_url[a - 1] == '/')
                a--;
        while (b > 0 && url[b - 1] == '/')
                b--;
        return a == b && strncmp(public_url, url, a) == 0;
}

/* One line per change of what the checks find, never one per tick. */
static void
report(struct webhook_health *w, unsigned disabled, bool missing, const char *first, const char *since)
{
        bool checked = w->found != WH_UNKNOWN, was_missing = w->found == WH_MISSING;
        bool reported = w->reported;

        if (missing && (!reported || !was_missing))
                log_warn(WH_TAG, "no EasyPost webhook of this account posts to public_url: "
                                    "EasyPost delivers no events here");
        else if (!missing && was_missing)
                log_info(WH_TAG, "an EasyPost webhook posts to public_url again");
        if (disabled > 0 && (!reported || disabled != w->disabled))
                log_warn(WH_TAG, "EasyPost webhook %s is disabled (since %s)%s: EasyPost delivers "
                                    "no events to it; %s",
                         first, since, disabled > 1 ? " with others" : "",
                         w->auto_enable ? "it is re-enabled once the daemon is healthy"
                                        : "re-enable it (PATCH /v2/webhooks/{id}) or set "
                                          "webhook_auto_enable = on");
        else if (disabled == 0 && checked && w->disabled > 0) {
                log_info(WH_TAG, "EasyPost webhooks enabled again");
                if (w->on_reenabled) /* by someone else: what it missed meanwhile */
                        w->on_reenabled(w->since, w->on_reenabled_arg);
        }
        if (disabled > 0)
                snprintf(w->since, sizeof(w->since), "%s", since);
        if (disabled == 0)
                w->waiting_logged = false;
        w->found = missing ? WH_MISSING : WH_LISTED;
        w->disabled = disabled;
        w->reported = true;
}

static int
read_list(struct webhook_health *w, const struct httpc_resp *r)
{
        json_t *o = json_loadb(r->body, r->len, 0, NULL), *h;
        json_t *hooks = json_object_get(o, "webhooks");
        const char *pub = w->public_url;
        unsigned matched = 0, disabled = 0;
        char first[WH_ID_MAX] = "?", since[40] = "?";
        size_t i;

        if (!json_is_array(hooks)) {
                json_decref(o);
                return -1;
        }
        w->nids = 0;
        json_array_foreach(hooks, i, h) {
                const char *id = json_string_value(json_object_get(h, "id"));
                const char *url = json_string_value(json_object_get(h, "url"));
                const char *at = json_string_value(json_object_get(h, "disabled_at"));
                if (id == NULL || url == NULL || !url_matches(pub, url))
                        continue;
                matched++;
                if (at == NULL)
                        continue;
                bool usable = id_usable(id);
                if (disabled++ == 0)
                        snprintf(first, sizeof(first), "%s", usable ? id : "(unusable id)");
                /* the earliest: the window that events and trackers were missed in
                 * (UTC ISO 8601 text, whose text order is time order) */
                if (disabled == 1 || strncmp(at, since, sizeof(since) - 1) < 0)
                        snprintf(since, sizeof(since), "%.39s", at);
                if (usable && w->nids < WH_MAX_IDS)
                        snprintf(w->ids[w->nids++], WH_ID_MAX, "%s", id);
        }
        json_decref(o);
        report(w, disabled, pub[0] != '\0' && matched == 0, first, since);
        return 0;
}

static void
check_failed(struct webhook_health *w, const struct httpc_resp *r)
{
        char why[300];

        if (r->rc != CURLE_OK)
                snprintf(why, sizeof(why), "%s", r->error);
        else
                snprintf(why, sizeof(why), "HTTP %ld%s", r->status,
                         r->status == 200 ? " without a webhook list" : "");
        w->checks_failed++;
        if (!w->check_failing)
                log_warn(WH_TAG, "listing EasyPost webhooks failed: %s; the last state is kept "
                                    "until a check succeeds",
                         why);
        w->check_failing = true;
}

static void
list_done(const struct httpc_resp *r, void *arg)
{
        struct webhook_health *w = arg;

        if (r->rc == CURLE_ABORTED_BY_CALLBACK) {
                enter(w, WH_PARKED); /* stopping, or the key was rejected: reload re-arms */
                return;
        }
        if (r->rc != CURLE_OK || r->status != 200 || read_list(w, r) != 0) {
                check_failed(w, r);
                finish(w);
                return;
        }
        w->checks_ok++;
        if (w->check_failing)
                log_info(WH_TAG, "listing EasyPost webhooks works again");
        w->check_failing = false;
        if (w->nids > 0 && w->auto_enable) {
                if (w->elected && healthy(w)) {
                        enter(w, WH_PATCH);
                        return;
                } else if (!w->waiting_logged) {
                        log_info(WH_TAG, "webhook_auto_enable: waiting for the database and the queue "
                                            "before re-enabling the EasyPost webhook");
                        w->waiting_logged = true;
                }
        }
        finish(w);
}

static void
send_list(struct webhook_health *w)
{
        if (!api_open(w)) {
                finish(w); /* the API is off (key rejected, stopping) */
                return;
        }
        pacer_get(w->pacer, pacer_url(w->pacer, "/webhooks", NULL, NULL), list_done, w);
}

/* Lists the webhooks, elected (may re-enable and record) or not (reports only). */
static void
check(struct webhook_health *w, bool elected)
{
        w->elected = elected;
        enter(w, WH_LIST);
}

static void
elect_cb(PGresult *res, void *arg)
{
        struct webhook_health *w = arg;

        if (w->stopped) {
                enter(w, WH_PARKED);
                return;
        }
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                check(w, false); /* report what we can; no re-enabling without the database */
                return;
        }
        /* what the last check recorded, whichever replica (or this one before
         * a restart) made it: the elected one starts from it, so that a
         * webhook re-enabled since is seen as such, once; the others report it */
        bool elected = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        if (!PQgetisnull(res, 0, 1)) {
                if (w->found == WH_UNKNOWN || !elected)
                        w->found = WH_LISTED; /* the elected one's own check says if it is missing */
                w->disabled = (unsigned)atoi(PQgetvalue(res, 0, 1));
                if (!PQgetisnull(res, 0, 2))
                        snprintf(w->since, sizeof(w->since), "%.39s", PQgetvalue(res, 0, 2));
        }
        if (elected) {
                check(w, true);
                return;
        }
        finish(w);
}

static void
send_elect(struct webhook_health *w)
{
        long iv = w->interval;
        char slot[24];

        snprintf(slot, sizeof(slot), "%llu",
                 (unsigned long long)(clock_real_ms() / 1000 / (uint64_t)iv * (uint64_t)iv));
        const char *vals[1] = { slot };
        if (db_conn_query(w->conn, "SELECT elected, disabled, since FROM eps_webhook_check_elect($1::bigint)",
                          1, vals, elect_cb, w) != 0)
                check(w, false);
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
        struct webhook_health *w = arg;

        (void)fd;
        (void)what;
        if (w->state != WH_IDLE || w->stopped || !enabled(w))
                return;
        enter(w, WH_ELECT);
}

/* first_s > 0: that many seconds from now; else the next slot boundary. */
static void
arm(struct webhook_health *w, long first_s)
{
        if (w->state != WH_IDLE)
                return;
        uint64_t ms = (uint64_t)first_s * 1000u;
        if (first_s <= 0) {
                uint64_t period = (uint64_t)w->interval * 1000u;
                uint64_t now = clock_real_ms();
                ms = (now / period + 1) * period + 20 - now; /* just past the boundary */
        }
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_add(w->timer, &tv);
}

/* ---- lifecycle and reporting ---- */

static const struct db_conn_hooks no_hooks = { 0 };

struct webhook_health *
webhook_health_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
                   struct backfill *backfill, const struct ingest *ingest,
                   const struct webhook_health_settings *st)
{
        struct webhook_health *w = xcalloc(1, sizeof(*w));

        w->pacer = pacer;
        w->backfill = backfill;
        w->ingest = ingest;
        w->conn = db_conn_new(base, conninfo, WH_TAG, &no_hooks, NULL);
        db_conn_set_limits(w->conn, 20000, WH_LOCK_MS); /* under the 30 s deadline */
        w->timer = evtimer_new(base, tick, w);
        set(w, st);
        return w;
}

void
webhook_health_start(struct webhook_health *w)
{
        if (!enabled(w))
                return;
        db_conn_start(w->conn);
        w->first_s = WH_FIRST_CHECK_S;
        enter(w, WH_IDLE);
}

void
webhook_health_reload(struct webhook_health *w, const struct webhook_health_settings *st)
{
        set(w, st);
        if (w->stopped)
                return;
        if (enabled(w) && db_conn_state(w->conn) == DB_DOWN)
                db_conn_start(w->conn);
        if (w->state != WH_IDLE && w->state != WH_PARKED)
                return; /* re-armed when the check in progress ends */
        evtimer_del(w->timer);
        w->first_s = WH_FIRST_CHECK_S;
        enter(w, WH_IDLE);
}

void
webhook_health_stop(struct webhook_health *w)
{
        w->stopped = true;
        if (w->state == WH_IDLE)
                enter(w, WH_PARKED);
}

void
webhook_health_free(struct webhook_health *w)
{
        if (w == NULL)
                return;
        w->stopped = true;
        db_conn_free(w->conn); /* in-flight callbacks run now, as lost, and see stopped */
        event_free(w->timer);
        set(w, &(struct webhook_health_settings){ .public_url = "" });
        free(w->public_url);
        free(w);
}

static const char *
state(const struct webhook_health *w)
{
        if (!enabled(w))
                return "off";
        if (w->found == WH_UNKNOWN)
                return "unknown";
        if (w->found == WH_MISSING)
                return "missing";
        return w->disabled > 0 ? "disabled" : "ok";
}

void
webhook_health_snapshot(const struct webhook_health *w, struct webhook_health_stats *out)
{
        memset(out, 0, sizeof(*out));
        out->state = "off";
        if (w == NULL)
                return;
        out->disabled = w->found != WH_UNKNOWN ? w->disabled : 0u;
        out->checks_ok = w->checks_ok;
        out->checks_failed = w->checks_failed;
        out->reenabled = w->reenabled;
        out->state = state(w);
}

void
webhook_health_render_metrics(const struct webhook_health *w, struct strbuf *b)
{
        struct webhook_health_stats ws;

        webhook_health_snapshot(w, &ws);
        strbuf_printf(b, "# HELP easypost_sync_webhooks_disabled EasyPost webhooks of this daemon found "
                         "disabled at the last check (0 = none or not checked).\n"
                         "# TYPE easypost_sync_webhooks_disabled gauge\n"
                         "easypost_sync_webhooks_disabled %u\n"
                         "# HELP easypost_sync_webhook_checks_total Checks of the EasyPost webhook list "
                         "by this process, by outcome.\n"
                         "# TYPE easypost_sync_webhook_checks_total counter\n"
                         "easypost_sync_webhook_checks_total{outcome=\"ok\"} %llu\n"
                         "easypost_sync_webhook_checks_total{outcome=\"failed\"} %llu\n"
                         "# HELP easypost_sync_webhooks_reenabled_total Disabled EasyPost webhooks "
                         "re-enabled by this process.\n"
                         "# TYPE easypost_sync_webhooks_reenabled_total counter\n"
                         "easypost_sync_webhooks_reenabled_total %llu\n",
                      ws.disabled, (unsigned long long)ws.checks_ok, (unsigned long long)ws.checks_failed,
                      (unsigned long long)ws.reenabled);
}

void
webhook_health_on_reenabled(struct webhook_health *w, webhook_reenabled_fn fn, void *arg)
{
        w->on_reenabled = fn;
        w->on_reenabled_arg = arg;
}
