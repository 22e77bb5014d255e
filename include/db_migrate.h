/*
 * db_migrate.h - applies sql/NNNN_name.sql files in order, each once, in its
 * own transaction, recorded in schema_migrations, and the function files
 * in sql/functions/. Blocking libpq: used only
 * by --migrate (and its connection helper by --replay), instead of the event loop. Concurrent
 * runs are safe: each transaction first takes a transaction-level advisory
 * lock (no session lock, so it also works through PgBouncer).
 */
#ifndef EPS_DB_MIGRATE_H
#define EPS_DB_MIGRATE_H

#include <libpq-fe.h>

#include "util.h"

/* Highest migration this build expects; the daemon's readiness checks it. */
#define DB_SCHEMA_VERSION 12
/* Months after the current one that always have their partitions
 * (eps_partitions_create; --migrate and each maintenance run). */
#define DB_PARTITIONS_AHEAD "3"

/* Applies the .sql files in dir/functions whose text changed (CREATE OR REPLACE; recorded
 * in schema_functions), then pending migrations from dir, then makes the
 * monthly partitions due. *applied and
 * *fn_applied = how many of each ran now. A migration that was applied with
 * a different checksum is refused (0 on success). */
MUST_CHECK int db_migrate_run(const char *conninfo, const char *dir, int *applied,
                              int *fn_applied, struct err *e);

/* The migrations directory: configured, else the source tree's, else the
 * installed one. Returns a borrowed static string or the configured value. */
const char *db_migrate_dir(const char *configured);

/* A blocking connection named app_name; NULL with err when it fails. */
PGconn *db_connect_blocking(const char *conninfo, const char *app_name, struct err *e);

#endif
