/*
 * replay.c - --replay: selects the stored events to project again (every
 * failed one, or one by its EasyPost id) and runs eps_replay() on each;
 * --replay queued projects what projection_queue holds, as the projector does.
 */
#include "replay.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "db_migrate.h"

/* Projects the event with internal id again; 1 when it still failed, 0 when projected, -1 on error. */
static int
replay_one(PGconn *pq, const char *id, struct err *e)
{
        const char *v[1] = { id };
        PGresult *r = PQexecParams(pq, "SELECT eps_replay($1::uuid)", 1, NULL, v, NULL, NULL, 0);
        int rc;

        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                err_set(e, -1, "replaying %s: %s", id, PQresultErrorMessage(r));
                rc = -1;
        } else {
                rc = strcmp(PQgetvalue(r, 0, 0), "failed") == 0;
        }
        PQclear(r);
        return rc;
}

/*
 * The queue's events, 200 a transaction through eps_project_pending (the
 * projector's own batch), until a batch takes none: what a deferred daemon
 * left for an inline one. Keys another projector holds are skipped, not
 * waited for; a poison event becomes a dead letter, as in the projector.
 */
static int
replay_queued(PGconn *pq, long *projected, long *failed, struct err *e)
{
        for (;;) {
                PGresult *r = PQexec(pq, "SELECT taken, projected FROM eps_project_pending(200)");
                if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                        err_set(e, -1, "projecting the queue: %s", PQresultErrorMessage(r));
                        PQclear(r);
                        return -1;
                }
                long taken = strtol(PQgetvalue(r, 0, 0), NULL, 10);
                long ok = strtol(PQgetvalue(r, 0, 1), NULL, 10);
                PQclear(r);
                if (taken <= 0)
                        return 0;
                *projected += ok;
                *failed += taken - ok;
        }
}

int
replay_run(const char *conninfo, const char *what, long *projected, long *failed, struct err *e)
{
        PGconn *pq = db_connect_blocking(conninfo, "easypost-syncd-replay", e);
        PGresult *ids = NULL;
        int rc = -1;

        *projected = *failed = 0;
        if (pq == NULL)
                return -1;
        if (strcmp(what, "queued") == 0) {
                rc = replay_queued(pq, projected, failed, e);
                PQfinish(pq);
                return rc;
        }
        const char *pv[1] = { what };
        if (strcmp(what, "failed") == 0)
                ids = PQexec(pq, "SELECT id FROM webhook_events WHERE status = 'failed' "
                                 "ORDER BY received_at, id");
        else
                ids = PQexecParams(pq, "SELECT id FROM webhook_events WHERE event_id = $1", 1,
                                   NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(ids) != PGRES_TUPLES_OK) {
                err_set(e, -1, "selecting events: %s", PQresultErrorMessage(ids));
                goto out;
        }
        if (strcmp(what, "failed") != 0 && PQntuples(ids) == 0) {
                err_set(e, -1, "no stored event with id %s", what);
                goto out;
        }
        for (int i = 0; i < PQntuples(ids); i++) {
                int r = replay_one(pq, PQgetvalue(ids, i, 0), e);
                if (r < 0)
                        goto out;
                if (r)
                        (*failed)++;
                else
                        (*projected)++;
        }
        rc = 0;
out:
        PQclear(ids);
        PQfinish(pq);
        return rc;
}
