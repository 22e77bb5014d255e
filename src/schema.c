/*
 * schema.c - reads max(schema_migrations.version) on every connect, and
 * again every SCHEMA_RECHECK_S while it is behind this build's, so that
 * /readyz can say whether `--migrate` is still to run, and turns ready once
 * it has run (the daemon restarted on a new build before it). An inline daemon also
 * counts projection_queue there: what a deferred daemon left is projected
 * only by a deferred one or --replay queued, so it says so once.
 */
#include "schema.h"

#include <event2/event.h>
#include <stdlib.h>

#include "db_conn.h"
#include "db_migrate.h"
#include "log.h"
#include "util.h"

#define SCHEMA_RECHECK_S 5

struct schema {
        struct db_conn *conn;
        struct event *recheck;
        int version;
        bool check_queue; /* inline: warn about a deferred daemon's leftovers */
};

static void
queue_cb(PGresult *res, void *arg)
{
        struct schema *s = arg;

        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
                return;
        long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        if (n > 0) {
                log_warn("schema", "%ld event(s) queued by a deferred daemon wait in projection_queue, "
                                   "which an inline daemon does not project: run easypost-syncd "
                                   "--replay queued (or a deferred daemon)", n);
                s->check_queue = false; /* once */
        }
}

static void
version_cb(PGresult *res, void *arg)
{
        struct schema *s = arg;
        struct timeval tv = { SCHEMA_RECHECK_S, 0 };

        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                int was = s->version;
                s->version = atoi(PQgetvalue(res, 0, 0));
                if (s->version < DB_SCHEMA_VERSION) {
                        if (s->version != was)
                                log_warn("schema", "database schema is at migration %d, this build needs %d: "
                                                   "run easypost-syncd --migrate",
                                         s->version, DB_SCHEMA_VERSION);
                        if (s->recheck)
                                evtimer_add(s->recheck, &tv);
                        return;
                }
                if (was >= 0 && was < DB_SCHEMA_VERSION)
                        log_info("schema", "database schema is now at migration %d", s->version);
                if (s->check_queue &&
                         db_conn_query(s->conn, "SELECT count(*) FROM projection_queue", 0, NULL,
                                       queue_cb, s) != 0)
                        log_debug("schema", "queue check not sent: connection lost");
        } else if (res) {
                if (s->version != 0)
                        log_warn("schema", "no schema_migrations table: run easypost-syncd --migrate");
                s->version = 0;
                if (s->recheck)
                        evtimer_add(s->recheck, &tv);
        }
}

static void
conn_ready(struct db_conn *c, void *arg)
{
        if (db_conn_query(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL,
                          version_cb, arg) != 0)
                log_debug("schema", "schema check not sent: connection lost");
}

static const struct db_conn_hooks hooks = { .on_ready = conn_ready };

static void
recheck_cb(evutil_socket_t fd, short what, void *arg)
{
        struct schema *s = arg;

        (void)fd;
        (void)what;
        if (db_conn_ready(s->conn))
                conn_ready(s->conn, s); /* else the next connect reads it */
}

struct schema *
schema_new(struct event_base *base, const char *conninfo, bool check_queue)
{
        struct schema *s = xcalloc(1, sizeof(*s));

        s->version = -1;
        s->check_queue = check_queue;
        s->conn = db_conn_new(base, conninfo, "schema", &hooks, s);
        s->recheck = evtimer_new(base, recheck_cb, s); /* NULL only out of memory: no recheck */
        return s;
}

void
schema_start(struct schema *s)
{
        db_conn_start(s->conn);
}

void
schema_free(struct schema *s)
{
        if (s == NULL)
                return;
        if (s->recheck)
                event_free(s->recheck);
        db_conn_free(s->conn);
        free(s);
}

int
schema_version(const struct schema *s)
{
        return s ? s->version : -1;
}
