/*
 * db_migrate.c - forward-only schema migrations.
 *
 * For each file, in one transaction: the advisory lock (tried until it is
 * granted, so that a run waiting for it holds no snapshot), then
 * lock_timeout (SET LOCAL), create the bookkeeping table if needed, skip when
 * recorded with the same checksum, refuse when recorded with another, else
 * run the file and record it. A migration whose first line is
 * NOTX_MARKER runs statement by statement on a second connection, each
 * statement committed on its own (CREATE INDEX CONCURRENTLY, VALIDATE
 * CONSTRAINT after an earlier NOT VALID), while the first connection's
 * transaction holds the advisory lock and records the file once every
 * statement succeeded.
 */
#include "db_migrate.h"
#include "log.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIGRATE_LOCK_KEY "7351936043"
#define NOTX_MARKER "-- eps:no-transaction"
#define NAMEDATALEN_MAX 256 /* an index name, unquoted (PostgreSQL keeps 63 bytes) */

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

static bool
ident_char(unsigned char c)
{
        return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

/* Length of the dollar quote ("$$" or "$tag$") that starts at p, 0 if none. */
static size_t
dollar_tag(const char *p)
{
        unsigned char c = (unsigned char)p[1];

        if (p[0] != '$')
                return 0;
        if (c == '$')
                return 2;
        if (!(isalpha(c) || c == '_' || c >= 0x80))
                return 0;
        for (size_t i = 2;; i++) {
                c = (unsigned char)p[i];
                if (c == '$')
                        return i + 1;
                if (!(isalnum(c) || c == '_' || c >= 0x80))
                        return 0;
        }
}

/* Index just past the comment that starts at s + i, or i when none;
 * SIZE_MAX when a block comment is not closed. */
static size_t
skip_comment(const char *s, size_t i)
{
        if (s[i] == '-' && s[i + 1] == '-') {
                while (s[i] && s[i] != '\n')
                        i++;
                return i;
        }
        if (s[i] == '/' && s[i + 1] == '*') {
                int depth = 1;
                for (i += 2; depth > 0;) {
                        if (s[i] == '\0')
                                return SIZE_MAX;
                        if (s[i] == '/' && s[i + 1] == '*') {
                                depth++;
                                i += 2;
                        } else if (s[i] == '*' && s[i + 1] == '/') {
                                depth--;
                                i += 2;
                        } else {
                                i++;
                        }
                }
        }
        return i;
}

static int
line_at(const char *s, size_t i)
{
        int line = 1;

        for (size_t k = 0; k < i; k++)
                line += s[k] == '\n';
        return line;
}

static void
push_stmt(struct db_stmt **out, size_t *n, size_t *cap, const char *sql, size_t len, int line)
{
        if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 16;
                *out = xrealloc(*out, *cap * sizeof(**out));
        }
        char *t = xmalloc(len + 1);
        memcpy(t, sql, len);
        t[len] = '\0';
        (*out)[*n].sql = t;
        (*out)[(*n)++].line = line;
}

int
db_sql_split(const char *sql, struct db_stmt **out, size_t *n, struct err *e)
{
        size_t cap = 0, start = 0, i = 0;
        int line = 0; /* of the statement's first token; 0 while none */

        *out = NULL;
        *n = 0;
        while (sql[i]) {
                unsigned char c = (unsigned char)sql[i];
                size_t j = skip_comment(sql, i);
                if (j == SIZE_MAX) {
                        err_set(e, -1, "line %d: comment not closed", line_at(sql, i));
                        goto fail;
                }
                if (j != i) {
                        i = j;
                        continue;
                }
                if (c == ';') {
                        if (line)
                                push_stmt(out, n, &cap, sql + start, i - start, line);
                        start = ++i;
                        line = 0;
                        continue;
                }
                if (isspace(c)) {
                        i++;
                        continue;
                }
                if (!line)
                        line = line_at(sql, i);
                bool after_ident = i > 0 && ident_char((unsigned char)sql[i - 1]);
                size_t tag = after_ident ? 0 : dollar_tag(sql + i);
                if (c == '\'' || c == '"') {
                        /* E'...' takes backslash escapes; '' and "" double the quote */
                        bool esc = c == '\'' && i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                                   !(i > 1 && ident_char((unsigned char)sql[i - 2]));
                        size_t at = i++;
                        for (;; i++) {
                                if (sql[i] == '\0') {
                                        err_set(e, -1, "line %d: quote not closed", line_at(sql, at));
                                        goto fail;
                                }
                                if (esc && sql[i] == '\\' && sql[i + 1]) {
                                        i++;
                                } else if ((unsigned char)sql[i] == c) {
                                        if ((unsigned char)sql[i + 1] != c)
                                                break;
                                        i++;
                                }
                        }
                        i++;
                } else if (tag > 0) {
                        size_t at = i;
                        for (i += tag; sql[i] && strncmp(sql + i, sql + at, tag) != 0; i++)
                                ;
                        if (sql[i] == '\0') {
                                err_set(e, -1, "line %d: dollar quote %.*s not closed", line_at(sql, at),
                                        (int)tag, sql + at);
                                goto fail;
                        }
                        i += tag;
                } else {
                        i++;
                }
        }
        if (line)
                push_stmt(out, n, &cap, sql + start, i - start, line);
        return 0;
fail:
        db_stmts_free(*out, *n);
        *out = NULL;
        *n = 0;
        return -1;
}

void
db_stmts_free(struct db_stmt *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(s[i].sql);
        free(s);
}

/* The next name of s from *i, blanks and comments skipped: a run of
 * identifier characters, dots and "quoted" parts; [*a, *i) is its text.
 * false when none (end, punctuation). */
static bool
next_name(const char *s, size_t *i, size_t *a)
{
        for (;;) {
                while (isspace((unsigned char)s[*i]))
                        (*i)++;
                size_t j = skip_comment(s, *i);
                if (j == SIZE_MAX)
                        return false;
                if (j == *i)
                        break;
                *i = j;
        }
        *a = *i;
        while (s[*i]) {
                if (s[*i] == '"') {
                        for ((*i)++; s[*i] && !(s[*i] == '"' && s[*i + 1] != '"'); (*i)++)
                                if (s[*i] == '"')
                                        (*i)++;
                        if (s[*i])
                                (*i)++;
                } else if (ident_char((unsigned char)s[*i]) || s[*i] == '.') {
                        (*i)++;
                } else {
                        break;
                }
        }
        return *i > *a;
}

static bool
is_word(const char *s, size_t a, size_t b, const char *w)
{
        return b - a == strlen(w) && strncasecmp(s + a, w, b - a) == 0;
}

/*
 * A CREATE [UNIQUE] INDEX CONCURRENTLY statement: 1 with the index's name
 * (as PostgreSQL stores it) and its table (as written); 0 for any other
 * statement; -1 when it has no name or no IF NOT EXISTS, so that running it
 * again after a run cut short would fail or build a second index.
 */
static int
parse_cic(const char *s, char *index, size_t icap, char *table, size_t tcap)
{
        size_t i = 0, a;

        if (!next_name(s, &i, &a) || !is_word(s, a, i, "create") || !next_name(s, &i, &a))
                return 0;
        if (is_word(s, a, i, "unique") && !next_name(s, &i, &a))
                return 0;
        if (!is_word(s, a, i, "index") || !next_name(s, &i, &a) ||
            !is_word(s, a, i, "concurrently"))
                return 0;
        if (!next_name(s, &i, &a) || !is_word(s, a, i, "if") || !next_name(s, &i, &a) ||
            !is_word(s, a, i, "not") || !next_name(s, &i, &a) || !is_word(s, a, i, "exists") ||
            !next_name(s, &i, &a) || is_word(s, a, i, "on"))
                return -1;
        size_t o = 0;
        if (s[a] == '"') {
                for (size_t k = a + 1; k + 1 < i && o + 1 < icap; k++) {
                        index[o++] = s[k];
                        if (s[k] == '"')
                                k++;
                }
        } else {
                for (size_t k = a; k < i && o + 1 < icap; k++)
                        index[o++] = (char)tolower((unsigned char)s[k]);
        }
        index[o] = '\0';
        if (!next_name(s, &i, &a) || !is_word(s, a, i, "on") || !next_name(s, &i, &a))
                return -1;
        if (is_word(s, a, i, "only") && !next_name(s, &i, &a))
                return -1;
        snprintf(table, tcap, "%.*s", (int)(i - a), s + a);
        return 1;
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

/* One --migrate run: the connection whose transactions hold the advisory
 * lock and the bookkeeping, and the one no-transaction files run on. */
struct migrator {
        const char *conninfo;
        long lock_timeout; /* s, 0 = wait */
        PGconn *pq;
        PGconn *work; /* opened by the first no-transaction file */
};

static void
quiet(void *arg, const char *msg)
{
        (void)arg;
        (void)msg;
}

/* err from a failed statement of file name (line 0: no line), with what to
 * do when it gave up waiting for a lock. */
static void
stmt_err(const struct migrator *m, PGresult *r, const char *name, int line, struct err *e)
{
        char msg[160];
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

        char where[300];

        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
        msg[strcspn(msg, "\n")] = '\0';
        if (line > 0)
                snprintf(where, sizeof(where), "%s line %d", name, line);
        else
                snprintf(where, sizeof(where), "%s", name);
        if (state && strcmp(state, "55P03") == 0)
                err_set(e, -1, "%s: %s: a lock was not granted within migrate_lock_timeout "
                               "(%ld s); run --migrate again once the session holding it is done",
                        where, msg, m->lock_timeout);
        else
                err_set(e, -1, "%s: %s", where, msg);
}

/* Runs sql on the work connection; true when it succeeded. *r is its result. */
static bool
work_exec(struct migrator *m, const char *sql, PGresult **r)
{
        *r = PQexec(m->work, sql);
        ExecStatusType st = PQresultStatus(*r);
        return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/*
 * An index that an earlier run's CREATE INDEX CONCURRENTLY left INVALID
 * (failed or cut short: IF NOT EXISTS would skip it) is dropped, so the
 * statement builds it again. The advisory lock rules out that another run
 * is building it now.
 */
static int
drop_invalid_index(struct migrator *m, const char *index, const char *table, const char *name,
                   int line, struct err *e)
{
        const char *v[2] = { index, table };
        PGresult *r = PQexecParams(
                m->work,
                "SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', n.nspname, c.relname)"
                " FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = $1 AND NOT i.indisvalid AND c.relnamespace ="
                " (SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))",
                2, NULL, v, NULL, NULL, 0);
        int rc = -1;

        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                stmt_err(m, r, name, line, e);
                goto out;
        }
        if (PQntuples(r) == 1) {
                PGresult *d;
                bool ok = work_exec(m, PQgetvalue(r, 0, 0), &d);
                if (!ok)
                        stmt_err(m, d, name, line, e);
                PQclear(d);
                if (!ok)
                        goto out;
                log_warn("migrate", "%s: dropped the invalid index %s an earlier run left, to build it again",
                         name, index);
        }
        rc = 0;
out:
        PQclear(r);
        return rc;
}

/*
 * A no-transaction migration: each statement commits on its own, inside
 * BEGIN … COMMIT with lock_timeout when PostgreSQL allows it, else alone
 * (CREATE INDEX CONCURRENTLY and the other forms refused in a transaction
 * block: SQLSTATE 25001). The statements must be safe to run again: the
 * file is recorded only after its last one, so a run cut short runs them
 * all again.
 */
static int
run_notx(struct migrator *m, const char *name, const char *sql, struct err *e)
{
        struct db_stmt *st = NULL;
        size_t n = 0;
        struct err se;
        char set[64], index[NAMEDATALEN_MAX], table[256];
        PGresult *r = NULL;
        int rc = -1;

        if (db_sql_split(sql, &st, &n, &se) != 0) {
                err_set(e, -1, "%s: %s", name, se.msg);
                return -1;
        }
        /* refuse a file that could not be run again before running any of it */
        for (size_t i = 0; i < n; i++)
                if (parse_cic(st[i].sql, index, sizeof(index), table, sizeof(table)) < 0) {
                        err_set(e, -1, "%s line %d: CREATE INDEX CONCURRENTLY needs a name and IF NOT "
                                       "EXISTS (a run cut short runs it again)", name, st[i].line);
                        goto out;
                }
        if (m->work == NULL) {
                m->work = db_connect_blocking(m->conninfo, "easypost-syncd-migrate", e);
                if (m->work == NULL)
                        goto out;
                PQsetNoticeProcessor(m->work, quiet, NULL);
        }
        snprintf(set, sizeof(set), "SET LOCAL lock_timeout = '%lds'", m->lock_timeout);
        for (size_t i = 0; i < n; i++) {
                int cic = parse_cic(st[i].sql, index, sizeof(index), table, sizeof(table));
                if (cic == 1) {
                        if (drop_invalid_index(m, index, table, name, st[i].line, e) != 0)
                                goto out;
                } else {
                        if (!work_exec(m, "BEGIN", &r)) {
                                stmt_err(m, r, name, st[i].line, e);
                                goto out;
                        }
                        PQclear(r);
                        if (!work_exec(m, set, &r)) {
                                stmt_err(m, r, name, st[i].line, e);
                                goto rollback;
                        }
                        PQclear(r);
                        if (work_exec(m, st[i].sql, &r)) {
                                PQclear(r);
                                if (!work_exec(m, "COMMIT", &r)) {
                                        stmt_err(m, r, name, st[i].line, e);
                                        goto out;
                                }
                                PQclear(r);
                                r = NULL;
                                continue;
                        }
                        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
                        if (!state || strcmp(state, "25001") != 0) {
                                stmt_err(m, r, name, st[i].line, e);
                                goto rollback;
                        }
                        PQclear(r);
                        PQclear(PQexec(m->work, "ROLLBACK"));
                }
                /* alone, in autocommit: SHARE UPDATE EXCLUSIVE at most, which inserts do not wait for */
                if (!work_exec(m, st[i].sql, &r)) {
                        stmt_err(m, r, name, st[i].line, e);
                        goto out;
                }
                PQclear(r);
                r = NULL;
        }
        rc = 0;
        goto out;
rollback:
        PQclear(PQexec(m->work, "ROLLBACK"));
out:
        PQclear(r);
        db_stmts_free(st, n);
        return rc;
}

/*
 * Takes the migration lock for the transaction begun on pq, waiting as long
 * as another run holds it. It is tried, not waited for in
 * pg_advisory_xact_lock: a statement that waits holds its snapshot the whole
 * time, and the holder's CREATE INDEX CONCURRENTLY waits for every older
 * snapshot. Replicas started together would deadlock on a no-transaction
 * migration, the holder waiting for the waiters and they for its lock,
 * through the client where PostgreSQL cannot see it. Between tries there is
 * no transaction at all: behind PgBouncer a waiting run holds no server
 * connection, so the holder's second one is not kept waiting for a pool
 * slot the waiters fill.
 */
static int
take_lock(PGconn *pq, struct err *e)
{
        struct timespec pause = { 0, 10 * 1000 * 1000 };

        for (;;) {
                PGresult *r = NULL;
                if (exec_ok(pq, "SELECT pg_try_advisory_xact_lock(" MIGRATE_LOCK_KEY ")",
                            PGRES_TUPLES_OK, &r, e, "lock") != 0)
                        return -1;
                bool got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
                PQclear(r);
                if (got)
                        return 0;
                if (exec_ok(pq, "ROLLBACK", PGRES_COMMAND_OK, NULL, e, "rollback") != 0)
                        return -1;
                nanosleep(&pause, NULL);
                if (pause.tv_nsec < 320 * 1000 * 1000)
                        pause.tv_nsec *= 2; /* 10 ms, doubling to 640 ms */
                if (exec_ok(pq, "BEGIN", PGRES_COMMAND_OK, NULL, e, "begin") != 0)
                        return -1;
        }
}

static int
apply_one(struct migrator *m, enum sql_kind kind, const char *dir, const char *name, int *applied,
          struct err *e)
{
        PGconn *pq = m->pq;
        char path[4096], sum[65], version[8], set[64];
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
        /* another --migrate may hold it for long: only what follows has a lock_timeout */
        snprintf(set, sizeof(set), "SET LOCAL lock_timeout = '%lds'", m->lock_timeout);
        if (take_lock(pq, e) != 0 || exec_ok(pq, set, PGRES_COMMAND_OK, NULL, e, "set") != 0 ||
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
                if (kind == SQL_MIGRATION && strncmp(sql, NOTX_MARKER, strlen(NOTX_MARKER)) == 0 &&
                    strchr("\r\n", sql[strlen(NOTX_MARKER)]) != NULL) {
                        /*
                         * This transaction keeps the lock and records the file at the end.
                         * A simple query first drops the unnamed portal of the SELECT above:
                         * its snapshot would keep this transaction's xmin, and CREATE INDEX
                         * CONCURRENTLY waits for every older snapshot, ours too.
                         */
                        if (exec_ok(pq, "SET LOCAL client_min_messages = warning",
                                    PGRES_COMMAND_OK, NULL, e, "set") != 0 ||
                            run_notx(m, name, sql, e) != 0)
                                goto rollback;
                } else {
                        r = PQexec(pq, sql);
                        if (PQresultStatus(r) != PGRES_COMMAND_OK &&
                            PQresultStatus(r) != PGRES_TUPLES_OK) {
                                stmt_err(m, r, name, 0, e);
                                goto rollback;
                        }
                        PQclear(r);
                }
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
        /* the session in UTC, as the daemon's (db_conn.c): migrations count
         * months and --replay reads zone-less times in the session's TimeZone */
        if (setenv("PGTZ", "UTC", 1) != 0) {
                err_set(e, -1, "cannot pin the session TimeZone to UTC: %s", strerror(errno));
                return NULL;
        }
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
db_migrate_run(const char *conninfo, const char *dir, long lock_timeout, int *applied,
               int *fn_applied, struct err *e)
{
        struct migrator m = { .conninfo = conninfo, .lock_timeout = lock_timeout };
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
        m.pq = pq;
        for (size_t i = 0; i < nf; i++)
                if (apply_one(&m, SQL_FUNCTIONS, fdir, fnames[i], fn_applied, e) != 0)
                        goto out;
        for (size_t i = 0; i < n; i++)
                if (apply_one(&m, SQL_MIGRATION, dir, names[i], applied, e) != 0)
                        goto out;
        /* a new or converted database has its monthly partitions at once;
         * their locks wait no longer than the migrations' (an upkeep holds
         * them while its DETACH ... CONCURRENTLY waits for old snapshots) */
        char step[200];
        snprintf(step, sizeof(step),
                 "BEGIN; SET LOCAL lock_timeout = '%lds'; SELECT eps_partitions_create(" DB_PARTITIONS_AHEAD
                 "); COMMIT",
                 lock_timeout);
        PGresult *pr = PQexec(pq, step);
        if (PQresultStatus(pr) != PGRES_COMMAND_OK) {
                stmt_err(&m, pr, "creating partitions", 0, e);
                PQclear(pr);
                goto out;
        }
        PQclear(pr);
        rc = 0;
out:
        PQfinish(m.work);
        PQfinish(pq);
        free_names(names, n);
        free_names(fnames, nf);
        return rc;
}
