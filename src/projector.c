/*
 * projector.c - deferred projection: events ingest left pending (their keys
 * in projection_queue) are projected after their commit, in batches.
 *
 *   kicked by ingest after a commit that left events pending, and every
 *   second; runs batches back to back until there is nothing left
 *
 * Two kinds of batch. Ingest hands over the typed snapshot its scanner made
 * of each pending tracker event (ingest_on_typed): those wait here, in
 * arrival order, and go as eps_project_typed, which takes their keys and
 * projects the snapshots: no raw row read, no JSON parsed. What has no
 * snapshot here (after a restart, from another replica, the oldest beyond
 * HOLD_MAX / HOLD_BYTES, a batch lost with its connection or one whose
 * projection raised) is taken from the queue by eps_project_pending, oldest
 * first, from the raw rows. A key is taken once, by whichever batch locks it, so
 * each event is projected once. The SQL kind runs when no snapshot waits,
 * or every other batch while its last batch came back full.
 *
 * Every event a batch takes leaves the queue, projected or failed (a dead
 * letter with its error): none is taken twice, so a poison event neither
 * blocks the ones behind it nor keeps the projector busy. The projected
 * counter counts what was projected, not what was taken.
 */
#include "projector.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "log.h"
#include "metrics.h"
#include "pgarr.h"
#include "util.h"

#define PROJECT_BATCH 200 /* events per projector transaction */
#define PROJECT_POLL_S 1
/* Snapshots kept for the typed batches; past either bound the oldest are
 * dropped (their events wait in the queue for the SQL batches). A few
 * batches' worth: the projector takes them as fast as it can in any case. */
#define HOLD_MAX 1000
#define HOLD_BYTES (2u << 20)

static const char SQL_TYPED[] =
        "SELECT taken, projected FROM eps_project_typed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
        "$13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, d_location_text => $27)";
#define TYPED_EVENT_ARRAYS 2 /* the row ids, result.id */
#define TYPED_NPARAMS (TYPED_EVENT_ARRAYS + PGARR_SNAPSHOT)

/* A pending event's typed snapshot, handed over by ingest. */
struct held {
        struct held *next;
        char uuid[37];
        char object_id[EPEVENT_ID_MAX + 1];
        struct eptracker *trk; /* owned */
        size_t bytes;
};

struct projector {
        struct db_conn *conn;
        struct event *timer;
        bool projecting, again, stopped;
        bool sql_more;   /* the last SQL batch came back full: more wait in the queue */
        bool last_typed; /* the batch in flight (or the last one) is typed */
        struct held *head, *tail; /* waiting, in arrival order */
        unsigned nheld;
        size_t held_bytes;
        struct held *inflight; /* the typed batch in flight, freed when it ends */
        unsigned ninflight;
        struct pgarr arr[TYPED_NPARAMS];
        struct projector_stats stats;
};

static void run(struct projector *p);

static void
held_free(struct held *h)
{
        while (h) {
                struct held *next = h->next;
                eptracker_free(h->trk);
                free(h);
                h = next;
        }
}

/* Whether more work waits: snapshots, a queue that was full, a kick. */
static bool
more(const struct projector *p)
{
        return p->head != NULL || p->sql_more || p->again;
}

static void
done(PGresult *res, void *arg)
{
        struct projector *p = arg;
        int n = 0;
        bool typed = p->last_typed;

        p->projecting = false;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                /* taken, and of those projected; the rest failed (dead letters) */
                n = atoi(PQgetvalue(res, 0, 0));
                int projected = atoi(PQgetvalue(res, 0, 1));
                p->stats.projected += (uint64_t)projected;
                p->stats.failed += (uint64_t)(n - projected);
                if (typed)
                        p->stats.typed += (uint64_t)projected;
        } else if (res) {
                log_warn("projector", "projecting pending events failed: %s", PQresultErrorMessage(res));
        }
        if (typed) {
                /* what it did not take is in the queue still, or projected by another */
                if ((unsigned)n < p->ninflight)
                        p->sql_more = true;
                held_free(p->inflight);
                p->inflight = NULL;
                p->ninflight = 0;
        } else {
                p->sql_more = n == PROJECT_BATCH;
        }
        /* Back to back while work waits: the projector has a connection of
         * its own, and a projector that waited for quiet would fall behind
         * for good under a steady load (the backlog only grows while
         * webhooks keep coming). */
        if (!p->stopped && more(p))
                run(p);
}

/* Takes the n oldest snapshots (n <= nheld) off the waiting list. */
static struct held *
detach(struct projector *p, unsigned n)
{
        struct held *first = p->head, *last = first;

        for (unsigned i = 1; i < n; i++)
                last = last->next;
        for (struct held *h = first;; h = h->next) {
                p->held_bytes -= h->bytes;
                if (h == last)
                        break;
        }
        p->head = last->next;
        if (p->head == NULL)
                p->tail = NULL;
        last->next = NULL;
        p->nheld -= n;
        return first;
}

/* Sends the oldest snapshots (up to a batch) as eps_project_typed. */
static int
send_typed(struct projector *p)
{
        unsigned n = 0, nd = 0;
        struct held *h;

        for (h = p->head; h && n < PROJECT_BATCH; h = h->next, n++)
                nd += (unsigned)h->trk->nd;
        struct pgarr *a = p->arr;
        pgarr_begin(&a[0], PGARR_UUIDOID, n);
        pgarr_begin(&a[1], PGARR_TEXTOID, n);
        pgarr_snapshot_begin(&a[TYPED_EVENT_ARRAYS], n, nd);
        h = p->head;
        for (unsigned i = 0; i < n; i++, h = h->next) {
                pgarr_uuid(&a[0], h->uuid);
                pgarr_str(&a[1], h->object_id);
                pgarr_snapshot_add(&a[TYPED_EVENT_ARRAYS], i + 1, h->trk);
        }
        const char *v[TYPED_NPARAMS];
        int lens[TYPED_NPARAMS], fmts[TYPED_NPARAMS];
        Oid types[TYPED_NPARAMS];
        for (int k = 0; k < TYPED_NPARAMS; k++) {
                v[k] = a[k].buf;
                lens[k] = (int)a[k].len;
                fmts[k] = 1;
                types[k] = pgarr_type(k == 0 ? PGARR_UUIDOID
                                      : k == 1 ? PGARR_TEXTOID
                                               : pgarr_snapshot_elem(k - TYPED_EVENT_ARRAYS));
        }
        int rc = db_conn_query_bin(p->conn, SQL_TYPED, TYPED_NPARAMS, types, v, lens, fmts, done, p);
        for (int k = 0; k < TYPED_NPARAMS; k++)
                pgarr_trim(&a[k]);
        if (rc != 0)
                return rc;
        /* in flight: off the waiting list, freed when the batch ends */
        p->inflight = detach(p, n);
        p->ninflight = n;
        return 0;
}

static void
run(struct projector *p)
{
        char batch[16];
        snprintf(batch, sizeof(batch), "%d", PROJECT_BATCH);
        const char *vals[1] = { batch };

        p->again = false;
        if (p->projecting || p->stopped)
                return;
        /* typed first; the queue's own turn every other batch while it has more */
        bool typed = p->head != NULL && !(p->sql_more && p->last_typed);
        p->last_typed = typed;
        if (typed ? send_typed(p) == 0
                  : db_conn_query(p->conn, "SELECT taken, projected FROM eps_project_pending($1::int)", 1, vals,
                                  done, p) == 0)
                p->projecting = true;
}

/* Copies s into dst[cap], cut to fit (ids are shorter: checked on parse). */
static void
copy_id(char *dst, size_t cap, const char *s)
{
        size_t n = strnlen(s, cap - 1);
        memcpy(dst, s, n);
        dst[n] = '\0';
}

void
projector_take(void *arg, const char *uuid, const char *object_id, struct eptracker *trk)
{
        struct projector *p = arg;
        size_t bytes = eptracker_bytes(trk) + sizeof(struct held);

        if (p->stopped || bytes > HOLD_BYTES) {
                /* its key waits in the queue: a SQL batch takes it */
                eptracker_free(trk);
                p->stats.dropped++;
                p->sql_more = true;
                return;
        }
        /* Full: the oldest go. The SQL batches take the queue oldest first,
         * so what is kept here is what they reach last. */
        while (p->head && (p->nheld >= HOLD_MAX || p->held_bytes + bytes > HOLD_BYTES)) {
                held_free(detach(p, 1));
                p->stats.dropped++;
                p->sql_more = true;
        }
        struct held *h = xcalloc(1, sizeof(*h));
        copy_id(h->uuid, sizeof(h->uuid), uuid);
        copy_id(h->object_id, sizeof(h->object_id), object_id);
        h->trk = trk;
        h->bytes = bytes;
        if (p->tail)
                p->tail->next = h;
        else
                p->head = h;
        p->tail = h;
        p->nheld++;
        p->held_bytes += h->bytes;
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
        struct projector *p = arg;
        struct timeval tv = { PROJECT_POLL_S, 0 };

        (void)fd;
        (void)what;
        if (p->stopped)
                return;
        run(p); /* also picks up what another replica or a crash left */
        if (!evtimer_pending(p->timer, NULL))
                evtimer_add(p->timer, &tv);
}

void
projector_kick(void *arg)
{
        struct projector *p = arg;

        if (p->projecting)
                p->again = true;
        else
                run(p);
}

static const struct db_conn_hooks no_hooks = { 0 };

struct projector *
projector_new(struct event_base *base, const char *conninfo, unsigned db_timeout_ms)
{
        struct projector *p = xcalloc(1, sizeof(*p));

        p->conn = db_conn_new(base, conninfo, "projector", &no_hooks, p);
        db_conn_set_timeout(p->conn, db_timeout_ms);
        p->timer = evtimer_new(base, tick, p);
        return p;
}

void
projector_start(struct projector *p)
{
        struct timeval tv = { PROJECT_POLL_S, 0 };

        db_conn_start(p->conn);
        evtimer_add(p->timer, &tv);
}

void
projector_stop(struct projector *p)
{
        if (p == NULL)
                return;
        p->stopped = true;
        evtimer_del(p->timer);
}

void
projector_free(struct projector *p)
{
        if (p == NULL)
                return;
        p->stopped = true;
        db_conn_free(p->conn); /* in-flight callbacks run now, as lost */
        event_free(p->timer);
        held_free(p->head);
        held_free(p->inflight);
        for (int k = 0; k < TYPED_NPARAMS; k++)
                free(p->arr[k].buf);
        free(p);
}

void
projector_snapshot(const struct projector *p, struct projector_stats *out)
{
        memset(out, 0, sizeof(*out));
        if (p)
                *out = p->stats;
}

void
projector_render_metrics(const struct projector *p, struct strbuf *b)
{
        struct projector_stats ps;

        projector_snapshot(p, &ps);
        strbuf_printf(b, "# HELP easypost_sync_projected_deferred_total Events projected after their commit "
                         "(projection = deferred).\n"
                         "# TYPE easypost_sync_projected_deferred_total counter\n"
                         "easypost_sync_projected_deferred_total %llu\n",
                      (unsigned long long)ps.projected);
        strbuf_printf(b, "# HELP easypost_sync_projection_failed_deferred_total Events whose deferred "
                         "projection failed: stored 'failed' (dead letters), never taken again.\n"
                         "# TYPE easypost_sync_projection_failed_deferred_total counter\n"
                         "easypost_sync_projection_failed_deferred_total %llu\n",
                      (unsigned long long)ps.failed);
        strbuf_printf(b, "# HELP easypost_sync_projected_deferred_typed_total Of the deferred events projected, "
                         "those projected from the snapshot the daemon typed when it received them (the "
                         "others from their raw rows).\n"
                         "# TYPE easypost_sync_projected_deferred_typed_total counter\n"
                         "easypost_sync_projected_deferred_typed_total %llu\n",
                      (unsigned long long)ps.typed);
        strbuf_printf(b, "# HELP easypost_sync_projection_snapshots_dropped_total Typed snapshots of deferred "
                         "events not kept for the projector (more waiting than it holds): those events are "
                         "projected from their raw rows.\n"
                         "# TYPE easypost_sync_projection_snapshots_dropped_total counter\n"
                         "easypost_sync_projection_snapshots_dropped_total %llu\n",
                      (unsigned long long)ps.dropped);
}
