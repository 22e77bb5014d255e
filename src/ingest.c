/*
 * ingest.c - bounded queue of verified events -> one transaction per batch.
 *
 * Item life:  submit -> pending queue -> batch (in flight on one db_conn)
 *               -> Sync ok:            done(STORED | DUPLICATE)
 *               -> connection lost:    done(UNAVAILABLE)   (sender retries; dedup by id)
 *               -> transient error:    done(UNAVAILABLE)
 *               -> data error at k:    item k gets dead_error, the whole batch goes back
 *                                      to the front of the queue in order; item k is then
 *                                      stored raw with status 'failed' (a dead letter)
 * A segment reports exactly which statement failed, so the split lands on the
 * poison event at once instead of halving blindly; the rest commit next round.
 *
 * Sending happens only from the kick event, never from inside a db_conn
 * callback, so completions and sends never recurse into each other.
 */
#include "ingest.h"

#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/* One execution per event; eps_ingest (sql/) stores, deduplicates and projects. */
static const char SQL_INGEST[] =
        "SELECT eps_ingest($1::uuid, $2, $3, $4, $5, $6, $7, $8::timestamptz, $9::jsonb, $10, $11::bool)";
#define INGEST_NPARAMS 11

/* The common case needs no function: one plain row insert whose RETURNING
 * tells stored (or pending) from duplicate (no row). */
static const char SQL_INSERT[] =
        "INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, body, source,"
        " status, event_created_at) VALUES ($1::uuid, $2, $3, $4, $5, $6, $6::jsonb, $7,"
        " CASE WHEN $3 IN ('tracker.created', 'tracker.updated') THEN $9 ELSE 'stored' END,"
        " $8::timestamptz) ON CONFLICT (event_id) DO NOTHING RETURNING status";
#define INSERT_NPARAMS 9
#define TEXTOID 25

struct batch {
        struct db_seg seg; /* first: db_conn hands it back */
        struct ingest *g;
        struct ingest_item **items;
        unsigned n, nres;
        int fail_index;    /* statement whose result was the first error, -1 if none */
        bool transient;
        char sqlstate[6];
        char *errmsg;
};

struct ingest {
        struct event_base *base;
        struct db_conn **conns;
        unsigned nconn;
        struct ingest_item *head, *tail; /* pending, in arrival order */
        unsigned npending;
        unsigned depth;                  /* submitted and not yet done */
        unsigned limit, batch_max;
        bool defer;
        void (*on_pending)(void *arg);
        void *on_pending_arg;
        struct event *kick;
        struct ingest_stats stats;
};

static void kick_cb(evutil_socket_t fd, short what, void *arg);

static void
kick(struct ingest *g)
{
        event_active(g->kick, EV_TIMEOUT, 0);
}

static void
conn_ready(struct db_conn *c, void *arg)
{
        (void)c;
        kick(arg);
}

static void
conn_idle(struct db_conn *c, void *arg)
{
        (void)c;
        kick(arg);
}

static const struct db_conn_hooks hooks = {
        .on_ready = conn_ready,
        .on_idle = conn_idle,
};

struct ingest *
ingest_new(struct event_base *base, const char *conninfo, unsigned nconn, unsigned queue_limit,
           unsigned batch_max, bool defer)
{
        struct ingest *g = xcalloc(1, sizeof(*g));
        char name[32];

        g->defer = defer;
        g->base = base;
        g->nconn = nconn;
        g->limit = queue_limit;
        g->batch_max = batch_max;
        g->conns = xcalloc(nconn, sizeof(*g->conns));
        for (unsigned i = 0; i < nconn; i++) {
                snprintf(name, sizeof(name), "ingest-%u", i);
                g->conns[i] = db_conn_new(base, conninfo, name, &hooks, g);
        }
        g->kick = event_new(base, -1, 0, kick_cb, g);
        return g;
}

void
ingest_start(struct ingest *g)
{
        for (unsigned i = 0; i < g->nconn; i++)
                db_conn_start(g->conns[i]);
}

void
ingest_on_pending(struct ingest *g, void (*fn)(void *arg), void *arg)
{
        g->on_pending = fn;
        g->on_pending_arg = arg;
}

void
ingest_set_batch_max(struct ingest *g, unsigned batch_max)
{
        g->batch_max = batch_max;
}

static void
item_finish(struct ingest *g, struct ingest_item *it, enum ingest_result r)
{
        g->depth--;
        switch (r) {
        case INGEST_STORED:
                g->stats.stored++;
                if (it->dead_error)
                        g->stats.dead_letters++;
                metrics_event(it->ev.description,
                              strcmp(it->status, "failed") == 0 ? OUT_FAILED : OUT_STORED);
                break;
        case INGEST_DUPLICATE:
                g->stats.duplicates++;
                metrics_event(it->ev.description, OUT_DUPLICATE);
                break;
        case INGEST_UNAVAILABLE:
                g->stats.unavailable++;
                metrics_event(it->ev.description, OUT_UNAVAILABLE);
                break;
        }
        it->next = NULL;
        it->done(it, r);
}

void
ingest_free(struct ingest *g)
{
        if (g == NULL)
                return;
        for (unsigned i = 0; i < g->nconn; i++)
                db_conn_free(g->conns[i]); /* in-flight batches come back as lost */
        while (g->head) {
                struct ingest_item *it = g->head;
                g->head = it->next;
                item_finish(g, it, INGEST_UNAVAILABLE);
        }
        event_free(g->kick);
        free(g->conns);
        free(g);
}

bool
ingest_has_room(const struct ingest *g)
{
        return g->depth < g->limit;
}

bool
ingest_db_up(const struct ingest *g)
{
        return ingest_conns_ready(g) > 0;
}

void
ingest_submit(struct ingest *g, struct ingest_item *it)
{
        it->next = NULL;
        if (g->tail)
                g->tail->next = it;
        else
                g->head = it;
        g->tail = it;
        g->npending++;
        g->depth++;
        kick(g);
}

void
ingest_item_fini(struct ingest_item *it)
{
        epevent_fini(&it->ev);
        free(it->owned_body);
        free(it->dead_error);
        it->owned_body = it->dead_error = NULL;
}

void
ingest_item_detach(struct ingest_item *it)
{
        if (it->owned_body)
                return;
        it->owned_body = xmalloc(it->len + 1);
        memcpy(it->owned_body, it->body, it->len);
        it->owned_body[it->len] = '\0';
        it->body = it->owned_body;
}

/* Puts a batch's items back at the front of the queue, keeping their order. */
static void
requeue_front(struct ingest *g, struct batch *b)
{
        for (unsigned i = b->n; i-- > 0;) {
                struct ingest_item *it = b->items[i];
                it->next = g->head;
                g->head = it;
                if (g->tail == NULL)
                        g->tail = it;
                g->npending++;
        }
}

static void
batch_free(struct batch *b)
{
        free(b->items);
        free(b->errmsg);
        free(b);
}

static bool
sqlstate_is_data_error(const char *st)
{
        static const char *const classes[] = { "22", "23", "54", "P0", "2F", "38", "39",
                                               "09", "21", "44" };
        for (size_t i = 0; i < ARRAY_LEN(classes); i++)
                if (strncmp(st, classes[i], 2) == 0)
                        return true;
        return false;
}

static bool
batch_result(struct db_seg *s, PGresult *res)
{
        struct batch *b = (struct batch *)s;

        if (b->nres++ == 0) {
                /* the batch's Prepare: an error here is nobody's data */
                if (PQresultStatus(res) != PGRES_COMMAND_OK && b->fail_index < 0) {
                        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                        b->fail_index = (int)b->n;
                        b->transient = true;
                        snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", st ? st : "XX000");
                        b->errmsg = xstrdup(msg ? msg : "prepare failed");
                }
                return false;
        }
        unsigned idx = b->nres - 2;

        switch (PQresultStatus(res)) {
        case PGRES_TUPLES_OK:
                if (idx < b->n) {
                        struct ingest_item *it = b->items[idx];
                        snprintf(it->status, sizeof(it->status), "%s",
                                 PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "duplicate");
                }
                break;
        case PGRES_PIPELINE_ABORTED:
                break;
        default: {
                if (b->fail_index >= 0)
                        break;
                const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                b->fail_index = (int)idx;
                snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", st ? st : "XX000");
                b->transient = !sqlstate_is_data_error(b->sqlstate) || idx >= b->n;
                b->errmsg = xstrdup(msg ? msg : "unknown error");
                break;
        }
        }
        return false;
}

static void
batch_done(struct db_seg *s, bool lost)
{
        struct batch *b = (struct batch *)s;
        struct ingest *g = b->g;

        if (!lost && b->fail_index < 0 && b->nres != b->n + 1) {
                log_err("ingest", "batch of %u got %u results: answering 503", b->n, b->nres);
                lost = true;
        }
        if (lost || (b->fail_index >= 0 && b->transient)) {
                if (!lost)
                        log_warn("ingest", "batch of %u failed (%s): %s", b->n, b->sqlstate,
                                 b->errmsg);
                for (unsigned i = 0; i < b->n; i++)
                        item_finish(g, b->items[i], INGEST_UNAVAILABLE);
        } else if (b->fail_index >= 0) {
                struct ingest_item *bad = b->items[b->fail_index];
                if (bad->dead_error) {
                        /* even the raw store failed: nothing more we can do now */
                        log_err("ingest", "dead letter %s not stored (%s): %s", bad->ev.id,
                                b->sqlstate, b->errmsg);
                        item_finish(g, bad, INGEST_UNAVAILABLE);
                        b->n--;
                        memmove(b->items + b->fail_index, b->items + b->fail_index + 1,
                                (b->n - (unsigned)b->fail_index) * sizeof(*b->items));
                } else {
                        log_warn("ingest", "event %s breaks its batch (%s): %s; storing it as failed",
                                 bad->ev.id, b->sqlstate, b->errmsg);
                        size_t n = strlen(b->sqlstate) + strlen(b->errmsg) + 4;
                        bad->dead_error = xmalloc(n);
                        snprintf(bad->dead_error, n, "%s: %s", b->sqlstate, b->errmsg);
                }
                g->stats.poison_splits++;
                requeue_front(g, b);
                kick(g);
        } else {
                bool pending = false;
                for (unsigned i = 0; i < b->n; i++) {
                        struct ingest_item *it = b->items[i];
                        pending |= strcmp(it->status, "pending") == 0;
                        item_finish(g, it, strcmp(it->status, "duplicate") == 0
                                                   ? INGEST_DUPLICATE
                                                   : INGEST_STORED);
                }
                if (pending && g->on_pending)
                        g->on_pending(g->on_pending_arg);
        }
        batch_free(b);
}

static const char *
source_name(enum ingest_source s)
{
        return s == INGEST_BACKFILL ? "backfill" : "webhook";
}

/*
 * Does this event go through eps_ingest()? Dead letters, bodies only a
 * cleaned copy can project, and tracker events projected inline do; the
 * rest is a plain insert. A batch holds one kind only, so that it needs one
 * Parse.
 */
static bool
needs_fn(const struct ingest *g, const struct ingest_item *it)
{
        return it->dead_error || it->ev.has_nul ||
               (!g->defer && (strcmp(it->ev.description, "tracker.created") == 0 ||
                              strcmp(it->ev.description, "tracker.updated") == 0));
}

/* Sends one batch on c. Returns false if the connection failed meanwhile. */
static bool
send_batch(struct ingest *g, struct db_conn *c)
{
        bool fn = needs_fn(g, g->head);
        unsigned n = 0;
        struct batch *b = xcalloc(1, sizeof(*b));
        PGconn *pq = db_conn_pq(c);
        static const Oid types[INGEST_NPARAMS] = { 0, 0, 0, 0, 0, TEXTOID, 0, 0, 0, 0, 0 };
        static const int formats[INGEST_NPARAMS] = { 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0 };

        for (struct ingest_item *it = g->head; it && n < g->batch_max && needs_fn(g, it) == fn;
             it = it->next)
                n++;
        b->seg.on_result = batch_result;
        b->seg.on_done = batch_done;
        b->g = g;
        b->fail_index = -1;
        b->items = xmalloc(n * sizeof(*b->items));
        for (unsigned i = 0; i < n; i++) {
                struct ingest_item *it = g->head;
                g->head = it->next;
                if (g->head == NULL)
                        g->tail = NULL;
                g->npending--;
                it->next = NULL;
                b->items[b->n++] = it;
        }
        g->stats.batches++;
        g->stats.batch_events += n;
        unsigned bucket = 0;
        for (unsigned lim = 1; bucket < 7 && n > lim; bucket++)
                lim = lim < 4 ? lim * 2 : lim * 4;
        g->stats.batch_size_buckets[bucket]++;

        /* One Parse per batch: the unnamed statement lives until the next Parse,
         * so it is PgBouncer-safe, and each event costs a Bind/Execute only. */
        int np = fn ? INGEST_NPARAMS : INSERT_NPARAMS;
        if (!PQsendPrepare(pq, "", fn ? SQL_INGEST : SQL_INSERT, np, types)) {
                db_conn_push(c, &b->seg);
                if (db_conn_ready(c))
                        db_conn_fail(c, "send");
                return false;
        }
        for (unsigned i = 0; i < b->n; i++) {
                struct ingest_item *it = b->items[i];
                const char *v[INGEST_NPARAMS] = {
                        it->uuid,
                        it->ev.id,
                        it->ev.description,
                        it->ev.mode[0] ? it->ev.mode : NULL,
                        it->ev.object_id[0] ? it->ev.object_id : NULL,
                        it->body,
                        source_name(it->source),
                        /* a dead letter keeps nothing that might have broken it */
                        it->ev.created_at[0] && !it->dead_error ? it->ev.created_at : NULL,
                        !fn ? (g->defer ? "pending" : "stored") : it->dead_error ? NULL : it->ev.clean,
                        it->dead_error,
                        g->defer ? "t" : "f",
                };
                int lens[INGEST_NPARAMS] = { 0 };
                lens[5] = (int)it->len;
                if (!PQsendQueryPrepared(pq, "", np, v, lens, formats, 0)) {
                        /* the segment is incomplete: push it so the failure hands
                         * every item back through batch_done(lost) */
                        db_conn_push(c, &b->seg);
                        if (db_conn_ready(c))
                                db_conn_fail(c, "send");
                        return false;
                }
        }
        db_conn_push(c, &b->seg);
        return db_conn_ready(c);
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
        struct ingest *g = arg;

        (void)fd;
        (void)what;
        for (unsigned i = 0; i < g->nconn && g->npending > 0; i++) {
                struct db_conn *c = g->conns[i];
                if (db_conn_ready(c) && db_conn_inflight(c) == 0)
                        send_batch(g, c);
        }
        if (g->npending > 0 && !ingest_db_up(g)) {
                /* no connection: answer now instead of letting senders wait */
                while (g->head) {
                        struct ingest_item *it = g->head;
                        g->head = it->next;
                        if (g->head == NULL)
                                g->tail = NULL;
                        g->npending--;
                        item_finish(g, it, INGEST_UNAVAILABLE);
                }
        }
}

unsigned
ingest_depth(const struct ingest *g)
{
        return g->depth;
}

unsigned
ingest_limit(const struct ingest *g)
{
        return g->limit;
}

unsigned
ingest_conns(const struct ingest *g)
{
        return g->nconn;
}

unsigned
ingest_conns_ready(const struct ingest *g)
{
        unsigned n = 0;

        for (unsigned i = 0; i < g->nconn; i++)
                n += db_conn_ready(g->conns[i]);
        return n;
}

unsigned
ingest_conns_busy(const struct ingest *g)
{
        unsigned n = 0;

        for (unsigned i = 0; i < g->nconn; i++)
                n += db_conn_inflight(g->conns[i]) > 0;
        return n;
}

unsigned long
ingest_reconnects(const struct ingest *g)
{
        unsigned long n = 0;

        for (unsigned i = 0; i < g->nconn; i++)
                n += db_conn_reconnects(g->conns[i]);
        return n;
}

const struct ingest_stats *
ingest_stats(const struct ingest *g)
{
        return &g->stats;
}

bool
ingest_idle(const struct ingest *g)
{
        return g->depth == 0;
}
