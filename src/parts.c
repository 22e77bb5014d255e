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
 * next run. One run at a time per process: its state is this file's.
 */
#include "parts.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cfg.h"
#include "db_conn.h"
#include "db_migrate.h"
#include "log.h"

#define PARTS_MAX 32
#define NAME_MAX_LEN 140 /* a quoted identifier (63 bytes, doubled quotes) */

static struct {
        bool busy;
        struct db_conn *conn;
        unsigned n, at;
        bool dropping; /* at's DETACH is done: its DROP is in flight */
        struct {
                char parent[NAME_MAX_LEN], part[NAME_MAX_LEN];
                bool finalize;
        } todo[PARTS_MAX];
} run;

static void step(void);

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
        (void)arg;
        if (result_ok(res, "making partitions"))
                for (int i = 0; i < PQntuples(res); i++)
                        log_info("parts", "partition %s created", PQgetvalue(res, i, 0));
        run.busy = false;
}

static void
step_done(PGresult *res, void *arg)
{
        (void)arg;
        if (res == NULL) {
                result_ok(res, run.todo[run.at].part);
                run.busy = false;
                return;
        }
        if (!result_ok(res, run.todo[run.at].part)) {
                run.at++; /* not detached: keep it, go on with the others */
                run.dropping = false;
        } else if (!run.dropping) {
                run.dropping = true;
        } else {
                log_info("parts", "partition %s dropped (retention)", run.todo[run.at].part);
                run.at++;
                run.dropping = false;
        }
        step();
}

static void
step(void)
{
        char sql[3 * NAME_MAX_LEN + 64];
        int rc;

        if (run.at >= run.n) {
                rc = db_conn_query(run.conn, "SELECT eps_partitions_create(" DB_PARTITIONS_AHEAD ")",
                                   0, NULL, created_done, NULL);
        } else {
                if (run.dropping)
                        snprintf(sql, sizeof(sql), "DROP TABLE %s", run.todo[run.at].part);
                else
                        snprintf(sql, sizeof(sql), "ALTER TABLE %s DETACH PARTITION %s %s",
                                 run.todo[run.at].parent, run.todo[run.at].part,
                                 run.todo[run.at].finalize ? "FINALIZE" : "CONCURRENTLY");
                rc = db_conn_query(run.conn, sql, 0, NULL, step_done, NULL);
        }
        if (rc != 0) {
                log_warn("parts", "database unavailable: partition upkeep left for the next run");
                run.busy = false;
        }
}

static void
maintain_done(PGresult *res, void *arg)
{
        (void)arg;
        run.n = run.at = 0;
        run.dropping = false;
        if (!result_ok(res, "partition upkeep")) {
                run.busy = false;
                return;
        }
        for (int i = 0; i < PQntuples(res); i++) {
                const char *parent = PQgetvalue(res, i, 0), *part = PQgetvalue(res, i, 1);
                const char *action = PQgetvalue(res, i, 2);
                if (strcmp(action, "created") == 0) {
                        log_info("parts", "partition %s created", part);
                        continue;
                }
                if (run.n == PARTS_MAX || strlen(parent) >= NAME_MAX_LEN ||
                    strlen(part) >= NAME_MAX_LEN)
                        continue; /* the next run takes it */
                snprintf(run.todo[run.n].parent, NAME_MAX_LEN, "%s", parent);
                snprintf(run.todo[run.n].part, NAME_MAX_LEN, "%s", part);
                run.todo[run.n].finalize = strcmp(action, "finalize") == 0;
                run.n++;
        }
        if (run.n == 0) {
                run.busy = false;
                return;
        }
        step();
}

void
parts_tick(struct db_conn *c, const struct cfg *cfg, long long slot, const char *instance)
{
        char tick[32], ev[24], hist[24], dead[24];
        const char *vals[5] = { tick, instance, ev, hist, dead };

        if (run.busy)
                return;
        snprintf(tick, sizeof(tick), "%lld", slot);
        snprintf(ev, sizeof(ev), "%ld", cfg->event_retention_days);
        snprintf(hist, sizeof(hist), "%ld", cfg->history_retention_days);
        snprintf(dead, sizeof(dead), "%ld", cfg->dead_letter_retention_days);
        run.conn = c;
        if (db_conn_query(c, "SELECT parent, part, action FROM eps_partitions_maintain($1::bigint, $2,"
                             " $3::int, $4::int, $5::int)",
                          5, vals, maintain_done, NULL) == 0)
                run.busy = true;
}
