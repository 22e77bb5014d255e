/*
 * ingest.c - bounded queue of verified events -> one transaction per batch.
 *
 * A batch is one statement, eps_ingest_batch() over parallel arrays sent in
 * binary: PostgreSQL's work per batch is a fixed number of set-based
 * statements, whatever its size.
 *
 * A batch holds at most batch_max events and batch_max_bytes of bodies (one
 * larger event goes alone), so its arrays stay far below PostgreSQL's 1 GB
 * message limit and an int length.
 *
 * Item life:  submit -> pending queue -> batch (in flight on one db_conn)
 * and what becomes of the batch, decided once (batch_outcome):
 *   COMMITTED      Sync ok:                done(STORED | DUPLICATE)
 *   UNAVAILABLE    connection lost, error nobody's (disk full, shutdown, a statement
 *                  timeout or cancel ...), an outcome row missing: done(UNAVAILABLE)
 *                  (sender retries; dedup by id)
 *   RETRY          deadlock/serialization: back to the queue, a few times
 *   SPLIT          error some event's (data refused): the batch
 *                  goes back to the front of the queue in order, each item marked
 *                  solo: sent alone, so the neighbours commit
 *   DEAD_LETTER    the one that fails alone gets dead_error and is sent again, to be
 *                  stored raw as 'failed'
 *   DEAD_REFUSED   even that failed: done(UNAVAILABLE)
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
#include "pgarr.h"
#include "util.h"

static const char SQL_BATCH[] =
        "SELECT ord, status FROM eps_ingest_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::bool, "
        "$13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, "
        "$28, $29, $30, $31, $32, $33, $34, $35, $36, d_location_text => $37)";
/* the event arrays, the flag, then the typed tracker snapshots: per event
 * (NULL where not typed), then per tracking detail */
#define BATCH_EVENT_ARRAYS 11
#define BATCH_ARRAYS (BATCH_EVENT_ARRAYS + PGARR_SNAPSHOT)
#define BATCH_NPARAMS (BATCH_ARRAYS + 1)
#define BATCH_FLAG BATCH_EVENT_ARRAYS /* the parameter p_defer */
#define RETRY_MAX 3 /* deadlock or serialization failure: sent again at most this often */
/* While a batch is in flight, another connection waits for LINGER_FILL events
 * or LINGER_US, whichever comes first: under load more events share a commit
 * (PostgreSQL's cost per batch is about that of several events); with nothing
 * in flight a batch leaves at once, so a quiet daemon adds no latency. */
#define LINGER_US 2000
#define LINGER_FILL 16

/* What became of a batch; see the top of the file. */
enum batch_outcome {
        BATCH_COMMITTED,    /* each event answered by its outcome row */
        BATCH_UNAVAILABLE,  /* not committed through no event's fault: 503 to all */
        BATCH_RETRY,        /* deadlock or serialization failure: sent again as it was */
        BATCH_NO_PARTITION, /* its one event's row had no partition: 503 */
        BATCH_SPLIT,        /* failed on some event's data: each event sent again alone */
        BATCH_DEAD_LETTER,  /* its one event failed: sent again to be stored raw */
        BATCH_DEAD_REFUSED, /* even the raw store of that event failed: 503 */
};

struct batch {
        struct db_seg seg; /* first: db_conn hands it back */
        struct ingest *g;
        struct ingest_item **items;
        unsigned n, nres;
        bool limits; /* the connection's limits statement went first: its row is not an outcome */
        bool nopart; /* a row had no partition: not the event's fault, never a dead letter */
        char sqlstate[6]; /* the first error's, "" without one */
        char *errmsg;     /* the first error's message, NULL without one */
};

struct ingest {
        struct event_base *base;
        struct db_conn **conns;
        unsigned nconn;
        struct ingest_item *head, *tail; /* pending, in arrival order */
        unsigned npending;
        unsigned depth;                  /* submitted and not yet done */
        unsigned limit, batch_max;
        size_t batch_bytes;              /* bodies per batch at most (one larger goes alone) */
        bool defer;
        bool closed;                     /* ingest_close: no connection, no room */
        void (*on_pending)(void *arg);
        ingest_typed_fn on_typed;
        void *on_pending_arg;
        struct event *kick;
        struct event *linger;            /* a held batch's deadline */
        struct pgarr arr[BATCH_ARRAYS];  /* the parameters of the batch being sent */
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
        g->batch_bytes = INGEST_BATCH_BYTES_DEFAULT;
        g->conns = xcalloc(nconn, sizeof(*g->conns));
        for (unsigned i = 0; i < nconn; i++) {
                snprintf(name, sizeof(name), "ingest-%u", i);
                g->conns[i] = db_conn_new(base, conninfo, name, &hooks, g);
        }
        g->kick = event_new(base, -1, 0, kick_cb, g);
        g->linger = evtimer_new(base, kick_cb, g);
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
ingest_on_typed(struct ingest *g, ingest_typed_fn fn)
{
        g->on_typed = fn;
}

void
ingest_set_db_timeout(struct ingest *g, unsigned ms)
{
        for (unsigned i = 0; i < g->nconn; i++)
                db_conn_set_timeout(g->conns[i], ms);
}

void
ingest_set_batch_max(struct ingest *g, unsigned batch_max)
{
        g->batch_max = batch_max;
}

void
ingest_set_batch_bytes(struct ingest *g, size_t bytes)
{
        g->batch_bytes = bytes;
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
                g->stats.events[metrics_desc_index(it->ev.description)]
                               [strcmp(it->status, "failed") == 0 ? OUT_FAILED : OUT_STORED]++;
                break;
        case INGEST_DUPLICATE:
                g->stats.duplicates++;
                g->stats.events[metrics_desc_index(it->ev.description)][OUT_DUPLICATE]++;
                break;
        case INGEST_UNAVAILABLE:
                g->stats.unavailable++;
                g->stats.events[metrics_desc_index(it->ev.description)][OUT_UNAVAILABLE]++;
                break;
        }
        it->next = NULL;
        it->done(it, r);
}

void
ingest_close(struct ingest *g)
{
        if (g == NULL || g->closed)
                return;
        g->closed = true;
        event_del(g->kick);
        event_del(g->linger);
        for (unsigned i = 0; i < g->nconn; i++)
                db_conn_free(g->conns[i]); /* in-flight batches come back as lost */
        g->nconn = 0;
        while (g->head) {
                struct ingest_item *it = g->head;
                g->head = it->next;
                g->npending--;
                item_finish(g, it, INGEST_UNAVAILABLE);
        }
        g->tail = NULL;
}

void
ingest_free(struct ingest *g)
{
        if (g == NULL)
                return;
        ingest_close(g);
        event_free(g->kick);
        event_free(g->linger);
        for (int k = 0; k < BATCH_ARRAYS; k++)
                free(g->arr[k].buf);
        free(g->conns);
        free(g);
}

bool
ingest_has_room(const struct ingest *g)
{
        return !g->closed && g->depth < g->limit;
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
        it->queued_us = clock_mono_us();
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

/* check_violation without a constraint name ("no partition of relation ...
 * found for row", in whatever lc_messages): a row's partition key has no
 * partition. Both keys are times the daemon sets (received_at, the tracker's
 * first write), so this happens only when the upkeep has not made the
 * current month (not run for three months). The event is answered 503
 * (EasyPost retries) rather than stored as failed. A CHECK or domain
 * constraint names itself. */
#define PARTITION_MISSING_REPORT_US (60 * 1000000ULL)

bool
ingest_partition_missing(const struct ingest *g)
{
        uint64_t at = g->stats.partition_missing_us;

        return at != 0 && clock_mono_us() - at < PARTITION_MISSING_REPORT_US;
}

/* Errors that one event's data causes: isolate it, keep its neighbours. */
static bool
sqlstate_is_events(const char *st)
{
        static const char *const classes[] = { "22", "23", "54", "P0", "2F", "38", "39",
                                               "09", "21", "44" };
        for (size_t i = 0; i < ARRAY_LEN(classes); i++)
                if (strncmp(st, classes[i], 2) == 0)
                        return true;
        /* Not query_canceled (57014): a statement_timeout or a cancel stops a
         * batch that waited on a lock, or a server too slow for the moment.
         * Its events are answered 503 and come again; as dead letters they
         * would be stored unprojected and their redeliveries answered
         * "duplicate". No event's data makes a batch take seconds: bodies
         * are bounded (max_body_bytes). */
        return false;
}

static bool
batch_result(struct db_seg *s, PGresult *res)
{
        struct batch *b = (struct batch *)s;

        b->nres++;
        if (b->limits && b->nres == 1 && PQresultStatus(res) == PGRES_TUPLES_OK)
                return false;
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
                for (int r = 0; r < PQntuples(res); r++) {
                        long ord = strtol(PQgetvalue(res, r, 0), NULL, 10);
                        if (ord >= 1 && ord <= (long)b->n)
                                snprintf(b->items[ord - 1]->status, sizeof(b->items[0]->status),
                                         "%s", PQgetvalue(res, r, 1));
                }
                return false;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_ABORTED || b->errmsg)
                return false;
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", st ? st : "XX000");
        b->nopart = strcmp(b->sqlstate, "23514") == 0 &&
                    PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) == NULL;
        b->errmsg = xstrdup(msg ? msg : "unknown error");
        return false;
}

/* A batch failed because of one of its events, or a deadlock: everything
 * goes back to the front of the queue, in order. */
static void
batch_requeue(struct ingest *g, struct batch *b)
{
        requeue_front(g, b);
        b->n = 0;
        kick(g);
}

/* The one place that decides what became of a batch (lost: no Sync came). */
static enum batch_outcome
batch_outcome(const struct batch *b, bool lost)
{
        if (lost)
                return BATCH_UNAVAILABLE;
        if (b->errmsg == NULL) {
                /* every event must have its outcome row */
                for (unsigned i = 0; i < b->n; i++)
                        if (b->items[i]->status[0] == '\0') {
                                log_err("ingest", "batch of %u: no outcome for event %s: answering 503",
                                        b->n, b->items[i]->ev.id);
                                return BATCH_UNAVAILABLE;
                        }
                return BATCH_COMMITTED;
        }
        if (strcmp(b->sqlstate, "40P01") == 0 || strcmp(b->sqlstate, "40001") == 0)
                return BATCH_RETRY;
        if (!sqlstate_is_events(b->sqlstate))
                return BATCH_UNAVAILABLE;
        if (b->nopart && b->n == 1)
                return BATCH_NO_PARTITION;
        if (b->n > 1)
                return BATCH_SPLIT;
        return b->items[0]->dead_error ? BATCH_DEAD_REFUSED : BATCH_DEAD_LETTER;
}

static void
batch_done(struct db_seg *s, bool lost)
{
        struct batch *b = (struct batch *)s;
        struct ingest *g = b->g;
        struct ingest_item *bad = b->items[0]; /* the one event of a batch of one */
        bool pending = false;
        unsigned kept = 0;

        switch (batch_outcome(b, lost)) {
        case BATCH_COMMITTED:
                for (unsigned i = 0; i < b->n; i++) {
                        struct ingest_item *it = b->items[i];
                        if (strcmp(it->status, "pending") == 0) {
                                pending = true;
                                /* the snapshot the scanner made, for the projector: typed
                                 * exactly as this item would have sent it inline */
                                if (g->on_typed && !it->dead_error && !it->ev.clean && it->ev.trk) {
                                        g->on_typed(g->on_pending_arg, it->uuid, it->ev.object_id, it->ev.trk);
                                        it->ev.trk = NULL;
                                }
                        }
                        item_finish(g, it, strcmp(it->status, "duplicate") == 0
                                                   ? INGEST_DUPLICATE
                                                   : INGEST_STORED);
                }
                if (pending && g->on_pending)
                        g->on_pending(g->on_pending_arg);
                break;
        case BATCH_UNAVAILABLE:
                if (!lost && b->errmsg)
                        log_warn("ingest", "batch of %u failed (%s): %s", b->n, b->sqlstate,
                                 b->errmsg);
                for (unsigned i = 0; i < b->n; i++)
                        item_finish(g, b->items[i], INGEST_UNAVAILABLE);
                break;
        case BATCH_RETRY:
                g->stats.retries++;
                for (unsigned i = 0; i < b->n; i++) {
                        struct ingest_item *it = b->items[i];
                        if (++it->retries > RETRY_MAX)
                                item_finish(g, it, INGEST_UNAVAILABLE);
                        else
                                b->items[kept++] = it;
                }
                log_warn("ingest", "batch of %u: %s (%s); sending %u again", b->n, b->errmsg,
                         b->sqlstate, kept);
                b->n = kept;
                batch_requeue(g, b);
                break;
        case BATCH_NO_PARTITION:
                g->stats.partition_missing++;
                g->stats.partition_missing_us = clock_mono_us();
                log_err("ingest", "event %s not stored: %s; answering 503 until the partition is "
                        "made (easypost-syncd --migrate, or the next analytics tick)",
                        b->items[0]->ev.id, b->errmsg);
                item_finish(g, b->items[0], INGEST_UNAVAILABLE);
                break;
        case BATCH_SPLIT:
                /* one of them did it: each goes alone, so only that one fails */
                log_warn("ingest", "batch of %u failed on an event's data (%s): %s; "
                         "sending its events one by one", b->n, b->sqlstate, b->errmsg);
                for (unsigned i = 0; i < b->n; i++)
                        b->items[i]->solo = true;
                g->stats.poison_splits++;
                batch_requeue(g, b);
                break;
        case BATCH_DEAD_LETTER: {
                log_warn("ingest", "event %s refused (%s): %s; storing it as failed",
                         bad->ev.id, b->sqlstate, b->errmsg);
                size_t n = strlen(b->sqlstate) + strlen(b->errmsg) + 4;
                bad->dead_error = xmalloc(n);
                snprintf(bad->dead_error, n, "%s: %s", b->sqlstate, b->errmsg);
                batch_requeue(g, b);
                break;
        }
        case BATCH_DEAD_REFUSED:
                /* even the raw store failed: nothing more we can do now */
                log_err("ingest", "dead letter %s not stored (%s): %s", bad->ev.id, b->sqlstate,
                        b->errmsg);
                item_finish(g, bad, INGEST_UNAVAILABLE);
                break;
        }
        batch_free(b);
}

static const char *
source_name(enum ingest_source s)
{
        return s == INGEST_BACKFILL ? "backfill" : "webhook";
}

/* The typed snapshot the item sends, or NULL: its body is parsed by
 * PostgreSQL. Deferred, none is sent: the batch stores tracker events
 * 'pending', and after its commit the snapshot goes to the projector
 * (on_typed), which sends it with the projection it is for. */
static const struct eptracker *
item_tracker(const struct ingest *g, const struct ingest_item *it)
{
        return g->defer || it->dead_error || it->ev.clean ? NULL : it->ev.trk;
}

/* The element types of the batch's arrays, in parameter order (flag skipped). */
static Oid
arr_elem(int k)
{
        if (k < BATCH_EVENT_ARRAYS)
                return k == 0 ? PGARR_UUIDOID : PGARR_TEXTOID;
        return pgarr_snapshot_elem(k - BATCH_EVENT_ARRAYS);
}

/* Builds the batch's parameters from its items: arrays in binary, then the flag. */
static void
batch_params(const struct batch *b, struct pgarr arr[BATCH_ARRAYS])
{
        unsigned ndetails = 0;

        for (unsigned i = 0; i < b->n; i++) {
                const struct eptracker *t = item_tracker(b->g, b->items[i]);
                ndetails += t ? (unsigned)t->nd : 0;
        }
        for (int k = 0; k < BATCH_EVENT_ARRAYS; k++)
                pgarr_begin(&arr[k], arr_elem(k), b->n);
        pgarr_snapshot_begin(&arr[BATCH_EVENT_ARRAYS], b->n, ndetails);
        for (unsigned i = 0; i < b->n; i++) {
                const struct ingest_item *it = b->items[i];
                pgarr_uuid(&arr[0], it->uuid);
                pgarr_str(&arr[1], it->ev.id);
                pgarr_str(&arr[2], it->ev.description);
                pgarr_str(&arr[3], it->ev.mode[0] ? it->ev.mode : NULL);
                pgarr_str(&arr[4], it->ev.object_id[0] ? it->ev.object_id : NULL);
                pgarr_add(&arr[5], it->body, it->len);
                pgarr_str(&arr[6], source_name(it->source));
                /* a dead letter keeps nothing that might have broken it */
                pgarr_str(&arr[7], it->ev.created_at[0] && !it->dead_error ? it->ev.created_at : NULL);
                pgarr_str(&arr[8], it->dead_error ? NULL : it->ev.clean);
                pgarr_str(&arr[9], it->dead_error);
                pgarr_str(&arr[10], it->partial ? "t" : NULL);
                /* the event's position: its snapshot's key */
                pgarr_snapshot_add(&arr[BATCH_EVENT_ARRAYS], i + 1, item_tracker(b->g, it));
        }
}

/* What an item adds to its batch's parameters: its body, its cleaned copy,
 * its dead-letter error, and the short fields (ids, names, times). */
static size_t
item_bytes(const struct ingest *g, const struct ingest_item *it)
{
        const struct eptracker *t = item_tracker(g, it);

        return it->len + (it->ev.clean ? strlen(it->ev.clean) : 0) +
               (it->dead_error ? strlen(it->dead_error) : 0) + 512 +
               (t ? t->used + t->nd * 80 : 0);
}

/* Sends one batch on c. Returns false if the connection failed meanwhile. */
static bool
send_batch(struct ingest *g, struct db_conn *c)
{
        unsigned n = 0;
        struct batch *b = xcalloc(1, sizeof(*b));
        PGconn *pq = db_conn_pq(c);
        Oid types[BATCH_NPARAMS];
        int formats[BATCH_NPARAMS];

        /* an item under suspicion goes alone; the others as many as allowed,
         * by count and by bytes (the first always goes, however large) */
        if (g->head->solo) {
                n = 1;
        } else {
                size_t bytes = 0;
                for (struct ingest_item *it = g->head; it && n < g->batch_max && !it->solo;
                     it = it->next) {
                        size_t ib = item_bytes(g, it);
                        if (n > 0 && (bytes >= g->batch_bytes || ib > g->batch_bytes - bytes)) {
                                g->stats.batch_byte_cuts++;
                                break;
                        }
                        bytes += ib;
                        n++;
                }
        }
        b->seg.on_result = batch_result;
        b->seg.on_done = batch_done;
        b->g = g;
        b->items = xmalloc(n * sizeof(*b->items));
        for (unsigned i = 0; i < n; i++) {
                struct ingest_item *it = g->head;
                g->head = it->next;
                if (g->head == NULL)
                        g->tail = NULL;
                g->npending--;
                it->next = NULL;
                it->status[0] = '\0';
                b->items[b->n++] = it;
        }
        g->stats.batches++;
        g->stats.batch_events += n;
        unsigned bucket = 0;
        for (unsigned lim = 1; bucket < 7 && n > lim; bucket++)
                lim = lim < 4 ? lim * 2 : lim * 4;
        g->stats.batch_size_buckets[bucket]++;

        struct pgarr *arr = g->arr;
        batch_params(b, arr);
        const char *v[BATCH_NPARAMS];
        int lens[BATCH_NPARAMS] = { 0 };
        for (int k = 0; k < BATCH_ARRAYS; k++) {
                int p = k < BATCH_FLAG ? k : k + 1;
                v[p] = arr[k].buf;
                lens[p] = (int)arr[k].len;
                types[p] = pgarr_type(arr_elem(k));
                formats[p] = 1;
        }
        v[BATCH_FLAG] = g->defer ? "t" : "f";
        types[BATCH_FLAG] = 0;
        formats[BATCH_FLAG] = 0;
        /* the connection's statement_timeout for this transaction first, so
         * that PostgreSQL itself ends a batch stuck on a lock (503, the
         * connection kept) before the deadline drops the connection and
         * leaves the statement running on a server backend; then the batch,
         * an unnamed statement: nothing outlives it (PgBouncer-safe) */
        int lim = db_conn_send_limits(c);
        b->limits = lim > 0;
        int ok = lim >= 0 && PQsendQueryParams(pq, SQL_BATCH, BATCH_NPARAMS, types, v, lens, formats, 0);
        for (int k = 0; k < BATCH_ARRAYS; k++)
                pgarr_trim(&arr[k]);
        /* pushed either way: a failure hands every item back through batch_done(lost) */
        db_conn_push(c, &b->seg);
        if (!ok) {
                if (db_conn_ready(c))
                        db_conn_fail(c, "send");
                return false;
        }
        return db_conn_ready(c);
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
        struct ingest *g = arg;

        (void)fd;
        (void)what;
        unsigned busy = ingest_conns_busy(g);
        for (unsigned i = 0; i < g->nconn && g->npending > 0; i++) {
                struct db_conn *c = g->conns[i];
                if (!db_conn_ready(c) || db_conn_inflight(c) > 0)
                        continue;
                if (busy > 0 && g->npending < LINGER_FILL && !g->head->solo) {
                        uint64_t waited = clock_mono_us() - g->head->queued_us;
                        if (waited < LINGER_US) {
                                struct timeval tv = { 0, (suseconds_t)(LINGER_US - waited) };
                                event_add(g->linger, &tv);
                                break;
                        }
                }
                send_batch(g, c);
                busy++;
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

static void
render_events(const struct ingest_stats *st, struct strbuf *b)
{
        strbuf_printf(b, "# HELP easypost_sync_events_total Events answered, by description and outcome "
                         "(failed = stored with an error, e.g. a dead letter).\n"
                         "# TYPE easypost_sync_events_total counter\n");
        for (int i = 0; i < METRICS_NDESC; i++)
                for (int o = 0; o < OUT_COUNT; o++)
                        if (st->events[i][o] || i == METRICS_NDESC - 1)
                                strbuf_printf(b, "easypost_sync_events_total{description=\"%s\",outcome=\"%s\"} %llu\n",
                                              metrics_desc_name(i), metrics_outcome_name((enum metrics_outcome)o),
                                              (unsigned long long)st->events[i][o]);
        strbuf_printf(b, "# HELP easypost_sync_dead_letters_total Events that broke their batch, stored raw.\n"
                         "# TYPE easypost_sync_dead_letters_total counter\n"
                         "easypost_sync_dead_letters_total %llu\n",
                      (unsigned long long)st->dead_letters);
}

static void
render_batches(const struct ingest_stats *st, struct strbuf *b)
{
        static const char *const bs_le[8] = { "1", "2", "4", "16", "64", "256", "1024", "+Inf" };
        uint64_t cum = 0;

        strbuf_printf(b, "# HELP easypost_sync_batches_total Transactions committed or tried.\n"
                         "# TYPE easypost_sync_batches_total counter\n"
                         "easypost_sync_batches_total %llu\n",
                      (unsigned long long)st->batches);
        strbuf_printf(b, "# HELP easypost_sync_batch_events Events per batch.\n"
                         "# TYPE easypost_sync_batch_events histogram\n");
        for (int i = 0; i < 8; i++) {
                cum += st->batch_size_buckets[i];
                strbuf_printf(b, "easypost_sync_batch_events_bucket{le=\"%s\"} %llu\n", bs_le[i],
                              (unsigned long long)cum);
        }
        strbuf_printf(b, "easypost_sync_batch_events_sum %llu\neasypost_sync_batch_events_count %llu\n",
                      (unsigned long long)st->batch_events, (unsigned long long)st->batches);
}

void
ingest_render_metrics(const struct ingest *g, struct strbuf *b)
{
        const struct ingest_stats *st = &g->stats;

        render_events(st, b);
        strbuf_printf(b, "# HELP easypost_sync_batch_isolations_total Batches that failed on one event's "
                         "data and were sent again one event at a time.\n"
                         "# TYPE easypost_sync_batch_isolations_total counter\n"
                         "easypost_sync_batch_isolations_total %llu\n"
                         "# HELP easypost_sync_batch_retries_total Batches sent again after a deadlock or "
                         "serialization failure.\n"
                         "# TYPE easypost_sync_batch_retries_total counter\n"
                         "easypost_sync_batch_retries_total %llu\n"
                         "# HELP easypost_sync_batch_byte_limited_total Batches closed by "
                         "batch_max_bytes with events still waiting.\n"
                         "# TYPE easypost_sync_batch_byte_limited_total counter\n"
                         "easypost_sync_batch_byte_limited_total %llu\n",
                      (unsigned long long)st->poison_splits, (unsigned long long)st->retries,
                      (unsigned long long)st->batch_byte_cuts);
        strbuf_printf(b, "# HELP easypost_sync_partition_missing_total Events answered 503 because a "
                         "row of theirs had no partition yet.\n"
                         "# TYPE easypost_sync_partition_missing_total counter\n"
                         "easypost_sync_partition_missing_total %llu\n",
                      (unsigned long long)st->partition_missing);
        strbuf_printf(b, "# HELP easypost_sync_queue_depth Webhooks waiting for a commit.\n"
                         "# TYPE easypost_sync_queue_depth gauge\n"
                         "easypost_sync_queue_depth %u\n"
                         "# HELP easypost_sync_queue_limit Queue capacity.\n"
                         "# TYPE easypost_sync_queue_limit gauge\n"
                         "easypost_sync_queue_limit %u\n",
                      ingest_depth(g), ingest_limit(g));
        strbuf_printf(b, "# HELP easypost_sync_db_connections Ingest connections by state.\n"
                         "# TYPE easypost_sync_db_connections gauge\n"
                         "easypost_sync_db_connections{state=\"configured\"} %u\n"
                         "easypost_sync_db_connections{state=\"up\"} %u\n"
                         "easypost_sync_db_connections{state=\"busy\"} %u\n"
                         "# HELP easypost_sync_db_reconnects_total Reconnections after a loss.\n"
                         "# TYPE easypost_sync_db_reconnects_total counter\n"
                         "easypost_sync_db_reconnects_total %lu\n",
                      ingest_conns(g), ingest_conns_ready(g), ingest_conns_busy(g), ingest_reconnects(g));
        render_batches(st, b);
}
