/*
 * reproject.c - --reproject: drives eps_reproject_begin / eps_reproject_step
 * (sql/functions/85_reproject.sql) on one blocking connection, each step in
 * its own transaction (autocommit), until the run's phase is "done", and
 * reports progress. All the work and its cursor are in the database: killed
 * at any point, the next --reproject resumes after the last committed step.
 */
#include "reproject.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "db_migrate.h"

static long long
num(json_t *st, const char *key)
{
        json_t *v = json_object_get(st, key);

        return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

static void
totals_from(json_t *st, struct reproject_totals *t)
{
        t->trackers = num(st, "trackers");
        t->events = num(st, "events");
        t->history_deleted = num(st, "history_deleted");
        t->history_inserted = num(st, "history_inserted");
        t->refetch = num(st, "refetch");
        t->orphans = num(st, "orphans");
        t->objects = num(st, "objects");
        t->failed = num(st, "failed");
        t->kept = num(st, "kept");
}

/* The one jsonb value sql returns, parsed (NULL with err). */
static json_t *
query_state(PGconn *pq, const char *sql, const char *param, struct err *e)
{
        const char *v[1] = { param };
        PGresult *r = PQexecParams(pq, sql, param ? 1 : 0, NULL, v, NULL, NULL, 0);
        json_t *st = NULL;

        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                err_set(e, -1, "%s", PQresultErrorMessage(r));
                e->msg[strcspn(e->msg, "\n")] = '\0';
        } else {
                st = json_loads(PQgetvalue(r, 0, PQnfields(r) - 1), 0, NULL);
                if (st == NULL)
                        err_set(e, -1, "the run's state is not JSON");
        }
        PQclear(r);
        return st;
}

static long long
count_events(PGconn *pq)
{
        PGresult *r = PQexec(pq, "SELECT count(*) FROM webhook_events"
                                 " WHERE description IN ('tracker.created', 'tracker.updated')"
                                 " AND status IN ('projected', 'pending') AND NOT partial");
        long long n = 0;

        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
                n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        return n;
}

static void
progress_line(FILE *f, json_t *st, long long total_events)
{
        struct reproject_totals t;
        const char *phase = json_string_value(json_object_get(st, "phase"));

        totals_from(st, &t);
        fprintf(f, "reproject: %s: %lld tracker(s) rebuilt from %lld event(s)", phase ? phase : "?",
                t.trackers, t.events);
        if (total_events > 0 && phase && strcmp(phase, "trackers") == 0)
                fprintf(f, " (%lld%%)", t.events >= total_events ? 100 : t.events * 100 / total_events);
        fprintf(f, ", history %lld row(s) before, %lld after, %lld orphan(s) removed, "
                   "%lld other event(s), %lld failed\n",
                t.history_deleted, t.history_inserted, t.orphans, t.objects, t.failed);
        fflush(f);
}

int
reproject_run(const char *conninfo, int batch, FILE *progress, struct reproject_totals *t,
              struct err *e)
{
        PGconn *pq = db_connect_blocking(conninfo, "easypost-syncd-reproject", e);
        json_t *st = NULL;
        char bs[16], phase[16] = "";
        uint64_t last = 0;
        int rc = -1;

        memset(t, 0, sizeof(*t));
        if (pq == NULL)
                return -1;
        st = query_state(pq, "SELECT resumed, state FROM eps_reproject_begin()", NULL, e);
        if (st == NULL)
                goto out;
        long long total = count_events(pq);
        const char *c = json_string_value(json_object_get(st, "cursor"));
        const char *p0 = json_string_value(json_object_get(st, "phase"));
        if (num(st, "trackers") + num(st, "orphans") + num(st, "objects") > 0 || c != NULL)
                fprintf(progress, "reproject: resuming the run started %s at phase %s after %s\n",
                        json_string_value(json_object_get(st, "started_at")), p0 ? p0 : "?",
                        c ? c : "its start");
        else
                fprintf(progress, "reproject: rebuilding the projections from %lld stored tracker "
                                  "event(s) and the other events, %d per transaction\n",
                        total, batch);
        snprintf(bs, sizeof(bs), "%d", batch);
        for (;;) {
                json_decref(st);
                st = query_state(pq, "SELECT eps_reproject_step($1::integer)", bs, e);
                if (st == NULL)
                        goto out;
                const char *p = json_string_value(json_object_get(st, "phase"));
                bool done = p == NULL || strcmp(p, "done") == 0; /* the caller prints the totals */
                bool changed = p && strcmp(p, phase) != 0;
                if (!done && (changed || clock_mono_us() - last >= 1000000u)) {
                        progress_line(progress, st, total);
                        last = clock_mono_us();
                        snprintf(phase, sizeof(phase), "%s", p ? p : "");
                }
                if (done)
                        break;
        }
        totals_from(st, t);
        rc = 0;
out:
        json_decref(st);
        PQfinish(pq);
        return rc;
}
