/*
 * check_migrate.c - easypost-syncd --migrate on a live database: a
 * no-transaction migration (CREATE INDEX CONCURRENTLY, NOT VALID then
 * VALIDATE) applied once, finished by the next run after it failed half-way,
 * and lock_timeout, which makes a migration give up instead of queueing
 * every insert behind its lock. Each test migrates a schema of its own
 * (search_path in the connection string) from a copy of sql/ with one test
 * migration added, so sql/ itself holds no test migration.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

#define TEST_MIGRATION "9001"

static void
msleep(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static void
schema_url(const char *name, char *url, size_t n)
{
        snprintf(url, n, "%s options='-csearch_path=%s'", getenv("TEST_PG_CONNINFO"), name);
}

static const char *
tmpdir(void)
{
        return getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
}

/* A fresh schema name (dropped first) and a connection inside it. */
static PGconn *
schema_new(const char *name, char *url, size_t n)
{
        char sql[200];
        PGconn *a = db_open();

        db_exec(a, "SET client_min_messages = warning");
        snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", name);
        db_exec(a, sql);
        snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", name);
        db_exec(a, sql);
        PQfinish(a);
        schema_url(name, url, n);
        PGconn *c = PQconnectdb(url);
        ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
        return c;
}

/* $TEST_TMPDIR/migrate-tag: a copy of sql/ (functions too), plus
 * 9001_tag.sql holding body when body is not NULL. Writes the directory to dir. */
static void
sql_dir_with(const char *tag, const char *body, char *dir, size_t n)
{
        char cmd[2048], path[1200];

        snprintf(dir, n, "%s/migrate-%s", tmpdir(), tag);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s' && cp -R '%s/.' '%s/'", dir, dir,
                 srcdir_path("sql"), dir);
        ck_assert_msg(system(cmd) == 0, "%s", cmd);
        if (body == NULL)
                return;
        snprintf(path, sizeof(path), "%s/" TEST_MIGRATION "_%s.sql", dir, tag);
        FILE *f = fopen(path, "w");
        ck_assert_msg(f != NULL, "%s", path);
        ck_assert_int_eq(fputs(body, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

struct run {
        pid_t pid;
        int code; /* exit status, -1 when killed or still running */
        char errp[512];
        char *err; /* stderr, once it exited */
};

/* Starts easypost-syncd --migrate --sql_dir=dir --migrate_lock_timeout=lt
 * with DATABASE_URL=url (under $TEST_DAEMON_WRAPPER when set). */
static struct run
migrate_start(const char *url, const char *dir, int lt)
{
        static int seq;
        struct run r = { .code = -1 };
        char bin[512], dirarg[1100], ltarg[64];

        snprintf(r.errp, sizeof(r.errp), "%s/migrate-%d-%d.log", tmpdir(), (int)getpid(), ++seq);
        snprintf(bin, sizeof(bin), "%s/easypost-syncd", getenv("abs_top_builddir"));
        snprintf(dirarg, sizeof(dirarg), "--sql_dir=%s", dir);
        snprintf(ltarg, sizeof(ltarg), "--migrate_lock_timeout=%d", lt);
        r.pid = fork();
        ck_assert_int_ge(r.pid, 0);
        if (r.pid == 0) {
                int o = open("/dev/null", O_WRONLY);
                int e = open(r.errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (o < 0 || e < 0)
                        _exit(127);
                dup2(o, 1);
                dup2(e, 2);
                setenv("DATABASE_URL", url, 1);
                const char *wrap = getenv("TEST_DAEMON_WRAPPER");
                if (wrap && wrap[0])
                        execl("/bin/sh", "sh", "-c", "exec $TEST_DAEMON_WRAPPER \"$0\" \"$@\"", bin,
                              "--migrate", dirarg, ltarg, (char *)NULL);
                else
                        execl(bin, "easypost-syncd", "--migrate", dirarg, ltarg, (char *)NULL);
                _exit(127);
        }
        return r;
}

/* Waits up to timeout_ms for the run to exit; true when it did. */
static bool
migrate_wait(struct run *r, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        int st = 0;

        for (;;) {
                pid_t p = waitpid(r->pid, &st, WNOHANG);
                ck_assert_int_ge(p, 0);
                if (p == r->pid)
                        break;
                if (clock_mono_us() >= end)
                        return false;
                msleep(20);
        }
        r->code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        struct err e;
        size_t len;
        r->err = file_read_all(r->errp, &len, &e);
        ck_assert_msg(r->err != NULL, "%s", e.msg);
        return true;
}

static void
migrate_kill(struct run *r)
{
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
}

/* One --migrate to its end (bounded: 120 s, so a run that blocks fails the test). */
static struct run
migrate(const char *url, const char *dir, int lt)
{
        struct run r = migrate_start(url, dir, lt);
        if (!migrate_wait(&r, 120000)) {
                migrate_kill(&r);
                ck_abort_msg("--migrate did not end within 120 s");
        }
        return r;
}

static long
recorded(PGconn *c)
{
        return db_long(c, "SELECT count(*) FROM schema_migrations WHERE version = " TEST_MIGRATION,
                       NULL);
}

/* 1 valid, 0 invalid, -1 no such index (in the connection's schema). */
static long
index_valid(PGconn *c, const char *name)
{
        return db_long(c, "SELECT coalesce((SELECT i.indisvalid::int FROM pg_index i"
                          " JOIN pg_class x ON x.oid = i.indexrelid"
                          " WHERE x.relname = $1 AND x.relnamespace = current_schema()::regnamespace), -1)",
                       name);
}

static const char CIC_FILE[] =
        "-- eps:no-transaction\n"
        "-- an index built while the table takes writes; statements split here, not by libpq\n"
        "CREATE TABLE IF NOT EXISTS mig_big (id bigint PRIMARY KEY, v text, n int);\n"
        "INSERT INTO mig_big SELECT g, 'v;' || g, g % 7 FROM generate_series(1, 2000) g\n"
        "    ON CONFLICT DO NOTHING;\n"
        "/* a comment; with a semicolon */\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS mig_big_v ON mig_big (v);\n"
        "DO $body$ BEGIN\n"
        "    IF (SELECT count(*) FROM mig_big) <> 2000 THEN RAISE EXCEPTION 'rows;'; END IF;\n"
        "END $body$;\n";

START_TEST(test_no_transaction_migration_applies_once)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_once", url, sizeof(url));

        sql_dir_with("once", CIC_FILE, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        ck_assert_int_eq(index_valid(c, "mig_big_v"), 1);
        ck_assert_int_eq(recorded(c), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM mig_big", NULL), 2000);
        char *at = db_text(c, "SELECT applied_at::text FROM schema_migrations WHERE version = "
                              TEST_MIGRATION, NULL);
        free(r.err);

        /* the second run finds it recorded and runs nothing */
        r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        ck_assert_msg(strstr(r.err, "\"0 migration(s)"), "%s", r.err);
        char *again = db_text(c, "SELECT applied_at::text FROM schema_migrations WHERE version = "
                                 TEST_MIGRATION, NULL);
        ck_assert_str_eq(at, again);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_indexes WHERE tablename = 'mig_big'"
                                    " AND schemaname = current_schema()", NULL), 2);
        free(at);
        free(again);
        free(r.err);
        PQfinish(c);
}
END_TEST

START_TEST(test_no_transaction_migration_finished_after_failure)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_resume", url, sizeof(url));

        sql_dir_with("resume-base", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(c, "CREATE TABLE mig_dup (id bigint, code text)");
        db_exec(c, "INSERT INTO mig_dup SELECT g, 'c' || (g % 500) FROM generate_series(1, 1000) g");

        /* the unique index fails once it is begun: PostgreSQL leaves it INVALID */
        sql_dir_with("resume",
                     "-- eps:no-transaction\n"
                     "CREATE INDEX CONCURRENTLY IF NOT EXISTS mig_dup_id ON mig_dup (id);\n"
                     "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Mig_Dup_Code\"\n"
                     "    ON mig_dup (code);\n"
                     "SELECT 1;\n",
                     dir, sizeof(dir));
        r = migrate(url, dir, 5);
        ck_assert_int_ne(r.code, 0);
        ck_assert_msg(strstr(r.err, TEST_MIGRATION "_resume.sql line 3") &&
                              strstr(r.err, "could not create unique index"),
                      "%s", r.err);
        free(r.err);
        ck_assert_int_eq(index_valid(c, "mig_dup_id"), 1);
        ck_assert_int_eq(index_valid(c, "Mig_Dup_Code"), 0);
        ck_assert_int_eq(recorded(c), 0);

        /* IF NOT EXISTS alone would skip the invalid index and record the file */
        db_exec(c, "DELETE FROM mig_dup WHERE id > 500");
        r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        ck_assert_msg(strstr(r.err, "dropped the invalid index Mig_Dup_Code"), "%s", r.err);
        free(r.err);
        ck_assert_int_eq(index_valid(c, "mig_dup_id"), 1);
        ck_assert_int_eq(index_valid(c, "Mig_Dup_Code"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_indexes WHERE tablename = 'mig_dup'"
                                    " AND schemaname = current_schema()", NULL), 2);
        ck_assert_int_eq(recorded(c), 1);
        PQfinish(c);
}
END_TEST

START_TEST(test_no_transaction_migration_finished_after_cut_short)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_cut", url, sizeof(url));

        sql_dir_with("cut-base", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(c, "CREATE TABLE mig_cut (id bigint, v text)");
        db_exec(c, "INSERT INTO mig_cut SELECT g, md5(g::text) FROM generate_series(1, 1000) g");

        /* an old snapshot makes CREATE INDEX CONCURRENTLY wait half-way, its index INVALID */
        PGconn *old = PQconnectdb(url);
        ck_assert_msg(PQstatus(old) == CONNECTION_OK, "%s", PQerrorMessage(old));
        db_exec(old, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        ck_assert_int_ge(db_long(old, "SELECT count(*) FROM schema_migrations", NULL), 7);
        sql_dir_with("cut",
                     "-- eps:no-transaction\n"
                     "CREATE INDEX CONCURRENTLY IF NOT EXISTS mig_cut_v ON mig_cut (v);\n",
                     dir, sizeof(dir));
        r = migrate_start(url, dir, 5);
        const char *waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                              " AND query LIKE '%CREATE INDEX CONCURRENTLY IF NOT EXISTS mig_cut_v%'"
                              " AND pid <> pg_backend_pid()";
        long w = db_wait_long(c, waiting, 1, 60000);
        if (w != 1)
                migrate_kill(&r);
        ck_assert_int_eq(w, 1);
        ck_assert_int_eq(index_valid(c, "mig_cut_v"), 0);

        /* the process dies and its statement is cut short (a crash, a lost connection) */
        migrate_kill(&r);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                                    " FROM pg_stat_activity"
                                    " WHERE query LIKE '%CREATE INDEX CONCURRENTLY IF NOT EXISTS mig_cut_v%'"
                                    " AND pid <> pg_backend_pid()",
                                 NULL), 1);
        ck_assert_int_eq(db_wait_long(c, waiting, 0, 60000), 0);
        db_exec(old, "COMMIT");
        PQfinish(old);
        ck_assert_int_eq(index_valid(c, "mig_cut_v"), 0);
        ck_assert_int_eq(recorded(c), 0);

        /* the next run drops the INVALID index, builds it and records the file */
        r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        ck_assert_int_eq(index_valid(c, "mig_cut_v"), 1);
        ck_assert_int_eq(recorded(c), 1);
        PQfinish(c);
}
END_TEST

START_TEST(test_not_valid_then_validate)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_check", url, sizeof(url));

        sql_dir_with("check-base", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(c, "CREATE TABLE mig_rows (id int, n int)");
        db_exec(c, "INSERT INTO mig_rows VALUES (1, 5), (2, 0)");

        sql_dir_with("check",
                     "-- eps:no-transaction\n"
                     "-- the constraint at once for new rows (a short ACCESS EXCLUSIVE), then the\n"
                     "-- scan of the old ones under SHARE UPDATE EXCLUSIVE, which inserts do not wait for\n"
                     "DO $$\n"
                     "BEGIN\n"
                     "    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'mig_rows_n_positive'\n"
                     "                   AND conrelid = 'mig_rows'::regclass) THEN\n"
                     "        ALTER TABLE mig_rows ADD CONSTRAINT mig_rows_n_positive CHECK (n > 0) NOT VALID;\n"
                     "    END IF;\n"
                     "END\n"
                     "$$;\n"
                     "ALTER TABLE mig_rows VALIDATE CONSTRAINT mig_rows_n_positive;\n",
                     dir, sizeof(dir));
        r = migrate(url, dir, 5);
        ck_assert_int_ne(r.code, 0);
        ck_assert_msg(strstr(r.err, TEST_MIGRATION "_check.sql line 12") && strstr(r.err, "violated"),
                      "%s", r.err);
        free(r.err);
        /* NOT VALID already holds for new rows */
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_constraint WHERE conname = 'mig_rows_n_positive'"
                                    " AND NOT convalidated", NULL), 1);
        PGresult *bad = PQexec(c, "INSERT INTO mig_rows VALUES (3, 0)");
        ck_assert_int_eq(PQresultStatus(bad), PGRES_FATAL_ERROR);
        PQclear(bad);
        ck_assert_int_eq(recorded(c), 0);

        /* VALIDATE runs while a writer's transaction is open on the table */
        db_exec(c, "UPDATE mig_rows SET n = 1 WHERE id = 2");
        PGconn *w = PQconnectdb(url);
        ck_assert_msg(PQstatus(w) == CONNECTION_OK, "%s", PQerrorMessage(w));
        db_exec(w, "BEGIN");
        db_exec(w, "INSERT INTO mig_rows VALUES (4, 9)");
        r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(w, "COMMIT");
        PQfinish(w);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_constraint WHERE conname = 'mig_rows_n_positive'"
                                    " AND convalidated", NULL), 1);
        ck_assert_int_eq(recorded(c), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM mig_rows", NULL), 3);
        PQfinish(c);
}
END_TEST

/*
 * The partitions step that ends --migrate waits for its locks no longer than
 * migrate_lock_timeout either: behind an upkeep holding the partitions' lock
 * (its DETACH ... CONCURRENTLY may wait for old snapshots for long) it gives
 * up with the error instead of hanging, and the same command succeeds after.
 */
START_TEST(test_partition_step_waits_no_longer_than_lock_timeout)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_parts", url, sizeof(url));

        sql_dir_with("parts", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 1);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(c, "BEGIN");
        db_exec(c, "SELECT pg_advisory_xact_lock(hashtext('easypost-sync partitions'), 1)");
        r = migrate_start(url, dir, 1);
        bool ended = migrate_wait(&r, 120000);
        if (!ended)
                migrate_kill(&r);
        ck_assert_msg(ended, "--migrate still waits for the partitions' lock");
        ck_assert_int_ne(r.code, 0);
        ck_assert_msg(strstr(r.err, "creating partitions") && strstr(r.err, "run --migrate again"), "%s", r.err);
        free(r.err);
        db_exec(c, "COMMIT");
        r = migrate(url, dir, 1);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        PQfinish(c);
}
END_TEST

START_TEST(test_lock_timeout_gives_up_instead_of_queueing_inserts)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_lock", url, sizeof(url));

        sql_dir_with("lock-base", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        db_exec(c, "CREATE TABLE mig_locked (id int)");

        /* a long reader (a report, a refresh) holds ACCESS SHARE until it ends */
        PGconn *h = PQconnectdb(url);
        ck_assert_msg(PQstatus(h) == CONNECTION_OK, "%s", PQerrorMessage(h));
        db_exec(h, "BEGIN");
        ck_assert_int_eq(db_long(h, "SELECT count(*) FROM mig_locked", NULL), 0);

        sql_dir_with("lock", "ALTER TABLE mig_locked ADD COLUMN extra int;\n", dir, sizeof(dir));
        r = migrate_start(url, dir, 1);
        /* the ALTER waits for ACCESS EXCLUSIVE behind the reader; inserts queue behind the
         * ALTER until lock_timeout makes it give up, then go through */
        PGconn *ins = PQconnectdb(url);
        ck_assert_msg(PQstatus(ins) == CONNECTION_OK, "%s", PQerrorMessage(ins));
        db_exec(ins, "INSERT INTO mig_locked VALUES (1)");
        bool ended = migrate_wait(&r, 120000);
        if (!ended)
                migrate_kill(&r);
        ck_assert_msg(ended, "--migrate still waits for the reader's lock");
        ck_assert_int_ne(r.code, 0);
        ck_assert_msg(strstr(r.err, TEST_MIGRATION "_lock.sql") && strstr(r.err, "lock timeout") &&
                              strstr(r.err, "run --migrate again"),
                      "%s", r.err);
        free(r.err);
        ck_assert_int_eq(PQtransactionStatus(h), PQTRANS_INTRANS);
        db_exec(ins, "INSERT INTO mig_locked VALUES (2)");
        ck_assert_int_eq(recorded(c), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM information_schema.columns"
                                    " WHERE table_schema = current_schema() AND table_name = 'mig_locked'"
                                    " AND column_name = 'extra'", NULL), 0);

        /* once the reader is done, the same command applies it */
        db_exec(h, "COMMIT");
        r = migrate(url, dir, 1);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        ck_assert_int_eq(recorded(c), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM mig_locked WHERE extra IS NULL", NULL), 2);
        PQfinish(ins);
        PQfinish(h);
        PQfinish(c);
}
END_TEST

/* Sessions other than this one that are between two tries of the migration
 * lock (at most 3): runs waiting for it. A run tries, rolls back, sleeps
 * and begins again. */
#define LOCK_TRIED                                                                                 \
        "SELECT least(count(*), 3) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"           \
        " AND (query = 'ROLLBACK' OR query = 'SELECT pg_try_advisory_xact_lock(7351936043)')"

/* Replicas started together each run --migrate. While one builds an index
 * CONCURRENTLY, the others wait for the lock; a wait that held a snapshot
 * would be waited for by the build, which waits for them, and none would
 * end. Here three wait at once, from the first migration to the test's own
 * no-transaction file. */
START_TEST(test_concurrent_runs_with_an_index_built_concurrently)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_three", url, sizeof(url));

        sql_dir_with("three", CIC_FILE, dir, sizeof(dir));
        PGconn *h = PQconnectdb(url);
        ck_assert_msg(PQstatus(h) == CONNECTION_OK, "%s", PQerrorMessage(h));
        db_exec(h, "BEGIN");
        db_exec(h, "SELECT pg_advisory_xact_lock(7351936043)");
        struct run r[3];
        for (int i = 0; i < 3; i++)
                r[i] = migrate_start(url, dir, 5);
        /* all three are waiting for the lock the test holds */
        long w = db_wait_long(c, LOCK_TRIED, 3, 60000);
        db_exec(h, "COMMIT");
        PQfinish(h);
        bool ended[3];
        uint64_t end = clock_mono_us() + 120000000u; /* all three within 120 s */
        for (int i = 0; i < 3; i++) {
                uint64_t now = clock_mono_us();
                ended[i] = migrate_wait(&r[i], now < end ? (int)((end - now) / 1000) : 0);
        }
        for (int i = 0; i < 3; i++)
                if (!ended[i])
                        migrate_kill(&r[i]);
        ck_assert_int_eq(w, 3);
        for (int i = 0; i < 3; i++) {
                ck_assert_msg(ended[i], "--migrate %d did not end within 120 s of the others", i);
                ck_assert_msg(r[i].code == 0, "--migrate %d: %s", i, r[i].err);
                free(r[i].err);
        }
        ck_assert_int_eq(index_valid(c, "mig_big_v"), 1);
        ck_assert_int_eq(recorded(c), 1);
        PQfinish(c);
}
END_TEST

START_TEST(test_concurrent_migrate_waits_past_lock_timeout)
{
        char url[1024], dir[1024];
        PGconn *c = schema_new("mig_serial", url, sizeof(url));

        sql_dir_with("serial", NULL, dir, sizeof(dir));
        struct run r = migrate(url, dir, 5);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);

        /* another --migrate holds the advisory lock for longer than lock_timeout, and
         * the session's own lock_timeout (a role's setting) does not cut that wait short */
        char slow[1100];
        snprintf(slow, sizeof(slow), "%s options='-csearch_path=mig_serial -clock_timeout=1s'",
                 getenv("TEST_PG_CONNINFO"));
        PGconn *h = PQconnectdb(url);
        ck_assert_msg(PQstatus(h) == CONNECTION_OK, "%s", PQerrorMessage(h));
        db_exec(h, "BEGIN");
        db_exec(h, "SELECT pg_advisory_xact_lock(7351936043)");
        r = migrate_start(slow, dir, 1);
        ck_assert_int_eq(db_wait_long(c, LOCK_TRIED, 1, 60000), 1);
        msleep(2500); /* past lock_timeout: still waiting, not failed */
        ck_assert_int_eq(waitpid(r.pid, NULL, WNOHANG), 0);
        db_exec(h, "COMMIT");
        bool ended = migrate_wait(&r, 120000);
        if (!ended)
                migrate_kill(&r);
        ck_assert(ended);
        ck_assert_msg(r.code == 0, "--migrate: %s", r.err);
        free(r.err);
        PQfinish(h);
        PQfinish(c);
}
END_TEST

Suite *
migrate_suite(void)
{
        Suite *s = suite_create("migrate");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 600);
        tcase_add_test(tc, test_no_transaction_migration_applies_once);
        tcase_add_test(tc, test_no_transaction_migration_finished_after_failure);
        tcase_add_test(tc, test_no_transaction_migration_finished_after_cut_short);
        tcase_add_test(tc, test_not_valid_then_validate);
        tcase_add_test(tc, test_lock_timeout_gives_up_instead_of_queueing_inserts);
        tcase_add_test(tc, test_partition_step_waits_no_longer_than_lock_timeout);
        tcase_add_test(tc, test_concurrent_migrate_waits_past_lock_timeout);
        tcase_add_test(tc, test_concurrent_runs_with_an_index_built_concurrently);
        suite_add_tcase(s, tc);
        return s;
}
