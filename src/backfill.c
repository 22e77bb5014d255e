/*
 * backfill.c - recovers events that webhooks missed.
 *
 *   IDLE --tick--> CURSOR (eps_backfill_elect: one replica per slot, and only
 *   while no run holds the lease, gets a token, the cursor and any unfinished
 *   sweep; the others go back to IDLE) --> LIST /events from the newest down
 *   with before_id to the cursor (or on from where a sweep stopped) -->
 *   CHECK which ids are not stored --> FETCH for each its delivery attempts
 *   (/events/{id}/payloads hold the full body EasyPost signed) and ingest it
 *   through the webhook path with source 'backfill' --> SAVE where the next
 *   run starts --> IDLE (the outcome recorded in sync_state, the lease
 *   released, by eps_backfill_end)
 *
 * Ticks fall on multiples of backfill_interval on the wall clock, so every
 * replica names the same slot and the database elects one of them; a run
 * asked for by backfill_now is not elected per slot, but takes the lease too.
 * The lease is renewed every third of its length while the run runs; once a
 * renewal fails (lapsed, or another run holds it) the run issues nothing
 * more, writes nothing (every write names its token and is refused) and ends.
 *
 * The cursor is the oldest listed event not known to be settled (stored, or
 * set aside); a run lists down to it, it included. Events fail one by one:
 * one that fails (its payloads not fetched, its body not usable) has the
 * failure counted in backfill_failures and keeps the cursor at it, while
 * the events after it are stored as usual; after max_attempts failed runs it
 * is set aside: stored from its list item as a dead letter ('failed', with
 * the error, partial) so the cursor moves past it. A request not sent after
 * a 401/403, or a commit that did not happen, is not the event's fault and is
 * not counted (after a 401/403 the run ends without saving: the next one,
 * with a new key, starts from the same cursor). A run stopped at its page cap saves a sweep (where the
 * listing goes on, what the cursor becomes at its end) and the next run
 * continues it; when EasyPost no longer lists the event a page starts below
 * (404/422 for its before_id: it aged out), nothing older is left and the
 * listing ends there. A 429 on a list page sends the same page again once
 * the pacer's pause is over (up to BACKFILL_MAX_429 in a row), so steady rate
 * limiting slows a run down instead of ending it. The list omits `result`; an event with no recorded payload
 * is stored as listed, marked partial (counted in `unrecovered`), and the real
 * delivery replaces it when it comes.
 *
 * Every change of state goes through enter(); a run ends only by entering
 * IDLE, completed (why == NULL) or failed (why says what).
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
#define BACKFILL_MAX_ATTEMPTS 10 /* when the settings name none */
#define BACKFILL_MAX_429 30      /* 429s in a row on a list page before the run stops */
#define BACKFILL_ASK_AGAIN_S 5   /* an asked-for run that found the lease held asks again */

struct bf_item {
        struct backfill *b;
        char id[EPEVENT_ID_MAX + 1];
        char *listed;  /* the list item's JSON, used when no payload exists */
        char *error;   /* the last failure of this run */
        bool settled;  /* stored (recovered, duplicate or set aside) */
};

struct backfill {
        struct db_conn *conn;
        struct pacer *pacer;
        struct ingest *ingest;
        struct uuid7_gen *uuid;
        struct event *timer, *renew_timer;
        long interval, concurrency, max_attempts;
        char holder[37]; /* names this process's runs in backfill_lease */
        bool stopped;
        bool again; /* backfill_now: a run as soon as the one in progress ends */
        uint64_t again_after_ms; /* not before this (wall clock ms; 0: at once) */
        struct backfill_stats stats;
        /* the run in progress */
        enum backfill_state state;
        bool forced;   /* asked for by backfill_now: not elected per slot */
        bool started;  /* elected and the cursor read: the run counts */
        bool lost;     /* the lease lapsed or another run holds it: write nothing more */
        bool sweeping; /* continues a sweep an earlier run left */
        bool bottom;   /* the listing reached the cursor or the oldest event */
        long lease_s;
        char token[24];
        char *cursor;  /* list down to this id, it included; NULL: as far as the cap */
        char *top;     /* what the cursor becomes once every listed event is settled */
        char *next;    /* a sweep's before_id, then the oldest id listed */
        int pages;
        unsigned n429; /* 429s in a row on the page being listed */
        uint64_t recovered, unrecovered; /* by this run */
        backfill_partial_fn on_partial;
        void *on_partial_arg;
        struct bf_item *items;
        size_t n, cap, next_item, pending;
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

/* Long enough to outlast a renewal's round trip many times over, short
 * enough that a replica that died mid-run holds back the next for little. */
static long
lease_for(long interval)
{
        long s = 2 * interval;
        return s < 10 ? 10 : s > 60 ? 60 : s;
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
                uint64_t now = clock_real_ms();
                ms = b->again_after_ms > now ? b->again_after_ms - now : 0;
                if (!db_conn_ready(b->conn) && ms < 1000)
                        ms = 1000;
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
        for (size_t i = 0; i < b->n; i++) {
                free(b->items[i].listed);
                free(b->items[i].error);
        }
        free(b->items);
        free(b->cursor);
        free(b->top);
        free(b->next);
        b->items = NULL;
        b->cursor = b->top = b->next = NULL;
        b->n = b->cap = b->next_item = b->pending = 0;
        b->pages = 0;
        b->n429 = 0;
        b->recovered = b->unrecovered = 0;
        b->token[0] = '\0';
        b->started = b->forced = b->lost = b->sweeping = b->bottom = false;
}

static void
ended_cb(PGresult *res, void *arg)
{
        (void)arg;
        if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn("backfill", "recording the backfill run failed: %s", PQresultErrorMessage(res));
}

/* The run's end in sync_state, for --status, and the lease released;
 * why == NULL: completed. */
static void
record(struct backfill *b, const char *why)
{
        char n[24];

        snprintf(n, sizeof(n), "%llu", (unsigned long long)b->recovered);
        const char *vals[4] = { b->token, why ? "failed" : "completed", n, why };
        if (db_conn_query(b->conn, "SELECT eps_backfill_end($1::int8, $2, $3::int8, $4)", 4, vals,
                          ended_cb, NULL) != 0)
                log_debug("backfill", "backfill run not recorded: database unavailable");
}

/* IDLE: the run is over. why == NULL: completed; "" : did not start (quiet). */
static void
run_end(struct backfill *b, const char *why)
{
        evtimer_del(b->renew_timer);
        if (why == NULL) {
                log_info("backfill", "backfill done: %zu events missing, %llu recovered (%llu from the list "
                                 "item alone)", b->n, (unsigned long long)b->recovered,
                         (unsigned long long)b->unrecovered);
                b->stats.runs_completed++;
                b->stats.last_success_unix = clock_real_ms() / 1000u;
        } else if (b->started) {
                log_warn("backfill", "backfill stopped: %s", why);
                b->stats.runs_failed++;
        }
        if (b->started) {
                b->stats.last_run_unrecovered = b->unrecovered;
                if (!b->stopped && !b->lost)
                        record(b, why);
        }
        if (b->unrecovered > 0 && b->on_partial && !b->stopped)
                b->on_partial(b->on_partial_arg);
        reset(b);
        arm(b, 0);
}

/* ---- the lease ---- */

static void
renew_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;

        /* an answer for a run that ended comes before the next election's */
        if (b->stopped || b->state == BACKFILL_IDLE || b->state == BACKFILL_CURSOR)
                return;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
            strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
                struct timeval tv = { b->lease_s / 3, 0 };
                evtimer_add(b->renew_timer, &tv);
                return;
        }
        if (!b->lost)
                log_warn("backfill", "backfill: the run's lease lapsed or another run holds it: "
                                 "stopping, nothing more written");
        b->lost = true;
}

static void
renew_tick(evutil_socket_t fd, short what, void *arg)
{
        struct backfill *b = arg;
        char lease[24];

        (void)fd;
        (void)what;
        if (b->state == BACKFILL_IDLE || b->state == BACKFILL_CURSOR || b->lost)
                return;
        snprintf(lease, sizeof(lease), "%ld", b->lease_s);
        const char *vals[2] = { b->token, lease };
        if (db_conn_query(b->conn, "SELECT eps_backfill_renew($1::int8, $2::int)", 2, vals, renew_cb,
                          b) != 0)
                renew_cb(NULL, b);
}

/* ---- CURSOR ---- */

static char *
dup_or_null(const PGresult *res, int col)
{
        return PQgetisnull(res, 0, col) ? NULL : xstrdup(PQgetvalue(res, 0, col));
}

static void
cursor_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;

        if (b->stopped)
                return;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
            strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
                if (b->forced && res && PQresultStatus(res) == PGRES_TUPLES_OK && !b->again) {
                        /* a run that started before the ask does not list what came
                         * after its start, and the holder may have died: ask again
                         * once it may be over */
                        log_info("backfill", "backfill asked for: a run holds the lease; asking again "
                                             "in %d s", BACKFILL_ASK_AGAIN_S);
                        b->again = true;
                        b->again_after_ms = clock_real_ms() + BACKFILL_ASK_AGAIN_S * 1000u;
                }
                enter(b, BACKFILL_IDLE, ""); /* or another replica has this slot, or a run the lease */
                return;
        }
        snprintf(b->token, sizeof(b->token), "%s", PQgetvalue(res, 0, 1));
        b->cursor = dup_or_null(res, 2);
        b->top = dup_or_null(res, 3);
        b->next = dup_or_null(res, 4);
        b->sweeping = b->top != NULL && b->next != NULL;
        if (!b->sweeping) {
                free(b->top);
                free(b->next);
                b->top = b->next = NULL;
        }
        b->started = true;
        b->stats.runs++;
        struct timeval tv = { b->lease_s / 3, 0 };
        evtimer_add(b->renew_timer, &tv);
        enter(b, BACKFILL_LIST, NULL);
}

static void
send_cursor(struct backfill *b)
{
        char slot[24], lease[24];
        uint64_t iv = b->interval > 0 ? (uint64_t)b->interval : 1;

        b->lease_s = lease_for(b->interval);
        snprintf(slot, sizeof(slot), "%llu", (unsigned long long)(clock_real_ms() / 1000 / iv * iv));
        snprintf(lease, sizeof(lease), "%ld", b->lease_s);
        const char *vals[3] = { b->forced ? NULL : slot, b->holder, lease };
        if (db_conn_query(b->conn, "SELECT elected, token, cursor, sweep_top, sweep_next"
                                   " FROM eps_backfill_elect($1::bigint, $2, $3::int)",
                          3, vals, cursor_cb, b) != 0)
                enter(b, BACKFILL_IDLE, ""); /* database down: next tick */
}

/* ---- LIST ---- */

static void send_list(struct backfill *b, const char *before);

static void
add_listed(struct backfill *b, json_t *ev, const char *id)
{
        if (b->n == b->cap) {
                b->cap = b->cap ? b->cap * 2 : 128;
                b->items = xrealloc(b->items, b->cap * sizeof(*b->items));
        }
        struct bf_item *it = &b->items[b->n++];
        memset(it, 0, sizeof(*it));
        it->b = b;
        snprintf(it->id, sizeof(it->id), "%s", id);
        it->listed = json_dumps(ev, JSON_COMPACT);
}

/* Takes the page's events (newest first) down to the cursor, it included;
 * returns whether the cursor was reached. *first and *last name the newest
 * and oldest taken (borrowed from o). */
static bool
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
                if (b->cursor && strcmp(id, b->cursor) == 0)
                        return true;
        }
        return false;
}

static void
list_done(const struct httpc_resp *r, void *arg)
{
        struct backfill *b = arg;
        const char *first, *last;

        if (b->stopped)
                return;
        if (b->lost) {
                enter(b, BACKFILL_IDLE, "the lease lapsed");
                return;
        }
        if (r->rc == CURLE_OK && (r->status == 404 || r->status == 422) && b->next != NULL) {
                /* EasyPost no longer lists the event the page was to start
                 * below (it keeps events for a limited time, oldest first):
                 * nothing older is left to list, so the list ends here. A
                 * sweep that went on from it would otherwise fail every run. */
                log_warn("backfill", "backfill: EasyPost no longer lists %s (HTTP %ld): the listing ends there",
                         b->next, r->status);
                b->bottom = true;
                enter(b, BACKFILL_CHECK, NULL);
                return;
        }
        if (r->rc == CURLE_OK && r->status == 429 && ++b->n429 <= BACKFILL_MAX_429) {
                /* the same page again once the pacer's pause is over: under
                 * steady rate limiting a run that gave up here would list
                 * its first pages again and again and never reach the rest */
                send_list(b, b->next);
                return;
        }
        if (r->rc != CURLE_OK || r->status != 200) {
                char why[200];
                if (r->rc != CURLE_OK)
                        snprintf(why, sizeof(why), "listing events: %s", r->error);
                else
                        snprintf(why, sizeof(why), "listing events: HTTP %ld", r->status);
                enter(b, BACKFILL_IDLE, why);
                return;
        }
        b->n429 = 0;
        json_t *o = json_loadb(r->body, r->len, 0, NULL);
        if (!json_is_array(json_object_get(o, "events"))) {
                /* a proxy's page, a truncated answer: taken as the end of the
                 * list, it would move the cursor over every event below */
                json_decref(o);
                enter(b, BACKFILL_IDLE, "listing events: no event list in the answer");
                return;
        }
        bool reached = take_page(b, o, &first, &last);
        if (b->top == NULL && first)
                b->top = xstrdup(first); /* the newest: the cursor once all is settled */
        if (last) {
                free(b->next);
                b->next = xstrdup(last);
        }
        bool more = !reached && first != NULL && json_is_true(json_object_get(o, "has_more"));
        json_decref(o);
        if (more && ++b->pages < BACKFILL_MAX_PAGES) {
                send_list(b, b->next);
                return;
        }
        /* stopped at the cap above the cursor: a sweep the next run goes on
         * with; without a cursor (the first run) the cap is as far back as
         * the backfill goes */
        b->bottom = !more || (b->cursor == NULL && !b->sweeping);
        enter(b, BACKFILL_CHECK, NULL);
}

static void
send_list(struct backfill *b, const char *before)
{
        char fmt[128];

        snprintf(fmt, sizeof(fmt), "/events?page_size=%d%s", BACKFILL_PAGE, before ? "%s&before_id=%s" : "%s%s");
        pacer_get(b->pacer, pacer_url(b->pacer, fmt, "", before), list_done, b);
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
        if (b->lost) {
                enter(b, BACKFILL_IDLE, "the lease lapsed");
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
                log_info("backfill", "backfill: %zu events missing from the database", k);
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
static void count_failure(struct bf_item *it, const char *err, long status);

static void
item_done(struct ingest_item *ii, enum ingest_result r)
{
        struct bf_item *it = ii->arg; /* the items stay put until the run ends, after this */
        struct backfill *b = it->b;
        bool partial = ii->partial, dead = ii->dead_error != NULL;

        ingest_item_fini(ii);
        free(ii);
        if (b->stopped)
                return;
        if (r == INGEST_STORED) {
                b->stats.recovered++;
                b->recovered++;
                if (partial) {
                        b->stats.unrecovered++;
                        b->unrecovered++;
                }
                if (dead)
                        b->stats.set_aside++;
        }
        it->settled = r != INGEST_UNAVAILABLE; /* a commit that did not happen: next run */
        b->pending--;
        fetch_more(b);
}

/* Ingests body (taken over) for item it through the webhook path; partial:
 * the list item, which the real delivery may replace later; dead: the error
 * it is set aside with (stored as a dead letter), or NULL. */
static void
ingest_body(struct bf_item *bi, char *body, bool partial, const char *dead)
{
        struct backfill *b = bi->b;
        struct ingest_item *it = xcalloc(1, sizeof(*it));
        size_t len = strlen(body);
        struct err e;

        e.msg[0] = '\0';
        if (epevent_parse(body, len, &it->ev, &e) != 0 || strcmp(it->ev.id, bi->id) != 0) {
                char why[400];
                snprintf(why, sizeof(why), "body not usable: %s",
                         e.msg[0] ? e.msg : "it names another event");
                log_warn("backfill", "backfill: event %s: %s", bi->id, why);
                b->stats.unusable++;
                if (dead == NULL)
                        count_failure(bi, why, -1);
        } else if (ingest_has_room(b->ingest)) {
                it->owned_body = body;
                it->body = body;
                it->len = len;
                it->arg = bi;
                it->source = INGEST_BACKFILL;
                it->partial = partial;
                it->dead_error = dead ? xstrdup(dead) : NULL;
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

/* Counted: after max_attempts the event is stored from its list item as a
 * dead letter with the error, so it no longer holds the cursor; after
 * failures of the moment (no answer, 429, 5xx) only once they have gone on
 * for a day (eps_backfill_failed's may_wait). */
static void
failed_cb(PGresult *res, void *arg)
{
        struct bf_item *it = arg;
        struct backfill *b = it->b;

        if (b->stopped)
                return;
        b->pending--;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
            !PQgetisnull(res, 0, 0) && !b->lost) {
                long n = atol(PQgetvalue(res, 0, 0));
                bool may_wait = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
                if (n >= b->max_attempts && !may_wait) {
                        char dead[512];
                        snprintf(dead, sizeof(dead), "set aside by backfill after %ld failed attempts: %s",
                                 n, it->error);
                        log_warn("backfill", "backfill: event %s %s", it->id, dead);
                        if (it->listed)
                                ingest_body(it, xstrdup(it->listed), true, dead);
                } else {
                        log_info("backfill", "backfill: event %s failed (%ld of %ld attempts%s): %s", it->id,
                                 n, b->max_attempts, may_wait ? "; EasyPost in trouble: waited out for a day" : "",
                                 it->error);
                }
        } else if (res && PQresultStatus(res) != PGRES_TUPLES_OK) {
                log_warn("backfill", "backfill: counting a failure failed: %s", PQresultErrorMessage(res));
        }
        fetch_more(b);
}

/* status: the fetch's HTTP status, 0 for no answer, -1 when the failure was
 * not a fetch's (whether it may wait is eps_backfill_failed's to say). */
static void
count_failure(struct bf_item *it, const char *err, long status)
{
        struct backfill *b = it->b;
        char st[24];

        free(it->error);
        it->error = xstrdup(err);
        snprintf(st, sizeof(st), "%ld", status);
        const char *vals[4] = { b->token, it->id, err, status >= 0 ? st : NULL };
        if (db_conn_query(b->conn, "SELECT attempts, may_wait FROM eps_backfill_failed($1::int8, $2, $3, $4::int)",
                          4, vals, failed_cb, it) == 0)
                b->pending++;
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
        struct bf_item *it = arg;
        struct backfill *b = it->b;

        if (b->stopped)
                return;
        b->pending--;
        if (b->lost) {
                /* nothing more written */
        } else if (r->rc == CURLE_OK && (r->status == 200 || r->status == 404)) {
                char *body = r->status == 200 ? chosen_payload(r, it->id) : NULL;
                if (body)
                        ingest_body(it, body, false, NULL);
                else if (it->listed)
                        ingest_body(it, xstrdup(it->listed), true, NULL);
        } else if (r->rc == CURLE_ABORTED_BY_CALLBACK ||
                   (r->rc == CURLE_OK && (r->status == 401 || r->status == 403))) {
                /* not sent, or the key: not the event's fault, tried again next run */
        } else {
                char err[300];
                if (r->rc != CURLE_OK)
                        snprintf(err, sizeof(err), "fetching its payloads: transport: %s", r->error);
                else
                        snprintf(err, sizeof(err), "fetching its payloads: HTTP %ld (request %s)", r->status,
                                 r->request_id);
                count_failure(it, err, r->rc != CURLE_OK ? 0 : r->status);
        }
        fetch_more(b);
}

static void
fetch_more(struct backfill *b)
{
        while (!b->lost && b->next_item < b->n && !pacer_auth_failed(b->pacer) &&
               b->pending < (size_t)b->concurrency) {
                struct bf_item *it = &b->items[b->next_item++];
                b->pending++;
                pacer_get(b->pacer, pacer_url(b->pacer, "/events/%s/payloads%s", it->id, NULL),
                          payloads_done, it);
        }
        if (b->pending > 0)
                return;
        if (b->lost)
                enter(b, BACKFILL_IDLE, "the lease lapsed");
        else if (pacer_auth_failed(b->pacer))
                enter(b, BACKFILL_IDLE, "the API rejected the key (cursor kept)");
        else
                enter(b, BACKFILL_SAVE, NULL);
}

/* ---- SAVE ---- */

/* The oldest event of the run not settled, or NULL. */
static const char *
oldest_unsettled(const struct backfill *b, size_t *count)
{
        const char *u = NULL;

        *count = 0;
        for (size_t i = 0; i < b->n; i++) { /* oldest first */
                if (b->items[i].settled)
                        continue;
                if (u == NULL)
                        u = b->items[i].id;
                (*count)++;
        }
        return u;
}

static void
saved_cb(PGresult *res, void *arg)
{
        struct backfill *b = arg;
        size_t left;
        char why[200];

        if (b->stopped)
                return;
        const char *u = oldest_unsettled(b, &left);
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
                enter(b, BACKFILL_IDLE, "cursor not saved");
        } else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
                b->lost = true;
                enter(b, BACKFILL_IDLE, "the lease lapsed: cursor not saved");
        } else if (u) {
                snprintf(why, sizeof(why), "%zu events not recovered yet: the cursor stays at %s", left, u);
                enter(b, BACKFILL_IDLE, why);
        } else {
                enter(b, BACKFILL_IDLE, NULL);
        }
}

/* At the bottom the cursor becomes the oldest event not settled (or the
 * newest listed); above it, the sweep remembers that for its end and where
 * the listing goes on. */
static void
send_save(struct backfill *b)
{
        size_t left;
        const char *u = oldest_unsettled(b, &left);
        const char *vals[4] = { b->token, NULL, NULL, NULL };

        if (b->bottom) {
                vals[1] = u ? u : b->top;
        } else {
                vals[2] = u ? u : b->top;
                vals[3] = b->next;
                log_info("backfill", "backfill: %d pages listed, more before %s: the next run goes on",
                         BACKFILL_MAX_PAGES, b->next);
        }
        if (db_conn_query(b->conn, "SELECT eps_backfill_save($1::int8, $2, $3, $4)", 4, vals, saved_cb,
                          b) != 0)
                enter(b, BACKFILL_IDLE, "database unavailable");
}

/* ---- the one transition function ---- */

static void
enter(struct backfill *b, enum backfill_state to, const char *why)
{
        log_debug("backfill", "backfill: %s -> %s", backfill_state_name(b->state),
                  backfill_state_name(to));
        b->state = to;
        b->stats.state = to;
        switch (to) {
        case BACKFILL_IDLE: run_end(b, why); break;
        case BACKFILL_CURSOR: send_cursor(b); break;
        case BACKFILL_LIST: send_list(b, b->sweeping ? b->next : NULL); break;
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
        b->renew_timer = evtimer_new(base, renew_tick, b);
        uuid7_next_str(uuid, b->holder);
        b->interval = st->interval;
        b->concurrency = st->concurrency > 0 ? st->concurrency : 1;
        b->max_attempts = st->max_attempts > 0 ? st->max_attempts : BACKFILL_MAX_ATTEMPTS;
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
        b->max_attempts = st->max_attempts > 0 ? st->max_attempts : BACKFILL_MAX_ATTEMPTS;
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
        b->again_after_ms = 0;
        if (!can_run(b))
                return;
        if (db_conn_state(b->conn) == DB_DOWN)
                db_conn_start(b->conn);
        arm(b, 0); /* or when the run in progress ends */
}

void
backfill_stop(struct backfill *b)
{
        /* a run cut short hands its lease back rather than holding the next
         * slots until it runs out (a request left unsent on the way out costs
         * only that wait) */
        if (b->started && !b->lost && !b->stopped) {
                const char *vals[1] = { b->token };
                if (db_conn_query(b->conn, "SELECT eps_backfill_release($1::int8)", 1, vals, ended_cb,
                                  NULL) != 0)
                        log_debug("backfill", "backfill lease not released: database unavailable");
        }
        b->stopped = true;
        evtimer_del(b->timer);
        evtimer_del(b->renew_timer);
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
        event_free(b->renew_timer);
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
                          "easypost_sync_backfill_unusable_total %llu\n"
                          "# HELP easypost_sync_backfill_unrecovered_total Events backfill stored from the list "
                          "item alone (no payload: no result), set-aside ones included.\n"
                          "# TYPE easypost_sync_backfill_unrecovered_total counter\n"
                          "easypost_sync_backfill_unrecovered_total %llu\n"
                          "# HELP easypost_sync_backfill_set_aside_total Events backfill set aside as dead "
                          "letters after failing sync_max_attempts runs.\n"
                          "# TYPE easypost_sync_backfill_set_aside_total counter\n"
                          "easypost_sync_backfill_set_aside_total %llu\n",
                      (unsigned long long)bs.recovered, (unsigned long long)bs.unusable,
                      (unsigned long long)bs.unrecovered, (unsigned long long)bs.set_aside);
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
