/*
 * backfill.c - recovers events that webhooks missed.
 *
 *   IDLE --tick--> CURSOR (eps_backfill_elect: one replica per slot gets
 *   the cursor, the others go back to IDLE) --> LIST /events after it (follow
 *   has_more) --> CHECK which ids are not stored --> FETCH for each its
 *   delivery attempts (/events/{id}/payloads hold the full body EasyPost
 *   signed) and ingest it through the webhook path with source 'backfill'
 *   --> SAVE the newest listed id as the cursor --> IDLE (the outcome
 *   recorded in sync_state by eps_backfill_record)
 *
 * Ticks fall on multiples of backfill_interval on the wall clock, so every
 * replica names the same slot and the database elects one of them; a run
 * asked for by backfill_now is not elected, it runs here.
 *
 * Every change of state goes through enter(); a run ends only by entering
 * IDLE, completed (why == NULL) or failed (why says what). A failed run
 * keeps its cursor, so the next run tries the same events again; that
 * includes an unusable body, a commit that did not happen, a request
 * dropped after a 401/403 (the run after the key changes starts over).
 * The list omits `result`; an event with no recorded payload is stored as
 * listed, marked partial, and the real delivery replaces it when it comes.
 */
#include "backfill.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "epevent.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "pacer.h"
#include "util.h"
#include "uuid7.h"

#define BACKFILL_PAGE 100
#define BACKFILL_MAX_PAGES 50

struct bf_item {
        struct backfill *b;
        char id[EPEVENT_ID_MAX + 1];
        char *listed; /* the list item's JSON, used when no payload exists */
};

struct backfill {
        struct db_conn *conn;
        struct pacer *pacer;
        struct ingest *ingest;
        struct uuid7_gen *uuid;
        struct event *timer;
        long interval, concurrency;
        bool stopped;
        bool again; /* backfill_now: a run as soon as the one in progress ends */
        struct backfill_stats stats;
        /* the run in progress */
        enum backfill_state state;
        bool forced;  /* asked for by backfill_now: not elected */
        bool started; /* elected and the cursor read: the run counts */
        bool failed;  /* some event could not be fetched, used or committed */
        char *cursor, *newest;
        int pages;
        uint64_t recovered; /* by this run */
        uint64_t partial;   /* of those, stored as listed: no payload */
        backfill_partial_fn on_partial;
        void *on_partial_arg;
        struct bf_item *items;
        size_t n, cap, next, pending;
};

static void enter(struct backfill *b, enum backfill_state to, const char *why);

const char *
backfill_state_name(enum backfill_state s)
{
        static const char *const names[] = { "idle", "cursor", "list", "check", "fetch", "save" };
        return (unsigned)s < ARRAY_LEN(names) ? names[s] : "?";
}

static bool
can_run(const struct backfill *b)
{
        return !b->stopped && (b->interval > 0 || b->again) && pacer_enabled(b->pacer) &&
               !pacer_auth_failed(b->pacer);
}

/* A run asked for by backfill_now starts at once (or a second later while the
 * connection comes up); the others first_s seconds from now, or with
 * first_s 0 just past the next slot boundary. */
static void
arm(struct backfill *b, long first_s)
{
        if (!can_run(b) || b->state != BACKFILL_IDLE)
                return;
        uint64_t ms = (uint64_t)first_s * 1000u;
        if (b->again) {
                ms = db_conn_ready(b->conn) ? 0 : 1000;
                evtimer_del(b->timer);
        } else if (first_s <= 0) {
                uint64_t period = (uint64_t)b->interval * 1000u;
                uint64_t now = clock_real_ms();
                ms = (now / period + 1) * period + 20 - now;
        }
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        evtimer_add(b->timer, &tv);
}

static void
reset(struct backfill *b)
{
        for (size_t i = 0; i < b->n; i++)
                free(b->items[i].listed);
        free(b->items);
        free(b->cursor);
        free(b->newest);
        b->items = NULL;
        b->cursor = b->newest = NULL;
        b->n = b->cap = b->next = b->pending = 0;
        b->pages = 0;
        b->recovered = 0;
        b->partial = 0;
        b->failed = b->started = b->forced = false;
}

static void
recorded_cb(PGresult *res, void *arg)
{
        (void)arg;
        if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn("sync", "recording the backfill run failed: %s", PQresultErrorMessage(res));
}

/* The run's end in sync_state, for --status; why == NULL: completed. */
static void
record(struct backfill *b, const char *why)
{
        char n[24];

        snprintf(n, sizeof(n), "%llu", (unsigned long long)b->recovered);
        const char *vals[3] = { why ? "failed" : "completed", n, why };
        if (db_conn_query(b->conn, "SELECT eps_backfill_record($1, $2::int8, $3)", 3, vals, recorded_cb,
                          NULL) != 0)
                log_debug("sync", "backfill run not recorded: database unavailable");
}

/* IDLE: the run is over. why == NULL: completed; "" : did not start (quiet). */
static void
run_end(struct backfill *b, const char *why)
{
        if (why == NULL) {
                log_info("sync", "backfill done: %zu events listed, %llu recovered", b->n,
                         (unsigned long long)b->recovered);
                b->stats.runs_completed++;
                b->stats.last_success_unix = clock_real_ms() / 1000u;
        } else if (b->started) {
                log_warn("sync", "backfill stopped: %s (cursor kept)", why);
                b->stats.runs_failed++;
        }
        if (b->started && !b->stopped)
                record(b, why);
        if (b->partial > 0 && b->on_partial && !b->stopped)
                b->on_partial(b->on_partial_arg);
        reset(b);
        arm(b, 0);
}

/* ---- CURSOR ---- */

static void
cursor_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;

        if (b->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
            strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
                enter(b, BACKFILL_IDLE, ""); /* or another replica has this slot */
                return;
        }
        if (!PQgetisnull(res, 0, 1))
                b->cursor = xstrdup(PQgetvalue(res, 0, 1));
        b->started = true;
        b->stats.runs++;
        enter(b, BACKFILL_LIST, NULL);
}

static void
send_cursor(struct backfill *b)
{
        char slot[24];
        uint64_t iv = b->interval > 0 ? (uint64_t)b->interval : 1;

        snprintf(slot, sizeof(slot), "%llu", (unsigned long long)(clock_real_ms() / 1000 / iv * iv));
        const char *vals[1] = { b->forced ? NULL : slot };
        if (db_conn_query(b->conn, "SELECT elected, cursor FROM eps_backfill_elect($1::bigint)", 1, vals,
                          cursor_cb, b) != 0)
                enter(b, BACKFILL_IDLE, ""); /* database down: next tick */
}

/* ---- LIST ---- */

static void send_list(struct backfill *b, const char *after, const char *before);

static void
add_listed(struct backfill *b, json_t *ev, const char *id)
{
        if (b->n == b->cap) {
                b->cap = b->cap ? b->cap * 2 : 128;
                b->items = xrealloc(b->items, b->cap * sizeof(*b->items));
        }
        struct bf_item *it = &b->items[b->n++];
        it->b = b;
        snprintf(it->id, sizeof(it->id), "%s", id);
        it->listed = json_dumps(ev, JSON_COMPACT);
}

/* Takes the page's events; *first and *last name its newest and oldest (borrowed from o). */
static void
take_page(struct backfill *b, json_t *o, const char **first, const char **last)
{
        json_t *ev;
        size_t i;

        *first = *last = NULL;
        json_array_foreach(json_object_get(o, "events"), i, ev) {
                const char *id = json_string_value(json_object_get(ev, "id"));
                if (id == NULL || !epevent_id_plain(id) || strlen(id) > EPEVENT_ID_MAX)
                        continue;
                if (*first == NULL)
                        *first = id;
                *last = id;
                add_listed(b, ev, id);
        }
}

static void
list_done(const struct httpc_resp *r, void *arg)
{
        struct backfill *b = arg;
        const char *first, *last;

        if (b->stopped)
                return;
        if (r->rc != CURLE_OK || r->status != 200) {
                char why[200];
                snprintf(why, sizeof(why), "listing events: %s",
                         r->rc != CURLE_OK ? r->error : "HTTP error");
                enter(b, BACKFILL_IDLE, why);
                return;
        }
        json_t *o = json_loadb(r->body, r->len, 0, NULL);
        take_page(b, o, &first, &last);
        bool more = json_is_true(json_object_get(o, "has_more")) && first != NULL &&
                    ++b->pages < BACKFILL_MAX_PAGES;
        /* after a cursor, newer pages follow the newest id of this one; without
         * one, older pages come before the oldest */
        const char *follow = b->cursor ? first : last;
        if ((b->cursor && first) || (b->newest == NULL && first)) {
                free(b->newest);
                b->newest = xstrdup(first);
        }
        char *next = follow ? xstrdup(follow) : NULL;
        json_decref(o);
        if (more)
                send_list(b, b->cursor ? next : NULL, b->cursor ? NULL : next);
        else
                enter(b, BACKFILL_CHECK, NULL);
        free(next);
}

static void
send_list(struct backfill *b, const char *after, const char *before)
{
        char fmt[128];

        snprintf(fmt, sizeof(fmt), "/events?page_size=%d%s", BACKFILL_PAGE,
                 after ? "&after_id=%s%s" : before ? "%s&before_id=%s" : "%s%s");
        pacer_get(b->pacer, pacer_url(b->pacer, fmt, after ? after : "", before), list_done, b);
}

/* ---- CHECK ---- */

static void
check_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;

        if (b->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                enter(b, BACKFILL_IDLE, "database unavailable");
                return;
        }
        /* keep only the ids the database does not have, oldest first */
        struct bf_item *keep = xcalloc(b->n ? b->n : 1, sizeof(*keep));
        size_t k = 0;
        for (size_t i = b->n; i-- > 0;) {
                bool known = false;
                for (int r = 0; r < PQntuples(res) && !known; r++)
                        known = strcmp(PQgetvalue(res, r, 0), b->items[i].id) == 0;
                if (known)
                        free(b->items[i].listed);
                else
                        keep[k++] = b->items[i];
        }
        free(b->items);
        b->items = keep;
        b->cap = b->n ? b->n : 1;
        b->n = k;
        if (k > 0)
                log_info("sync", "backfill: %zu events missing from the database", k);
        enter(b, BACKFILL_FETCH, NULL);
}

static void
send_check(struct backfill *b)
{
        struct strbuf s = { 0 };

        strbuf_printf(&s, "{");
        for (size_t i = 0; i < b->n; i++)
                strbuf_printf(&s, "%s\"%s\"", i ? "," : "", b->items[i].id);
        strbuf_printf(&s, "}");
        const char *vals[1] = { s.data };
        if (db_conn_query(b->conn, "SELECT event_id FROM webhook_events WHERE event_id = ANY($1::text[])",
                          1, vals, check_cb, b) != 0)
                enter(b, BACKFILL_IDLE, "database unavailable");
        strbuf_free(&s);
}

/* ---- FETCH ---- */

static void fetch_more(struct backfill *b);

static void
item_done(struct ingest_item *it, enum ingest_result r)
{
        struct backfill *b = it->arg;
        bool partial = it->partial;

        ingest_item_fini(it);
        free(it);
        if (b->stopped)
                return;
        if (r == INGEST_UNAVAILABLE)
                b->failed = true;
        else if (r == INGEST_STORED) {
                b->stats.recovered++;
                b->recovered++;
                if (partial)
                        b->partial++;
        }
        b->pending--;
        fetch_more(b);
}

/* Ingests body (taken over) for event id through the webhook path; partial:
 * the list item, which the real delivery may replace later. */
static void
ingest_body(struct backfill *b, char *body, const char *id, bool partial)
{
        struct ingest_item *it = xcalloc(1, sizeof(*it));
        size_t len = strlen(body);
        struct err e;

        e.msg[0] = '\0';
        if (epevent_parse(body, len, &it->ev, &e) != 0 || strcmp(it->ev.id, id) != 0) {
                /* the cursor stays before it: the next run tries again */
                log_warn("sync", "backfill: event %s is not usable (%s); the cursor stays before it",
                         id, e.msg[0] ? e.msg : "its body names another event");
                b->stats.unusable++;
                b->failed = true;
        } else if (!ingest_has_room(b->ingest)) {
                b->failed = true;
        } else {
                it->owned_body = body;
                it->body = body;
                it->len = len;
                it->arg = b;
                it->source = INGEST_BACKFILL;
                it->partial = partial;
                it->done = item_done;
                uuid7_next_str(b->uuid, it->uuid);
                b->pending++;
                b->stats.events++;
                ingest_submit(b->ingest, it);
                return;
        }
        epevent_fini(&it->ev);
        free(body);
        free(it);
}

/* The newest delivery attempt whose body is this event, or NULL. */
static char *
chosen_payload(const struct httpc_resp *r, const char *id)
{
        json_t *o = json_loadb(r->body, r->len, 0, NULL), *p;
        char *chosen = NULL;
        size_t i;

        json_array_foreach(json_object_get(o, "payloads"), i, p) {
                const char *rb = json_string_value(json_object_get(p, "request_body"));
                if (rb && strstr(rb, id) != NULL) {
                        free(chosen);
                        chosen = xstrdup(rb);
                }
        }
        json_decref(o);
        return chosen;
}

static void
payloads_done(const struct httpc_resp *r, void *arg)
{
        struct bf_item *it = arg; /* the items stay put until the run ends, after this */
        struct backfill *b = it->b;
        char *body = NULL;
        bool partial = false;

        if (b->stopped)
                return;
        b->pending--;
        if (r->rc == CURLE_OK && (r->status == 200 || r->status == 404)) {
                body = r->status == 200 ? chosen_payload(r, it->id) : NULL;
                if (body == NULL && it->listed) {
                        body = it->listed;
                        it->listed = NULL;
                        partial = true;
                }
        } else {
                b->failed = true; /* an error, 401/403, or dropped unsent: try again next run */
        }
        if (body && !b->failed)
                ingest_body(b, body, it->id, partial);
        else
                free(body);
        fetch_more(b);
}

static void
fetch_more(struct backfill *b)
{
        while (b->next < b->n && !pacer_auth_failed(b->pacer) && b->pending < (size_t)b->concurrency) {
                struct bf_item *it = &b->items[b->next++];
                b->pending++;
                pacer_get(b->pacer, pacer_url(b->pacer, "/events/%s/payloads%s", it->id, NULL),
                          payloads_done, it);
        }
        if (b->pending > 0)
                return;
        if (b->failed || b->next < b->n)
                enter(b, BACKFILL_IDLE, "some events could not be fetched or committed");
        else
                enter(b, BACKFILL_SAVE, NULL);
}

/* ---- SAVE ---- */

static void
saved_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;

        if (b->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
                enter(b, BACKFILL_IDLE, "cursor not saved");
        else
                enter(b, BACKFILL_IDLE, NULL);
}

static void
send_save(struct backfill *b)
{
        const char *vals[1] = { b->newest };

        if (b->newest == NULL) {
                enter(b, BACKFILL_IDLE, NULL);
                return;
        }
        if (db_conn_query(b->conn,
                          "INSERT INTO sync_state (key, value) VALUES ('backfill_cursor', $1)"
                          " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                          1, vals, saved_cb, b) != 0)
                enter(b, BACKFILL_IDLE, "database unavailable");
}

/* ---- the one transition function ---- */

static void
enter(struct backfill *b, enum backfill_state to, const char *why)
{
        log_debug("sync", "backfill: %s -> %s", backfill_state_name(b->state),
                  backfill_state_name(to));
        b->state = to;
        b->stats.state = to;
        switch (to) {
        case BACKFILL_IDLE: run_end(b, why); break;
        case BACKFILL_CURSOR: send_cursor(b); break;
        case BACKFILL_LIST: send_list(b, b->cursor, NULL); break;
        case BACKFILL_CHECK: send_check(b); break;
        case BACKFILL_FETCH: fetch_more(b); break;
        case BACKFILL_SAVE: send_save(b); break;
        }
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
        struct backfill *b = arg;

        (void)fd;
        (void)what;
        if (b->state != BACKFILL_IDLE || !can_run(b))
                return;
        if (b->again && !db_conn_ready(b->conn)) {
                arm(b, 1); /* the asked-for run waits for its connection */
                return;
        }
        b->forced = b->again;
        b->again = false;
        enter(b, BACKFILL_CURSOR, NULL);
}

/* ---- lifecycle ---- */

static const struct db_conn_hooks no_hooks = { 0 };

struct backfill *
backfill_new(struct event_base *base, const char *conninfo, struct pacer *pacer,
             struct ingest *ingest, struct uuid7_gen *uuid, const struct backfill_settings *st)
{
        struct backfill *b = xcalloc(1, sizeof(*b));

        b->pacer = pacer;
        b->ingest = ingest;
        b->uuid = uuid;
        b->conn = db_conn_new(base, conninfo, "backfill", &no_hooks, NULL);
        b->timer = evtimer_new(base, tick, b);
        b->interval = st->interval;
        b->concurrency = st->concurrency > 0 ? st->concurrency : 1;
        return b;
}

void
backfill_start(struct backfill *b)
{
        if (!pacer_enabled(b->pacer) || b->interval <= 0)
                return;
        db_conn_start(b->conn);
        arm(b, 1); /* first run soon after start, then every interval */
}

void
backfill_reload(struct backfill *b, const struct backfill_settings *st)
{
        b->interval = st->interval;
        b->concurrency = st->concurrency > 0 ? st->concurrency : 1;
        if (b->stopped || b->state != BACKFILL_IDLE)
                return;
        if (can_run(b) && db_conn_state(b->conn) == DB_DOWN)
                db_conn_start(b->conn);
        evtimer_del(b->timer);
        arm(b, 1); /* the current slot, unless a replica has had it */
}

void
backfill_now(struct backfill *b)
{
        b->again = true;
        if (!can_run(b))
                return;
        if (db_conn_state(b->conn) == DB_DOWN)
                db_conn_start(b->conn);
        arm(b, 0); /* or when the run in progress ends */
}

void
backfill_stop(struct backfill *b)
{
        b->stopped = true;
        evtimer_del(b->timer);
}

void
backfill_free(struct backfill *b)
{
        if (b == NULL)
                return;
        b->stopped = true;
        db_conn_free(b->conn); /* in-flight callbacks run now, as lost, and see stopped */
        if (b->state != BACKFILL_IDLE)
                enter(b, BACKFILL_IDLE, "shutting down");
        event_free(b->timer);
        free(b);
}

void
backfill_snapshot(const struct backfill *b, struct backfill_stats *out)
{
        memset(out, 0, sizeof(*out));
        if (b)
                *out = b->stats;
}

void
backfill_render_metrics(const struct backfill *b, struct strbuf *sb)
{
        struct backfill_stats bs;

        backfill_snapshot(b, &bs);
        strbuf_printf(sb, "# HELP easypost_sync_backfill_events_total Events recovered by backfill.\n"
                          "# TYPE easypost_sync_backfill_events_total counter\n"
                          "easypost_sync_backfill_events_total %llu\n"
                          "# HELP easypost_sync_backfill_unusable_total Recovered bodies that did not parse or "
                          "named another event (tried again next run).\n"
                          "# TYPE easypost_sync_backfill_unusable_total counter\n"
                          "easypost_sync_backfill_unusable_total %llu\n",
                      (unsigned long long)bs.recovered, (unsigned long long)bs.unusable);
        strbuf_printf(sb, "# HELP easypost_sync_backfill_runs_total Backfill runs that ended, by outcome.\n"
                          "# TYPE easypost_sync_backfill_runs_total counter\n"
                          "easypost_sync_backfill_runs_total{outcome=\"completed\"} %llu\n"
                          "easypost_sync_backfill_runs_total{outcome=\"failed\"} %llu\n"
                          "# HELP easypost_sync_backfill_last_success_timestamp_seconds Unix time of the "
                          "last completed backfill run (0 = never).\n"
                          "# TYPE easypost_sync_backfill_last_success_timestamp_seconds gauge\n"
                          "easypost_sync_backfill_last_success_timestamp_seconds %llu\n",
                      (unsigned long long)bs.runs_completed, (unsigned long long)bs.runs_failed,
                      (unsigned long long)bs.last_success_unix);
}

void
backfill_on_partial(struct backfill *b, backfill_partial_fn fn, void *arg)
{
        b->on_partial = fn;
        b->on_partial_arg = arg;
}
