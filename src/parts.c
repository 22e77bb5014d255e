/*
 * parts.c - partition maintenance, one run per analytics slot:
 *
 *   eps_partitions_maintain (one transaction: elects this replica, makes the
 *     partitions ahead, lists those past their retention)
 *   -> for each listed: ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY
 *      (or FINALIZE, for one a previous run left half detached), then
 *      DROP TABLE, each its own statement outside any transaction block
 *   -> eps_partitions_create (the empty lowest history partition again)
 *
 * DETACH ... CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on the parent, so
 * inserts never wait for it; the DROP then touches only the detached table.
 * A detach that fails (the connection lost, a timeout) is finished by the
 * next run. One run at a time per object.
 *
 * Beside it, on the same connection: eps_sync_jobs_prune deletes the sync
 * jobs past their retention, PRUNE_BATCH per statement (row locks on one
 * batch at a time), PRUNE_MAX_BATCHES per slot; the rest waits for the next.
 */
#include "parts.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "db_migrate.h"
#include "log.h"
#include "util.h"

#define PARTS_MAX 32
#define NAME_MAX_LEN 140 /* a quoted identifier (63 bytes, doubled quotes) */
#define PRUNE_BATCH "1000"
#define PRUNE_MAX_BATCHES 100

struct parts {
        struct db_conn *conn; /* borrowed */
        char *instance_id;
        long event_days, history_days, dead_letter_days, job_days;
        bool busy;
        bool pruning;      /* a batch of eps_sync_jobs_prune in flight */
        unsigned batches;  /* of this slot */
        long long pruned;  /* jobs deleted this slot */
        unsigned n, at;
        bool dropping; /* at's DETACH is done: its DROP is in flight */
        struct {
                char parent[NAME_MAX_LEN], part[NAME_MAX_LEN];
                bool finalize;
        } todo[PARTS_MAX];
};

static void step(struct parts *p);

static bool
result_ok(PGresult *res, const char *what)
{
        if (res == NULL) {
                log_warn("parts", "%s: connection lost; the next run goes on", what);
                return false;
        }
        if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
                msg[strcspn(msg, "\n")] = '\0';
                log_warn("parts", "%s: %s", what, msg);
                return false;
        }
        return true;
}

static void
created_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (result_ok(res, "making partitions"))
                for (int i = 0; i < PQntuples(res); i++)
                        log_info("parts", "partition %s created", PQgetvalue(res, i, 0));
        p->busy = false;
}

static void
step_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (res == NULL) {
                result_ok(res, p->todo[p->at].part);
                p->busy = false;
                return;
        }
        if (!result_ok(res, p->todo[p->at].part)) {
                p->at++; /* not detached: keep it, go on with the others */
                p->dropping = false;
        } else if (!p->dropping) {
                p->dropping = true;
        } else {
                log_info("parts", "partition %s dropped (retention)", p->todo[p->at].part);
                p->at++;
                p->dropping = false;
        }
        step(p);
}

static void
step(struct parts *p)
{
        char sql[3 * NAME_MAX_LEN + 64];
        int rc;

        if (p->at >= p->n) {
                rc = db_conn_query(p->conn, "SELECT eps_partitions_create(" DB_PARTITIONS_AHEAD ")",
                                   0, NULL, created_done, p);
        } else {
                if (p->dropping)
                        snprintf(sql, sizeof(sql), "DROP TABLE %s", p->todo[p->at].part);
                else
                        snprintf(sql, sizeof(sql), "ALTER TABLE %s DETACH PARTITION %s %s",
                                 p->todo[p->at].parent, p->todo[p->at].part,
                                 p->todo[p->at].finalize ? "FINALIZE" : "CONCURRENTLY");
                rc = db_conn_query(p->conn, sql, 0, NULL, step_done, p);
        }
        if (rc != 0) {
                log_warn("parts", "database unavailable: partition upkeep left for the next run");
                p->busy = false;
        }
}

static void
maintain_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        p->n = p->at = 0;
        p->dropping = false;
        if (!result_ok(res, "partition upkeep")) {
                p->busy = false;
                return;
        }
        for (int i = 0; i < PQntuples(res); i++) {
                const char *parent = PQgetvalue(res, i, 0), *part = PQgetvalue(res, i, 1);
                const char *action = PQgetvalue(res, i, 2);
                if (strcmp(action, "created") == 0) {
                        log_info("parts", "partition %s created", part);
                        continue;
                }
                if (p->n == PARTS_MAX || strlen(parent) >= NAME_MAX_LEN ||
                    strlen(part) >= NAME_MAX_LEN)
                        continue; /* the next run takes it */
                snprintf(p->todo[p->n].parent, NAME_MAX_LEN, "%s", parent);
                snprintf(p->todo[p->n].part, NAME_MAX_LEN, "%s", part);
                p->todo[p->n].finalize = strcmp(action, "finalize") == 0;
                p->n++;
        }
        if (p->n == 0) {
                p->busy = false;
                return;
        }
        step(p);
}

static void
set(struct parts *p, const struct parts_settings *st)
{
        free(p->instance_id);
        p->instance_id = xstrdup(st->instance_id);
        p->event_days = st->event_retention_days;
        p->history_days = st->history_retention_days;
        p->dead_letter_days = st->dead_letter_retention_days;
        p->job_days = st->sync_job_retention_days;
}

struct parts *
parts_new(struct db_conn *c, const struct parts_settings *st)
{
        struct parts *p = xcalloc(1, sizeof(*p));

        p->conn = c;
        set(p, st);
        return p;
}

void
parts_reload(struct parts *p, const struct parts_settings *st)
{
        set(p, st);
}

void
parts_free(struct parts *p)
{
        if (p == NULL)
                return;
        free(p->instance_id);
        free(p);
}

static void prune(struct parts *p, const char *slot);

static void
pruned(PGresult *res, void *arg)
{
        struct parts *p = arg;
        bool more = false;

        if (result_ok(res, "deleting old sync jobs") && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
                long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                p->pruned += n;
                more = n == atoll(PRUNE_BATCH) && ++p->batches < PRUNE_MAX_BATCHES;
        }
        if (more) {
                prune(p, NULL);
                return;
        }
        if (p->pruned > 0)
                log_info("parts", "%lld sync jobs deleted (retention %ld days)", p->pruned, p->job_days);
        p->pruning = false;
}

/* One batch; slot NULL: the next batch of the slot this replica was elected for. */
static void
prune(struct parts *p, const char *slot)
{
        char days[24];
        const char *vals[2] = { slot, days };

        snprintf(days, sizeof(days), "%ld", p->job_days);
        p->pruning = db_conn_query(p->conn, "SELECT eps_sync_jobs_prune($1::bigint, $2::int, " PRUNE_BATCH ")",
                                   2, vals, pruned, p) == 0;
}

void
parts_tick(struct parts *p, long long slot, long long start_s)
{
        char tick[32], start[32], ev[24], hist[24], dead[24];
        const char *vals[5] = { tick, p->instance_id, ev, hist, dead };

        if (p->busy)
                return;
        snprintf(tick, sizeof(tick), "%lld", slot);
        snprintf(ev, sizeof(ev), "%ld", p->event_days);
        snprintf(hist, sizeof(hist), "%ld", p->history_days);
        snprintf(dead, sizeof(dead), "%ld", p->dead_letter_days);
        if (db_conn_query(p->conn, "SELECT parent, part, action FROM eps_partitions_maintain($1::bigint, $2,"
                             " $3::int, $4::int, $5::int)",
                          5, vals, maintain_done, p) == 0)
                p->busy = true;
        if (!p->pruning && p->job_days > 0) {
                p->batches = 0;
                p->pruned = 0;
                snprintf(start, sizeof(start), "%lld", start_s);
                prune(p, start);
        }
}
