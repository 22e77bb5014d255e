/*
 * schema.c - reads max(schema_migrations.version) on every connect, so that
 * /readyz can say whether `--migrate` is still to run.
 */
#include "schema.h"

#include <stdlib.h>

#include "db_conn.h"
#include "db_migrate.h"
#include "log.h"
#include "util.h"

struct schema {
        struct db_conn *conn;
        int version;
};

static void
version_cb(PGresult *res, void *arg)
{
        struct schema *s = arg;

        if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                s->version = atoi(PQgetvalue(res, 0, 0));
                if (s->version < DB_SCHEMA_VERSION)
                        log_warn("schema", "database schema is at migration %d, this build needs %d: "
                                           "run easypost-syncd --migrate",
                                 s->version, DB_SCHEMA_VERSION);
        } else if (res) {
                s->version = 0;
                log_warn("schema", "no schema_migrations table: run easypost-syncd --migrate");
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

struct schema *
schema_new(struct event_base *base, const char *conninfo)
{
        struct schema *s = xcalloc(1, sizeof(*s));

        s->version = -1;
        s->conn = db_conn_new(base, conninfo, "schema", &hooks, s);
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
        db_conn_free(s->conn);
        free(s);
}

int
schema_version(const struct schema *s)
{
        return s ? s->version : -1;
}
