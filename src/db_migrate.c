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

/*
 * Checksums that 0001-0005 had while they also held the functions now in
 * functions/: a database migrated with them has the same tables, so the
 * record is brought up to date instead of refused.
 */
static const struct {
        int version;
        const char *sum;
} superseded[] = {
        { 1, "4140ace7b81f2d4986b1d8ba273da74500723a555850ef90bf7ef2c6bf92f8c7" },
        { 2, "3e3c561e3c5e4dc5108f8fe1c9eb43c44df2c025ed77b9036159f5bc28c24d20" },
        { 3, "0047547d49fe6d48be6eda68572886c18e009c48fee69b22f22fca0b5a00fe9e" },
        { 4, "ca1b6990bd1f0a9d52ab4af55ac505e41414464fd8b10c0c98522d18dd6fd8ec" },
        { 5, "a82ef900fbb8fd250877c0d03cd4573d4e4ce6e7a22161ea310a7cc2338ba078" },
};

static bool
is_superseded(const char *version, const char *sum)
{
        for (size_t i = 0; i < sizeof(superseded) / sizeof(superseded[0]); i++)
                if (superseded[i].version == atoi(version) && strcmp(superseded[i].sum, sum) == 0)
                        return true;
        return false;
}

/* What a file is: a numbered migration (run once, never edited) or a file
 * of functions (CREATE OR REPLACE, run again whenever its text changes). */
enum sql_kind { SQL_MIGRATION, SQL_FUNCTIONS };

static const char *const ddl[] = {
        [SQL_MIGRATION] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                          " applied_at timestamptz NOT NULL DEFAULT now())",
        [SQL_FUNCTIONS] = "CREATE TABLE IF NOT EXISTS schema_functions ("
                          " name text PRIMARY KEY, checksum text NOT NULL,"
                          " applied_at timestamptz NOT NULL DEFAULT now())",
};
static const char *const sel[] = {
        [SQL_MIGRATION] = "SELECT checksum FROM schema_migrations WHERE version = $1::int",
        [SQL_FUNCTIONS] = "SELECT checksum FROM schema_functions WHERE name = $2",
};
static const char *const rec[] = {
        [SQL_MIGRATION] = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1::int, $2, $3)"
                          " ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum",
        [SQL_FUNCTIONS] = "INSERT INTO schema_functions (name, checksum) VALUES ($2, $3)"
                          " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum,"
                          " applied_at = now()",
};

/* Runs a parameterised statement ($1 version, $2 name, $3 checksum). */
static PGresult *
exec_file_params(PGconn *pq, const char *sql, const char *version, const char *name,
                 const char *sum)
{
        const char *v[3] = { version, name, sum };

        /* unused parameters are allowed as long as their types are known */
        static const Oid types[3] = { 25, 25, 25 };
        return PQexecParams(pq, sql, 3, types, v, NULL, NULL, 0);
}

static int
apply_one(PGconn *pq, enum sql_kind kind, const char *dir, const char *name, int *applied,
          struct err *e)
{
        char path[4096], sum[65], version[8];
        struct err fe;
        size_t len;
        PGresult *r = NULL;
        int rc = -1;
        bool run = true;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *sql = file_read_all(path, &len, &fe);
        if (sql == NULL) {
                err_set(e, -1, "%s", fe.msg);
                return -1;
        }
        sha256_hex(sql, len, sum);
        snprintf(version, sizeof(version), "%.4s", kind == SQL_MIGRATION ? name : "0");

        if (exec_ok(pq, "BEGIN", PGRES_COMMAND_OK, NULL, e, "begin") != 0)
                goto out;
        if (exec_ok(pq, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", PGRES_TUPLES_OK,
                    NULL, e, "lock") != 0 ||
            exec_ok(pq, "SET LOCAL client_min_messages = warning", PGRES_COMMAND_OK, NULL, e,
                    "set") != 0 ||
            exec_ok(pq, ddl[kind], PGRES_COMMAND_OK, NULL, e, "bookkeeping table") != 0)
                goto rollback;
        r = exec_file_params(pq, sel[kind], version, name, sum);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                err_set(e, -1, "%s: %s", name, PQresultErrorMessage(r));
                goto rollback;
        }
        if (PQntuples(r) == 1) {
                const char *had = PQgetvalue(r, 0, 0);
                if (strcmp(had, sum) == 0) {
                        rc = exec_ok(pq, "COMMIT", PGRES_COMMAND_OK, NULL, e, "commit");
                        goto out;
                }
                if (kind == SQL_MIGRATION && !is_superseded(version, had)) {
                        err_set(e, -1, "%s was applied with another checksum: migrations are "
                                       "forward-only, add a new file instead of editing it",
                                name);
                        goto rollback;
                }
                run = kind == SQL_FUNCTIONS;
        }
        PQclear(r);
        r = NULL;
        if (run) {
                /* functions may name tables that later migrations make */
                if (kind == SQL_FUNCTIONS &&
                    exec_ok(pq, "SET LOCAL check_function_bodies = off", PGRES_COMMAND_OK, NULL, e,
                            "set") != 0)
                        goto rollback;
                r = PQexec(pq, sql);
                if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
                        char msg[200];
                        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
                        msg[strcspn(msg, "\n")] = '\0';
                        err_set(e, -1, "%s: %s", name, msg);
                        goto rollback;
                }
                PQclear(r);
        }
        r = exec_file_params(pq, rec[kind], version, name, sum);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                err_set(e, -1, "%s: %s", name, PQresultErrorMessage(r));
                goto rollback;
        }
        if (exec_ok(pq, "COMMIT", PGRES_COMMAND_OK, NULL, e, "commit") != 0)
                goto out;
        if (run)
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

/* The sorted names in dir that pass keep(); NULL with *n = 0 when none. */
static char **
list_sql(const char *dir, bool (*keep)(const char *), size_t *n)
{
        DIR *d = opendir(dir);
        char **names = NULL;
        size_t cap = 0;

        *n = 0;
        if (d == NULL)
                return NULL;
        for (struct dirent *de; (de = readdir(d)) != NULL;) {
                if (!keep(de->d_name))
                        continue;
                if (*n == cap) {
                        cap = cap ? cap * 2 : 16;
                        names = xrealloc(names, cap * sizeof(*names));
                }
                names[(*n)++] = xstrdup(de->d_name);
        }
        closedir(d);
        if (*n > 0)
                qsort(names, *n, sizeof(*names), name_cmp);
        return names;
}

static bool
is_function_file(const char *n)
{
        size_t len = strlen(n);

        return len > 4 && n[0] != '.' && strcmp(n + len - 4, ".sql") == 0;
}

static void
free_names(char **names, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

PGconn *
db_connect_blocking(const char *conninfo, const char *app_name, struct err *e)
{
        const char *keys[] = { "dbname", "fallback_application_name", NULL };
        const char *vals[] = { conninfo, app_name, NULL };
        PGconn *pq = PQconnectdbParams(keys, vals, 1);

        if (PQstatus(pq) != CONNECTION_OK) {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pq));
                msg[strcspn(msg, "\n")] = '\0';
                err_set(e, -1, "cannot connect to the database: %s", msg);
                PQfinish(pq);
                return NULL;
        }
        return pq;
}

int
db_migrate_run(const char *conninfo, const char *dir, int *applied, int *fn_applied, struct err *e)
{
        char fdir[4096];
        size_t n = 0, nf = 0;
        char **names = list_sql(dir, is_migration, &n), **fnames = NULL;
        PGconn *pq = NULL;
        int rc = -1;

        *applied = *fn_applied = 0;
        if (n == 0) {
                err_set(e, -1, "no migrations in %s (or it cannot be read)", dir);
                goto out;
        }
        snprintf(fdir, sizeof(fdir), "%s/functions", dir);
        fnames = list_sql(fdir, is_function_file, &nf);
        if (nf == 0) {
                err_set(e, -1, "no function files in %s (or it cannot be read)", fdir);
                goto out;
        }
        pq = db_connect_blocking(conninfo, "easypost-syncd-migrate", e);
        if (pq == NULL)
                goto out;
        /* functions first: tables take their defaults from some of them */
        for (size_t i = 0; i < nf; i++)
                if (apply_one(pq, SQL_FUNCTIONS, fdir, fnames[i], fn_applied, e) != 0)
                        goto out;
        for (size_t i = 0; i < n; i++)
                if (apply_one(pq, SQL_MIGRATION, dir, names[i], applied, e) != 0)
                        goto out;
        /* a new or converted database has its monthly partitions at once */
        if (exec_ok(pq, "SELECT eps_partitions_create(" DB_PARTITIONS_AHEAD ")", PGRES_TUPLES_OK,
                    NULL, e, "creating partitions") != 0)
                goto out;
        rc = 0;
out:
        PQfinish(pq);
        free_names(names, n);
        free_names(fnames, nf);
        return rc;
}
