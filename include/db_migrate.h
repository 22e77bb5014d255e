/*
 * db_migrate.h - applies sql/NNNN_name.sql files in order, each once, in its
 * own transaction, recorded in schema_migrations, and the function files
 * in sql/functions/. Blocking libpq: used only
 * by --migrate (and its connection helper by --replay), instead of the event loop. Concurrent
 * runs are safe: each transaction first takes a transaction-level advisory
 * lock (no session lock, so it also works through PgBouncer), then sets
 * lock_timeout for what follows. A migration whose first line is
 * "-- eps:no-transaction" runs statement by statement, each committed on its
 * own on a second connection (CREATE INDEX CONCURRENTLY), while the first
 * connection's transaction holds the lock and records the file at the end.
 */
#ifndef EPS_DB_MIGRATE_H
#define EPS_DB_MIGRATE_H

#include <libpq-fe.h>

#include "util.h"

/* Highest migration this build expects; the daemon's readiness checks it. */
#define DB_SCHEMA_VERSION 17
/* Months after the current one that always have their partitions
 * (eps_partitions_create; --migrate and each maintenance run). */
#define DB_PARTITIONS_AHEAD "3"

/* Applies the .sql files in dir/functions whose text changed (CREATE OR REPLACE; recorded
 * in schema_functions), then pending migrations from dir, then makes the
 * monthly partitions due. *applied and
 * *fn_applied = how many of each ran now. A migration that was applied with
 * a different checksum is refused (0 on success). */
/* lock_timeout: seconds a migration's statement may wait for a lock (0: no limit). */
MUST_CHECK int db_migrate_run(const char *conninfo, const char *dir, long lock_timeout,
                              int *applied, int *fn_applied, struct err *e);

/* One statement of a file: its text (without the ';') and the line it starts on. */
struct db_stmt {
        char *sql;
        int line;
};

/* Splits sql at the semicolons outside quotes ('…', E'…', "…"), dollar-quoted
 * bodies and comments (-- and nested block comments); statements holding
 * nothing but comments are left out. *out (n statements) belongs to the caller:
 * db_stmts_free. -1 with err when a quote or a comment is not closed. */
MUST_CHECK int db_sql_split(const char *sql, struct db_stmt **out, size_t *n, struct err *e);
void db_stmts_free(struct db_stmt *s, size_t n);

/* The migrations directory: configured, else the source tree's, else the
 * installed one. Returns a borrowed static string or the configured value. */
const char *db_migrate_dir(const char *configured);

/* A blocking connection named app_name; NULL with err when it fails. */
PGconn *db_connect_blocking(const char *conninfo, const char *app_name, struct err *e);

#endif
