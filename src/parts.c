/*
 * parts.c - partition upkeep, one run per analytics slot, on the analytics
 * connection:
 *
 *   IDLE --tick--> MAINTAIN (eps_partitions_maintain, one transaction:
 *     elects this replica, makes the partitions ahead, writes the partitions
 *     past their retention in the ledger, partition_drops, and lists every
 *     ledger entry with what is left to do for it)
 *   --> for each entry: DETACH (ALTER TABLE ... DETACH PARTITION ...
 *     CONCURRENTLY, or FINALIZE for one an earlier run left pending) -->
 *     DROP (DROP TABLE; an entry already detached starts here)
 *   --> SETTLE (eps_partitions_settle: forgets the entries whose table is
 *     gone and the event ids older than every raw events table left; reads
 *     the count of history rows with an absurd scan date, for the gauge)
 *   --> PRUNE (eps_sync_jobs_prune: the sync jobs past their retention,
 *     PRUNE_BATCH per statement, PRUNE_MAX_BATCHES per slot; the rest waits
 *     for the next) --> IDLE
 *
 * Every change of state goes through enter(); a run ends only by entering
 * IDLE, completed (why == NULL) or cut short (why says what). A replica
 * not elected gets no entry and goes straight to SETTLE. What a run leaves
 * unfinished (the connection lost, the daemon stopped between a DETACH and
 * its DROP) stays in the ledger and the next run finishes it.
 *
 * DETACH ... CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on the parent, so
 * inserts never wait for it; the DROP then touches only the detached table.
 * Each is its own statement outside any transaction block.
 */
#include "parts.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"
#include "db_migrate.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define PARTS_MAX 32
#define NAME_MAX_LEN 140 /* a quoted identifier (63 bytes, doubled quotes) */
#define PRUNE_BATCH "1000"
#define PRUNE_MAX_BATCHES 100

enum parts_state { PARTS_IDLE, PARTS_MAINTAIN, PARTS_DETACH, PARTS_DROP, PARTS_SETTLE, PARTS_PRUNE };

enum parts_action { ACT_DETACH, ACT_FINALIZE, ACT_DROP };

struct parts {
        struct db_conn *conn; /* borrowed */
        char *instance_id;
        long event_days, history_days, dead_letter_days, job_days;
        long long odd_dates; /* history rows with an absurd scan time, as last read */
        /* the run in progress */
        enum parts_state state;
        char tick[32], start[32]; /* the slot's number and first second */
        unsigned batches;         /* of eps_sync_jobs_prune this slot */
        long long pruned;         /* jobs deleted this slot */
        unsigned n, at;           /* ledger entries, the one in hand */
        struct {
                char parent[NAME_MAX_LEN], part[NAME_MAX_LEN];
                enum parts_action action;
        } todo[PARTS_MAX];
};

static void enter(struct parts *p, enum parts_state to, const char *why);

static const char *
state_name(enum parts_state s)
{
        static const char *const names[] = { "idle", "maintain", "detach", "drop", "settle", "prune" };
        return (unsigned)s < ARRAY_LEN(names) ? names[s] : "?";
}

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

/* The next ledger entry's first step, or SETTLE once none is left. */
static void
next_entry(struct parts *p)
{
        if (p->at >= p->n)
                enter(p, PARTS_SETTLE, NULL);
        else
                enter(p, p->todo[p->at].action == ACT_DROP ? PARTS_DROP : PARTS_DETACH, NULL);
}

static void
maintain_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (!result_ok(res, "partition upkeep")) {
                enter(p, PARTS_IDLE, res == NULL ? "connection lost" : "eps_partitions_maintain failed");
                return;
        }
        for (int i = 0; i < PQntuples(res); i++) {
                const char *parent = PQgetvalue(res, i, 0), *part = PQgetvalue(res, i, 1);
                const char *action = PQgetvalue(res, i, 2);
                if (strcmp(action, "created") == 0) {
                        log_info("parts", "partition %s created", part);
                        continue;
                }
                if (p->n == PARTS_MAX || strlen(parent) >= NAME_MAX_LEN || strlen(part) >= NAME_MAX_LEN)
                        continue; /* still in the ledger: the next run takes it */
                snprintf(p->todo[p->n].parent, NAME_MAX_LEN, "%s", parent);
                snprintf(p->todo[p->n].part, NAME_MAX_LEN, "%s", part);
                p->todo[p->n].action = strcmp(action, "drop") == 0       ? ACT_DROP
                                       : strcmp(action, "finalize") == 0 ? ACT_FINALIZE
                                                                         : ACT_DETACH;
                p->n++;
        }
        next_entry(p);
}

static void
detach_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (res == NULL) {
                result_ok(res, p->todo[p->at].part);
                enter(p, PARTS_IDLE, "connection lost");
        } else if (result_ok(res, p->todo[p->at].part)) {
                enter(p, PARTS_DROP, NULL);
        } else {
                p->at++; /* not detached: left in the ledger, go on with the others */
                next_entry(p);
        }
}

static void
drop_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (res == NULL) {
                result_ok(res, p->todo[p->at].part);
                enter(p, PARTS_IDLE, "connection lost");
                return;
        }
        if (result_ok(res, p->todo[p->at].part))
                log_info("parts", "partition %s dropped (retention)", p->todo[p->at].part);
        p->at++;
        next_entry(p);
}

static void
settle_done(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (!result_ok(res, "settling partition upkeep")) {
                enter(p, PARTS_IDLE, res == NULL ? "connection lost" : "eps_partitions_settle failed");
                return;
        }
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
                long long odd = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                if (odd > p->odd_dates)
                        log_warn("parts", "%lld tracking details with an absurd scan time (before 2000, or "
                                 "over a year after they were stored), stored as sent",
                                 odd - p->odd_dates);
                p->odd_dates = odd;
        }
        if (p->job_days > 0)
                enter(p, PARTS_PRUNE, NULL);
        else
                enter(p, PARTS_IDLE, NULL);
}

static void
pruned(PGresult *res, void *arg)
{
        struct parts *p = arg;

        if (result_ok(res, "deleting old sync jobs") && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
                long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
                p->pruned += n;
                if (n == atoll(PRUNE_BATCH) && ++p->batches < PRUNE_MAX_BATCHES) {
                        enter(p, PARTS_PRUNE, NULL); /* the elected replica's next batch */
                        return;
                }
        }
        if (p->pruned > 0)
                log_info("parts", "%lld sync jobs deleted (retention %ld days)", p->pruned, p->job_days);
        enter(p, PARTS_IDLE, res == NULL ? "connection lost" : NULL);
}

/* Sends the state's statement; false when the connection cannot take it. */
static bool
send_step(struct parts *p)
{
        char sql[3 * NAME_MAX_LEN + 64], ev[24], hist[24], dead[24], days[24];

        switch (p->state) {
        case PARTS_MAINTAIN: {
                const char *vals[5] = { p->tick, p->instance_id, ev, hist, dead };
                snprintf(ev, sizeof(ev), "%ld", p->event_days);
                snprintf(hist, sizeof(hist), "%ld", p->history_days);
                snprintf(dead, sizeof(dead), "%ld", p->dead_letter_days);
                return db_conn_query(p->conn, "SELECT parent, part, action FROM eps_partitions_maintain("
                                              "$1::bigint, $2, $3::int, $4::int, $5::int)",
                                     5, vals, maintain_done, p) == 0;
        }
        case PARTS_DETACH:
                snprintf(sql, sizeof(sql), "ALTER TABLE %s DETACH PARTITION %s %s", p->todo[p->at].parent,
                         p->todo[p->at].part, p->todo[p->at].action == ACT_FINALIZE ? "FINALIZE" : "CONCURRENTLY");
                return db_conn_query(p->conn, sql, 0, NULL, detach_done, p) == 0;
        case PARTS_DROP:
                snprintf(sql, sizeof(sql), "DROP TABLE %s", p->todo[p->at].part);
                return db_conn_query(p->conn, sql, 0, NULL, drop_done, p) == 0;
        case PARTS_SETTLE:
                return db_conn_query(p->conn, "SELECT eps_partitions_settle()", 0, NULL, settle_done, p) == 0;
        case PARTS_PRUNE: {
                /* the first batch names the slot (elects a replica), the next ones NULL */
                const char *vals[2] = { p->batches == 0 && p->pruned == 0 ? p->start : NULL, days };
                snprintf(days, sizeof(days), "%ld", p->job_days);
                return db_conn_query(p->conn, "SELECT eps_sync_jobs_prune($1::bigint, $2::int, " PRUNE_BATCH ")",
                                     2, vals, pruned, p) == 0;
        }
        case PARTS_IDLE:
                break;
        }
        return true;
}

static void
enter(struct parts *p, enum parts_state to, const char *why)
{
        log_debug("parts", "upkeep: %s -> %s", state_name(p->state), state_name(to));
        p->state = to;
        if (to == PARTS_IDLE) {
                if (why != NULL)
                        log_warn("parts", "partition upkeep cut short (%s): the next run finishes it", why);
                return;
        }
        if (!send_step(p)) {
                p->state = PARTS_IDLE;
                log_warn("parts", "database unavailable: partition upkeep left for the next run");
        }
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

void
parts_tick(struct parts *p, long long slot, long long start_s)
{
        if (p->state != PARTS_IDLE)
                return;
        snprintf(p->tick, sizeof(p->tick), "%lld", slot);
        snprintf(p->start, sizeof(p->start), "%lld", start_s);
        p->n = p->at = 0;
        p->batches = 0;
        p->pruned = 0;
        enter(p, PARTS_MAINTAIN, NULL);
}

void
parts_render_metrics(const struct parts *p, struct strbuf *b)
{
        strbuf_printf(b, "# HELP easypost_sync_history_odd_dates Tracking details stored with an absurd scan "
                         "time (before 2000, or over a year after they were stored), as the partition upkeep "
                         "last counted them.\n"
                         "# TYPE easypost_sync_history_odd_dates gauge\n"
                         "easypost_sync_history_odd_dates %lld\n",
                      p->odd_dates);
}
