/*
 * db_conn.c - one non-blocking PostgreSQL connection driven by libevent.
 *
 * Owns the PGconn, its socket event and one timer (connect deadline or
 * backoff delay, told apart by state). Always in pipeline mode once READY.
 * Never blocks, never logs query parameters.
 *
 *   DOWN --start--> CONNECTING --poll ok--> READY
 *     ^                 | fail / deadline     | I/O error, lost backend
 *     |                 v                     v
 *     +------------ BACKOFF <-----------------+      (timer -> start again)
 *
 * Results are drained after every read and every flush (PQflush may buffer
 * input itself) until our own in-flight FIFO is empty or libpq is busy.
 * A hook may fail the connection, so the drain re-checks the state after each.
 *
 * A failure hands the in-flight segments back (on_done lost) and calls
 * on_down from an event of its own, never from inside the call that found
 * it: a caller of db_conn_push or db_conn_query may set its own "busy" flag
 * after the call returns, and must not be called back before that.
 */
#include "db_conn.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define DB_CONNECT_TIMEOUT_S 10
#define DB_BACKOFF_BASE_MS 100
#define DB_BACKOFF_CAP_MS 5000
#define DB_DRAIN_BUDGET 4096
#define DB_DEFAULT_TIMEOUT_MS 30000 /* every connection's deadline until its owner sets one */
#define DB_LIMITS_AUTO (~0u)        /* statement_timeout: 3/4 of the deadline */

struct db_conn {
        struct event_base *base;
        char *conninfo;
        char *name;
        PGconn *pq;
        enum db_state state;
        struct event *io;
        short io_flags;
        struct event *timer;
        unsigned attempt;
        unsigned long reconnects;
        bool was_up;          /* to log state changes, not every retry */
        uint64_t down_since;  /* monotonic us of the first failure */
        struct db_seg *head, *tail;
        unsigned ninflight;
        struct db_seg *wait_head, *wait_tail; /* db_conn_query()s not sent yet, in order */
        struct db_seg *lost;  /* failed segments waiting for lost_cb, in order */
        unsigned timeout_ms;  /* 0: none; else the oldest segment's deadline */
        unsigned stmt_ms;     /* per-transaction statement_timeout (DB_LIMITS_AUTO, 0: none) */
        unsigned lock_ms;     /* per-transaction lock_timeout (0: the server's) */
        struct event *deadline;
        bool lost_down;       /* lost_cb also calls on_down */
        struct event *lostev;
        const struct db_conn_hooks *hooks;
        void *arg;
};

static void io_cb(evutil_socket_t fd, short what, void *arg);
static void connect_cb(evutil_socket_t fd, short what, void *arg);
static void lost_cb(evutil_socket_t fd, short what, void *arg);
static void deadline_cb(evutil_socket_t fd, short what, void *arg);
static void send_waiting(struct db_conn *c);

static const char *
state_name(enum db_state s)
{
        switch (s) {
        case DB_DOWN: return "down";
        case DB_CONNECTING: return "connecting";
        case DB_READY: return "ready";
        case DB_BACKOFF: return "backoff";
        }
        return "?";
}

/* Every change of c->state goes through here (db_conn_new starts at DB_DOWN). */
static void
set_state(struct db_conn *c, enum db_state to)
{
        if (c->state != to)
                log_debug("db", "%s: %s -> %s", c->name, state_name(c->state), state_name(to));
        c->state = to;
}

static void
notice_cb(void *arg, const PGresult *res)
{
        struct db_conn *c = arg;
        const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

        log_debug("db", "%s: notice %s: %s", c->name, sev ? sev : "?", msg ? msg : "");
}

static void
watch(struct db_conn *c, short flags, event_callback_fn cb)
{
        int fd = PQsocket(c->pq); /* never cached: connect may switch sockets */

        if (c->io)
                event_free(c->io);
        c->io = event_new(c->base, fd, flags, cb, c);
        c->io_flags = flags;
        event_add(c->io, NULL);
}

struct db_conn *
db_conn_new(struct event_base *base, const char *conninfo, const char *name,
            const struct db_conn_hooks *hooks, void *arg)
{
        struct db_conn *c = xcalloc(1, sizeof(*c));

        c->base = base;
        c->conninfo = xstrdup(conninfo);
        c->name = xstrdup(name);
        c->hooks = hooks;
        c->arg = arg;
        c->state = DB_DOWN; /* the initial state; set_state() from here on */
        c->timeout_ms = DB_DEFAULT_TIMEOUT_MS;
        c->stmt_ms = DB_LIMITS_AUTO;
        c->timer = evtimer_new(base, connect_cb, c);
        c->lostev = event_new(base, -1, 0, lost_cb, c);
        c->deadline = evtimer_new(base, deadline_cb, c);
        return c;
}

/* Moves the in-flight FIFO, then the queries waiting to be sent, to the end
 * of the lost list. */
static void
take_inflight(struct db_conn *c)
{
        struct db_seg **end = &c->lost;

        while (*end)
                end = &(*end)->next;
        *end = c->head;
        while (*end)
                end = &(*end)->next;
        *end = c->wait_head;
        c->head = c->tail = NULL;
        c->wait_head = c->wait_tail = NULL;
        c->ninflight = 0;
        evtimer_del(c->deadline);
}

/* Hands every lost segment back, in order. */
static void
fail_lost(struct db_conn *c)
{
        while (c->lost) {
                struct db_seg *s = c->lost;
                c->lost = s->next;
                s->next = NULL;
                s->on_done(s, true);
        }
}

static void
lost_cb(evutil_socket_t fd, short what, void *arg)
{
        struct db_conn *c = arg;
        bool down = c->lost_down;

        (void)fd;
        (void)what;
        c->lost_down = false;
        fail_lost(c);
        if (down && c->hooks->on_down)
                c->hooks->on_down(c, c->arg);
}

static void
close_pq(struct db_conn *c)
{
        if (c->io) {
                event_free(c->io); /* before the fd is closed */
                c->io = NULL;
                c->io_flags = 0;
        }
        evtimer_del(c->timer);
        if (c->pq) {
                PQfinish(c->pq);
                c->pq = NULL;
        }
}

void
db_conn_free(struct db_conn *c)
{
        if (c == NULL)
                return;
        close_pq(c);
        set_state(c, DB_DOWN);
        take_inflight(c);
        fail_lost(c);
        event_free(c->lostev);
        event_free(c->deadline);
        event_free(c->timer);
        memset(c->conninfo, 0, strlen(c->conninfo));
        free(c->conninfo);
        free(c->name);
        free(c);
}

void
db_conn_fail(struct db_conn *c, const char *where)
{
        char msg[256] = "no connection";

        if (c->pq) {
                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c->pq));
                msg[strcspn(msg, "\n")] = '\0';
        }
        if (c->was_up || c->attempt == 0) {
                log_warn("db", "%s: connection down (%s): %s", c->name, where, msg);
                c->down_since = clock_mono_us();
        } else {
                log_debug("db", "%s: reconnect attempt %u failed (%s): %s", c->name, c->attempt,
                          where, msg);
        }
        bool was_ready = c->state == DB_READY;
        c->was_up = false;
        close_pq(c);
        set_state(c, DB_BACKOFF);
        take_inflight(c);
        c->lost_down |= was_ready;
        if (c->lost || c->lost_down)
                event_active(c->lostev, EV_TIMEOUT, 0);
        unsigned ms = backoff_ms(c->attempt++, DB_BACKOFF_BASE_MS, DB_BACKOFF_CAP_MS);
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_assign(c->timer, c->base, connect_cb, c);
        evtimer_add(c->timer, &tv);
}

void
db_conn_start(struct db_conn *c)
{
        /* Defaults first, so that the configured conninfo overrides them;
         * client_encoding last: every text parameter we send is UTF-8. */
        char idle[16], user_timeout[16];
        unsigned t = c->timeout_ms ? c->timeout_ms : DB_DEFAULT_TIMEOUT_MS;
        snprintf(idle, sizeof(idle), "%u", t / 3000 ? t / 3000 : 1);
        snprintf(user_timeout, sizeof(user_timeout), "%u", t);
        const char *keys[] = { "keepalives", "keepalives_idle", "keepalives_interval",
                               "keepalives_count", "tcp_user_timeout", "dbname",
                               "fallback_application_name", "client_encoding", NULL };
        const char *vals[] = { "1", idle, idle, "3", user_timeout, c->conninfo, "easypost-syncd",
                               "UTF8", NULL };
        struct timeval deadline = { DB_CONNECT_TIMEOUT_S, 0 };

        close_pq(c);
        /* TimeZone travels in the startup packet (libpq sends PGTZ as its
         * "timezone" parameter): every session, and every reconnect, is in
         * UTC whatever the server's or the database's default. PgBouncer
         * tracks this parameter and sets it on each server connection it
         * hands us, where it refuses "options" (before 1.20). */
        if (setenv("PGTZ", "UTC", 1) != 0)
                log_warn("db", "%s: cannot pin the session TimeZone to UTC", c->name);
        c->pq = PQconnectStartParams(keys, vals, 1);
        set_state(c, DB_CONNECTING);
        if (c->pq == NULL || PQstatus(c->pq) == CONNECTION_BAD) {
                db_conn_fail(c, "connect");
                return;
        }
        evtimer_assign(c->timer, c->base, connect_cb, c);
        evtimer_add(c->timer, &deadline);
        watch(c, EV_WRITE, connect_cb);
}

/* Connect progress, the connect deadline and the backoff timer share this. */
static void
connect_cb(evutil_socket_t fd, short what, void *arg)
{
        struct db_conn *c = arg;

        (void)fd;
        if (what & EV_TIMEOUT) {
                if (c->state == DB_CONNECTING)
                        db_conn_fail(c, "connect timeout");
                else if (c->state == DB_BACKOFF)
                        db_conn_start(c);
                return;
        }
        switch (PQconnectPoll(c->pq)) {
        case PGRES_POLLING_READING:
                watch(c, EV_READ, connect_cb);
                return;
        case PGRES_POLLING_WRITING:
                watch(c, EV_WRITE, connect_cb);
                return;
        case PGRES_POLLING_OK:
                break;
        default:
                db_conn_fail(c, "connect");
                return;
        }
        evtimer_del(c->timer);
        if (PQsetnonblocking(c->pq, 1) != 0 || PQenterPipelineMode(c->pq) != 1) {
                db_conn_fail(c, "session setup");
                return;
        }
        PQsetNoticeReceiver(c->pq, notice_cb, c);
        watch(c, EV_READ | EV_PERSIST, io_cb);
        if (c->attempt > 0 || c->reconnects > 0 || c->down_since)
                log_info("db", "%s: connection up after %.1f s", c->name,
                         c->down_since ? (double)(clock_mono_us() - c->down_since) / 1e6 : 0.0);
        else
                log_info("db", "%s: connected", c->name);
        if (c->down_since)
                c->reconnects++;
        c->down_since = 0;
        set_state(c, DB_READY);
        c->attempt = 0;
        c->was_up = true;
        if (c->hooks->on_ready)
                c->hooks->on_ready(c, c->arg);
}

/* 0 = fine, -1 = the connection was failed inside (do not touch more). */
static int
drain(struct db_conn *c)
{
        int budget = DB_DRAIN_BUDGET;
        bool finished = false;

        while (c->head && !PQisBusy(c->pq) && budget-- > 0) {
                PGresult *res = PQgetResult(c->pq);
                if (res == NULL) {
                        if (PQstatus(c->pq) == CONNECTION_BAD) {
                                db_conn_fail(c, "lost mid-pipeline");
                                return -1;
                        }
                        continue; /* end of one query's results */
                }
                struct db_seg *s = c->head;
                ExecStatusType st = PQresultStatus(res);
                if (st == PGRES_PIPELINE_SYNC) {
                        PQclear(res);
                        c->head = s->next;
                        if (c->head == NULL)
                                c->tail = NULL;
                        c->ninflight--;
                        s->next = NULL;
                        s->on_done(s, false);
                        finished = true;
                        if (c->state != DB_READY)
                                return -1;
                        send_waiting(c);
                        continue;
                }
                if (st == PGRES_BAD_RESPONSE || st == PGRES_COPY_IN || st == PGRES_COPY_OUT ||
                    st == PGRES_COPY_BOTH) {
                        PQclear(res);
                        db_conn_fail(c, "unexpected result");
                        return -1;
                }
                if (!s->on_result(s, res))
                        PQclear(res);
        }
        if (budget <= 0 && c->io)
                event_active(c->io, EV_READ, 0); /* more may be buffered: come back soon */
        if (finished && c->hooks->on_idle)
                c->hooks->on_idle(c, c->arg);
        return c->state == DB_READY ? 0 : -1;
}

static void
flush(struct db_conn *c)
{
        int r = PQflush(c->pq);

        if (r < 0) {
                db_conn_fail(c, "flush");
                return;
        }
        short want = EV_READ | EV_PERSIST | (r == 1 ? EV_WRITE : 0);
        if (want != c->io_flags)
                watch(c, want, io_cb);
}

static void
io_cb(evutil_socket_t fd, short what, void *arg)
{
        struct db_conn *c = arg;

        (void)fd;
        (void)what;
        if (!PQconsumeInput(c->pq) || PQstatus(c->pq) == CONNECTION_BAD) {
                db_conn_fail(c, "read");
                return;
        }
        if (drain(c) != 0)
                return;
        flush(c);
        if (c->state == DB_READY && c->head && !PQisBusy(c->pq))
                event_active(c->io, EV_READ, 0); /* flush buffered input: drain again */
}

/* The oldest segment in flight is past its deadline: PostgreSQL (or the
 * path to it) stopped answering. Drop the connection: its segments come back
 * lost and it reconnects. Otherwise wait for the oldest one's deadline. */
static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
        struct db_conn *c = arg;

        (void)fd;
        (void)what;
        if (c->head == NULL || c->timeout_ms == 0)
                return;
        uint64_t age = clock_mono_us() - c->head->pushed_us, limit = c->timeout_ms * 1000ull;
        if (age >= limit) {
                log_warn("db", "%s: no answer for %u ms: dropping the connection", c->name,
                         c->timeout_ms);
                db_conn_fail(c, "timeout");
                return;
        }
        uint64_t left = limit - age;
        struct timeval tv = { (time_t)(left / 1000000), (suseconds_t)(left % 1000000) };
        evtimer_add(c->deadline, &tv);
}

void
db_conn_set_timeout(struct db_conn *c, unsigned ms)
{
        c->timeout_ms = ms;
}

unsigned
db_conn_timeout(const struct db_conn *c)
{
        return c->timeout_ms;
}

void
db_conn_set_limits(struct db_conn *c, unsigned statement_ms, unsigned lock_ms)
{
        c->stmt_ms = statement_ms;
        c->lock_ms = lock_ms;
}

/* The statement that opens each db_conn_query's transaction with its
 * limits; "" when there are none. set_config(..., true) is SET LOCAL: it
 * ends with the transaction (the Sync), so nothing stays behind on a server
 * connection PgBouncer hands to another client next. */
static const char *
preamble(const struct db_conn *c, char *buf, size_t cap)
{
        unsigned st = c->stmt_ms == DB_LIMITS_AUTO ? c->timeout_ms / 4 * 3 : c->stmt_ms;
        int n = 0;

        buf[0] = '\0';
        if (st > 0)
                n = snprintf(buf, cap, "SELECT set_config('statement_timeout', '%u', true)", st);
        if (c->lock_ms > 0)
                snprintf(buf + n, cap - (size_t)n, "%s set_config('lock_timeout', '%u', true)",
                         n > 0 ? "," : "SELECT", c->lock_ms);
        return buf;
}

void
db_conn_push(struct db_conn *c, struct db_seg *s)
{
        s->next = NULL;
        if (c->tail)
                c->tail->next = s;
        else
                c->head = s;
        c->tail = s;
        c->ninflight++;
        s->pushed_us = clock_mono_us();
        if (c->timeout_ms && !evtimer_pending(c->deadline, NULL)) {
                struct timeval tv = { c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000 };
                evtimer_add(c->deadline, &tv);
        }
        if (!PQpipelineSync(c->pq)) {
                db_conn_fail(c, "sync");
                return;
        }
        flush(c);
}

enum db_state
db_conn_state(const struct db_conn *c)
{
        return c->state;
}

bool
db_conn_ready(const struct db_conn *c)
{
        return c->state == DB_READY;
}

PGconn *
db_conn_pq(struct db_conn *c)
{
        return c->pq;
}

unsigned
db_conn_inflight(const struct db_conn *c)
{
        return c->ninflight;
}

unsigned long
db_conn_reconnects(const struct db_conn *c)
{
        return c->reconnects;
}

struct db_query {
        struct db_seg seg; /* first */
        bool limits;       /* the limits' statement goes first: its result is not the caller's */
        PGresult *res;
        db_query_fn fn;
        void *arg;
        char *sql;         /* a query waiting to be sent: its own copies */
        char **values;
        int nparams;
};

static bool
query_result(struct db_seg *s, PGresult *res)
{
        struct db_query *q = (struct db_query *)s;

        if (q->limits) {
                q->limits = false;
                if (PQresultStatus(res) == PGRES_TUPLES_OK)
                        return false;
                /* the limits failed: the statement is not run, the caller sees why */
        }
        if (q->res != NULL)
                return false; /* one statement: anything after its result is noise */
        q->res = res;
        return true;
}

static void
query_done(struct db_seg *s, bool lost)
{
        struct db_query *q = (struct db_query *)s;

        q->fn(lost ? NULL : q->res, q->arg);
        PQclear(q->res);
        free(q->sql);
        for (int i = 0; i < q->nparams; i++)
                free(q->values[i]);
        free(q->values);
        free(q);
}

int
db_conn_send_limits(struct db_conn *c)
{
        char pre[160];

        if (preamble(c, pre, sizeof(pre))[0] == '\0')
                return 0;
        return PQsendQueryParams(c->pq, pre, 0, NULL, NULL, NULL, NULL, 0) ? 1 : -1;
}

/* Sends the limits' statement, if any, then the caller's: one transaction. */
static int
send_query(struct db_conn *c, struct db_query *q, const char *sql, int nparams, const Oid *types,
           const char *const *values, const int *lengths, const int *formats)
{
        int lim = db_conn_send_limits(c);

        if (lim < 0)
                return 0;
        q->limits = lim > 0;
        return PQsendQueryParams(c->pq, sql, nparams, types, values, lengths, formats, 0);
}

/* Sends the oldest waiting query once nothing is in flight. One query (one
 * Sync) in flight at a time: PgBouncer before 1.21 in transaction mode hands
 * the server connection to another client at the first ReadyForQuery, and
 * the answers to a second pipelined Sync would go astray. Ingest batches
 * keep to one in flight per connection on their own (db_conn_push). */
static void
send_waiting(struct db_conn *c)
{
        struct db_query *q = (struct db_query *)c->wait_head;

        if (q == NULL || c->head != NULL || c->state != DB_READY)
                return;
        c->wait_head = q->seg.next;
        if (c->wait_head == NULL)
                c->wait_tail = NULL;
        q->seg.next = NULL;
        int ok = send_query(c, q, q->sql, q->nparams, NULL, (const char *const *)q->values, NULL, NULL);
        db_conn_push(c, &q->seg); /* pushed either way: a failure hands it back lost */
        if (!ok && c->state == DB_READY)
                db_conn_fail(c, "send");
}

static struct db_query *
query_new(db_query_fn fn, void *arg)
{
        struct db_query *q = xcalloc(1, sizeof(*q));

        q->seg.on_result = query_result;
        q->seg.on_done = query_done;
        q->fn = fn;
        q->arg = arg;
        return q;
}

/* Sends q now; on failure frees it and fails the connection. */
static int
query_send(struct db_conn *c, struct db_query *q, const char *sql, int nparams, const Oid *types,
           const char *const *values, const int *lengths, const int *formats)
{
        if (!send_query(c, q, sql, nparams, types, values, lengths, formats)) {
                free(q);
                db_conn_fail(c, "send");
                return -1;
        }
        db_conn_push(c, &q->seg);
        return 0;
}

int
db_conn_query(struct db_conn *c, const char *sql, int nparams, const char *const *values,
              db_query_fn fn, void *arg)
{
        if (c->state != DB_READY)
                return -1;
        struct db_query *q = query_new(fn, arg);
        if ((c->head != NULL || c->wait_head != NULL) && PQstatus(c->pq) != CONNECTION_BAD) {
                q->sql = xstrdup(sql);
                q->nparams = nparams;
                q->values = xcalloc(nparams > 0 ? (size_t)nparams : 1, sizeof(*q->values));
                for (int i = 0; i < nparams; i++)
                        q->values[i] = values[i] ? xstrdup(values[i]) : NULL;
                if (c->wait_tail)
                        c->wait_tail->next = &q->seg;
                else
                        c->wait_head = &q->seg;
                c->wait_tail = &q->seg;
                return 0;
        }
        return query_send(c, q, sql, nparams, NULL, values, NULL, NULL);
}

int
db_conn_query_bin(struct db_conn *c, const char *sql, int nparams, const Oid *types,
                  const char *const *values, const int *lengths, const int *formats, db_query_fn fn,
                  void *arg)
{
        if (c->state != DB_READY || c->head != NULL || c->wait_head != NULL)
                return -1;
        return query_send(c, query_new(fn, arg), sql, nparams, types, values, lengths, formats);
}
