/*
 * db_conn.h - one non-blocking PostgreSQL connection on the event loop, in
 * pipeline mode once up, reconnecting by itself with capped backoff.
 *
 * Work is sent as segments: the owner issues queries with PQsendQueryParams
 * on db_conn_pq() and then calls db_conn_push(), which adds the Sync that
 * closes the segment (one implicit transaction). Each PGresult of the segment
 * goes to seg->on_result; the Sync, or the loss of the connection, to
 * seg->on_done. Hooks run from loop callbacks, never from inside the call
 * that caused them: a failure found inside db_conn_push, db_conn_query or
 * db_conn_fail hands the in-flight segments back (on_done lost) and calls
 * on_down from an event of its own, after the call has returned. The one
 * exception is db_conn_free, which calls on_done(lost) for every segment
 * still in flight before it returns.
 *
 * Every session runs in UTC (TimeZone is sent at connect). Every connection
 * has a deadline (30 s unless its owner sets another), and every
 * db_conn_query (and each segment whose owner calls db_conn_send_limits)
 * runs with a statement_timeout of 3/4 of it unless the owner sets its own
 * limits; both hold through PgBouncer in transaction mode.
 */
#ifndef EPS_DB_CONN_H
#define EPS_DB_CONN_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

enum db_state {
        DB_DOWN,       /* not started, or stopped */
        DB_CONNECTING, /* PQconnectPoll in progress, deadline armed */
        DB_READY,      /* pipeline mode, may carry segments */
        DB_BACKOFF,    /* waiting to reconnect */
};

struct db_seg;
/* Called for each result of a segment, in order. Returns true to keep res
 * (the callee then PQclears it), false to let db_conn clear it. */
typedef bool (*db_result_fn)(struct db_seg *s, PGresult *res);
/* Called once per pushed segment: lost=false after its Sync (committed unless
 * on_result saw an error), lost=true when the connection died first
 * (outcome unknown). The callee owns s from here on. */
typedef void (*db_done_fn)(struct db_seg *s, bool lost);

struct db_seg {
        struct db_seg *next;   /* in-flight FIFO link, owned by db_conn while pushed */
        uint64_t pushed_us;    /* set by db_conn_push: its deadline counts from here */
        db_result_fn on_result;
        db_done_fn on_done;
        void *arg;
};

struct db_conn;
struct db_conn_hooks {
        void (*on_ready)(struct db_conn *c, void *arg); /* connected or reconnected */
        void (*on_down)(struct db_conn *c, void *arg);  /* lost; reconnect scheduled */
        void (*on_idle)(struct db_conn *c, void *arg);  /* a segment finished: room for more */
};

/* conninfo is copied; name labels the log lines. */
struct db_conn *db_conn_new(struct event_base *base, const char *conninfo, const char *name,
                            const struct db_conn_hooks *hooks, void *arg);
/* Fails in-flight segments (lost) and frees. */
void db_conn_free(struct db_conn *c);
void db_conn_start(struct db_conn *c);

enum db_state db_conn_state(const struct db_conn *c);
bool db_conn_ready(const struct db_conn *c);
PGconn *db_conn_pq(struct db_conn *c);
unsigned db_conn_inflight(const struct db_conn *c);
unsigned long db_conn_reconnects(const struct db_conn *c);

/* Closes the segment begun with PQsend* calls and queues it. On a send error
 * the connection is failed: every in-flight segment, then s, get on_done(lost)
 * from the loop, after db_conn_push has returned. */
void db_conn_push(struct db_conn *c, struct db_seg *s);
/* A segment unanswered for ms drops the connection (0: never; 30 s until
 * set). Also sets the TCP keepalive and tcp_user_timeout of the next
 * connection attempt. */
void db_conn_set_timeout(struct db_conn *c, unsigned ms);
unsigned db_conn_timeout(const struct db_conn *c);
/* The server-side limits of each db_conn_query's transaction, applied with
 * SET LOCAL semantics at its start (0: none, the server's setting holds);
 * until set, statement_timeout is 3/4 of the deadline. A connection that
 * runs statements refused inside a pipeline (DETACH ... CONCURRENTLY) sets
 * (0, 0). Keep statement_ms below the deadline, so that PostgreSQL cancels a
 * slow statement (an error the caller sees) before the connection is dropped. */
void db_conn_set_limits(struct db_conn *c, unsigned statement_ms, unsigned lock_ms);
/* For an owner that sends its own segments: sends the statement that applies
 * the limits above to the segment's transaction, ahead of the owner's
 * statements. Returns 1 when sent (its result, one row, comes first), 0 when
 * there are none, -1 when the send failed. */
MUST_CHECK int db_conn_send_limits(struct db_conn *c);
/* Declares the connection broken (e.g. a PQsend* call failed). */
void db_conn_fail(struct db_conn *c, const char *where);

/* One statement (text parameters) as its own transaction. fn gets the
 * statement's result after the Sync (borrowed, cleared after fn returns), or
 * NULL when the connection was lost first. Returns -1 without calling fn
 * when the connection is not READY or the send fails. */
typedef void (*db_query_fn)(PGresult *res, void *arg);
MUST_CHECK int db_conn_query(struct db_conn *c, const char *sql, int nparams,
                             const char *const *values, db_query_fn fn, void *arg);
/* The same with typed, possibly binary parameters (PQsendQueryParams's),
 * sent at once or not at all: -1 also while another query is in flight or
 * waiting, for an owner that keeps one at a time (nothing is copied). */
MUST_CHECK int db_conn_query_bin(struct db_conn *c, const char *sql, int nparams, const Oid *types,
                                 const char *const *values, const int *lengths, const int *formats,
                                 db_query_fn fn, void *arg);

#endif
