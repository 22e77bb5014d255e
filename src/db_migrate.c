/*
 * db_migrate.c - forward-only schema migrations.
 *
 * For each file, in one transaction: pg_advisory_xact_lock, create the
 * bookkeeping table if needed, skip when recorded with the same checksum,
 * refuse when recorded with another, else run the file and record it.
 * Also the replay runner, the other blocking administrative command.
 */
#include "db_migrate.h"

#include <dirent.h>
#include <stdbool.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIGRATE_LOCK_KEY "7351936043"

#ifndef EPS_SRCDIR
#define EPS_SRCDIR "."
#endif
#ifndef EPS_PKGDATADIR
#define EPS_PKGDATADIR "/usr/local/share/easypost-sync"
#endif

static bool
is_dir(const char *p)
{
        struct stat st;

        return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *
db_migrate_dir(const char *configured)
{
        static char buf[4096];

        if (configured && configured[0])
                return configured;
        /* an uninstalled build uses the tree it was built from */
        snprintf(buf, sizeof(buf), "%s/sql", EPS_SRCDIR);
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n > 0) {
                self[n] = '\0';
                bool installed = strncmp(self, EPS_BINDIR "/", strlen(EPS_BINDIR) + 1) == 0;
                if (!installed && is_dir(buf))
                        return buf;
        }
        snprintf(buf, sizeof(buf), "%s/sql", EPS_PKGDATADIR);
        if (is_dir(buf))
                return buf;
        snprintf(buf, sizeof(buf), "%s/sql", EPS_SRCDIR);
        return buf;
}

static int
name_cmp(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool
is_migration(const char *n)
{
        size_t len = strlen(n);

        return len > 9 && n[0] >= '0' && n[0] <= '9' && n[1] >= '0' && n[1] <= '9' &&
               n[2] >= '0' && n[2] <= '9' && n[3] >= '0' && n[3] <= '9' && n[4] == '_' &&
               strcmp(n + len - 4, ".sql") == 0;
}

static void
sha256_hex(const char *data, size_t len, char out[65])
{
        unsigned char md[32];
        unsigned int mdlen = 0;

        EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
        for (unsigned i = 0; i < 32; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int
exec_ok(PGconn *pq, const char *sql, ExecStatusType want, PGresult **keep, struct err *e,
        const char *what)
{
        PGresult *r = PQexec(pq, sql);

        if (PQresultStatus(r) != want) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
                msg[strcspn(msg, "\n")] = '\0';
                err_set(e, -1, "%s: %s", what, msg);
                PQclear(r);
                return -1;
        }
        if (keep)
                *keep = r;
        else
                PQclear(r);
        return 0;
}

static int
apply_one(PGconn *pq, const char *dir, const char *name, int *applied, struct err *e)
{
        char path[4096], sum[65], version[8];
        struct err fe;
        size_t len;
        PGresult *r = NULL;
        int rc = -1;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *sql = file_read_all(path, &len, &fe);
        if (sql == NULL) {
                err_set(e, -1, "%s", fe.msg);
                return -1;
        }
        sha256_hex(sql, len, sum);
        memcpy(version, name, 4);
        version[4] = '\0';

        if (exec_ok(pq, "BEGIN", PGRES_COMMAND_OK, NULL, e, "begin") != 0)
                goto out;
        if (exec_ok(pq, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", PGRES_TUPLES_OK,
                    NULL, e, "lock") != 0 ||
            exec_ok(pq,
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())",
                    PGRES_COMMAND_OK, NULL, e, "schema_migrations") != 0)
                goto rollback;
        const char *pv[1] = { version };
        r = PQexecParams(pq, "SELECT checksum FROM schema_migrations WHERE version = $1::int", 1,
                         NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                err_set(e, -1, "%s: %s", name, PQresultErrorMessage(r));
                goto rollback;
        }
        if (PQntuples(r) == 1) {
                if (strcmp(PQgetvalue(r, 0, 0), sum) != 0) {
                        err_set(e, -1, "%s was applied with another checksum: migrations are "
                                       "forward-only, add a new file instead of editing it",
                                name);
                        goto rollback;
                }
                rc = exec_ok(pq, "COMMIT", PGRES_COMMAND_OK, NULL, e, "commit");
                goto out;
        }
        PQclear(r);
        r = NULL;
        r = PQexec(pq, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
                msg[strcspn(msg, "\n")] = '\0';
                err_set(e, -1, "%s: %s", name, msg);
                goto rollback;
        }
        PQclear(r);
        const char *iv[3] = { version, name, sum };
        r = PQexecParams(pq,
                         "INSERT INTO schema_migrations (version, name, checksum) "
                         "VALUES ($1::int, $2, $3)",
                         3, NULL, iv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                err_set(e, -1, "%s: %s", name, PQresultErrorMessage(r));
                goto rollback;
        }
        if (exec_ok(pq, "COMMIT", PGRES_COMMAND_OK, NULL, e, "commit") != 0)
                goto out;
        (*applied)++;
        rc = 0;
        goto out;
rollback:
        PQclear(PQexec(pq, "ROLLBACK"));
out:
        PQclear(r);
        free(sql);
        return rc;
}

int
db_migrate_run(const char *conninfo, const char *dir, int *applied, struct err *e)
{
        const char *keys[] = { "dbname", "fallback_application_name", NULL };
        const char *vals[] = { conninfo, "easypost-syncd-migrate", NULL };
        DIR *d = opendir(dir);
        char **names = NULL;
        size_t n = 0, cap = 0;
        PGconn *pq = NULL;
        int rc = -1;

        *applied = 0;
        if (d == NULL) {
                err_set(e, -1, "migrations directory %s cannot be read", dir);
                return -1;
        }
        for (struct dirent *de; (de = readdir(d)) != NULL;) {
                if (!is_migration(de->d_name))
                        continue;
                if (n == cap) {
                        cap = cap ? cap * 2 : 16;
                        names = xrealloc(names, cap * sizeof(*names));
                }
                names[n++] = xstrdup(de->d_name);
        }
        closedir(d);
        if (n == 0) {
                err_set(e, -1, "no migrations in %s", dir);
                goto out;
        }
        qsort(names, n, sizeof(*names), name_cmp);
        pq = PQconnectdbParams(keys, vals, 1);
        if (PQstatus(pq) != CONNECTION_OK) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pq));
                msg[strcspn(msg, "\n")] = '\0';
                err_set(e, -1, "cannot connect to the database: %s", msg);
                goto out;
        }
        PQclear(PQexec(pq, "SET client_min_messages = warning"));
        for (size_t i = 0; i < n; i++)
                if (apply_one(pq, dir, names[i], applied, e) != 0)
                        goto out;
        rc = 0;
out:
        PQfinish(pq);
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        return rc;
}

int
db_replay_run(const char *conninfo, const char *what, long *projected, long *failed, struct err *e)
{
        const char *keys[] = { "dbname", "fallback_application_name", NULL };
        const char *vals[] = { conninfo, "easypost-syncd-replay", NULL };
        PGconn *pq = PQconnectdbParams(keys, vals, 1);
        PGresult *ids = NULL;
        int rc = -1;

        *projected = *failed = 0;
        if (PQstatus(pq) != CONNECTION_OK) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pq));
                msg[strcspn(msg, "\n")] = '\0';
                err_set(e, -1, "cannot connect to the database: %s", msg);
                goto out;
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
                const char *id[1] = { PQgetvalue(ids, i, 0) };
                PGresult *r = PQexecParams(pq, "SELECT eps_replay($1::uuid)", 1, NULL, id, NULL,
                                           NULL, 0);
                if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                        err_set(e, -1, "replaying %s: %s", id[0], PQresultErrorMessage(r));
                        PQclear(r);
                        goto out;
                }
                if (strcmp(PQgetvalue(r, 0, 0), "failed") == 0)
                        (*failed)++;
                else
                        (*projected)++;
                PQclear(r);
        }
        rc = 0;
out:
        PQclear(ids);
        PQfinish(pq);
        return rc;
}
