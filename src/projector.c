/*
 * projector.c - deferred projection: events ingest left pending (their keys
 * in projection_queue) are projected after their commit, in batches of
 * eps_project_pending.
 *
 *   kicked by ingest after a commit that left events pending, and every
 *   second; runs batches back to back until one comes back short
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
#include "util.h"

#define PROJECT_BATCH 200 /* events per projector transaction */
#define PROJECT_POLL_S 1

struct projector {
        struct db_conn *conn;
        struct event *timer;
        bool projecting, again, stopped;
        struct projector_stats stats;
};

static void run(struct projector *p);

static void
done(PGresult *res, void *arg)
{
        struct projector *p = arg;
        int n = 0;

        p->projecting = false;
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                /* taken, and of those projected; the rest failed (dead letters) */
                n = atoi(PQgetvalue(res, 0, 0));
                int projected = atoi(PQgetvalue(res, 0, 1));
                p->stats.projected += (uint64_t)projected;
                p->stats.failed += (uint64_t)(n - projected);
        } else if (res) {
                log_warn("projector", "projecting pending events failed: %s", PQresultErrorMessage(res));
        }
        /* A full batch means more are waiting; so does a kick during the run.
         * Back to back: the projector has a connection of its own, and a
         * projector that waited for quiet would fall behind for good under a
         * steady load (the backlog only grows while webhooks keep coming). */
        if (!p->stopped && (n == PROJECT_BATCH || p->again))
                run(p);
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
        if (db_conn_query(p->conn, "SELECT taken, projected FROM eps_project_pending($1::int)", 1, vals, done, p) == 0)
                p->projecting = true;
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
}
