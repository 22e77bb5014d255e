/*
 * itest.h - integration-test helpers: the real daemon as a child process,
 * HTTP through libcurl, checks through blocking libpq, PostgreSQL control
 * through tests/lib/pg.sh. Needs TEST_PG_CONNINFO (set by tests/integration/integration.sh).
 */
#ifndef EPS_ITEST_H
#define EPS_ITEST_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "testutil.h"

#define ITEST_SECRET "s\xc3\xa9" "cret" /* the official vectors' secret, NFKD-normalised by the daemon */

struct daemon {
        pid_t pid;
        unsigned port;
        char log[512];
};

/* A port on 127.0.0.1 that was free a moment ago. */
unsigned free_port(void);

/* The whole file as text (caller frees); fails the test when it cannot be read. */
char *itest_slurp(const char *path);

#define ITEST_PATH 512
/* Starts easypost-syncd as a child with DATABASE_URL=url, extra "NAME=value"
 * settings (NULL-terminated, may be NULL) and arguments (NULL-terminated).
 * Its stdout goes to a new file under TEST_TMPDIR whose path is put in out,
 * its stderr to one put in err, or to the same file when err is NULL (each
 * ITEST_PATH bytes). Returns its pid. */
pid_t syncd_spawn(const char *url, const char *const *env, const char *const *args, char *out, char *err);
/* Waits for a syncd_spawn child: its exit status, -1 when it did not exit. */
int syncd_wait(pid_t pid);

/* Starts easypost-syncd with DATABASE_URL, the test secret, a free port and
 * extra "NAME=value" settings (NULL-terminated, may be NULL); waits until
 * /healthz (and /readyz, see itest_wait_ready) answer 200. 0 on success. */
int daemon_start(struct daemon *d, const char *const *extra_env);
/* daemon_start waits for /readyz too unless this is false (database down on purpose). */
extern bool itest_wait_ready;
/* When set, http_req speaks HTTPS and trusts this CA file. */
extern const char *itest_tls_ca;
/* When set, daemon_start passes -c with this configuration file. */
extern const char *itest_config;
/* Sends sig and waits for exit; returns the exit status (or -1 if killed). */
int daemon_stop(struct daemon *d, int sig);
/* Polls GET path until it answers want (bounded by timeout_ms); true if it did. */
bool wait_status(unsigned port, const char *path, int want, int timeout_ms);

/* One HTTP request; returns the status (0 on transport error). resp may be NULL. */
int http_req(unsigned port, const char *method, const char *path, const char *const *headers,
             const void *body, size_t len, char *resp, size_t cap);
/* Signed POST of body to the webhook path; returns status. */
int post_event(unsigned port, const char *body, size_t len, char *resp, size_t cap);
void sign_body(const char *secret, const void *body, size_t len, char out[81]);

/* Sends n signed bodies with `conc` requests in flight; statuses[i] filled. */
void post_many(unsigned port, char **bodies, const size_t *lens, size_t n, unsigned conc,
               int *statuses);

/* Makes a small valid Event body; caller frees. */
char *make_event(const char *id, const char *description, const char *result_json);

PGconn *db_open(void);
long db_long(PGconn *c, const char *sql, const char *param);
void db_exec(PGconn *c, const char *sql);
/* The first value of the first row as text (caller frees; "" for NULL,
 * "<none>" without a row). */
char *db_text(PGconn *c, const char *sql, const char *param);
/* One sample of the daemon's /metrics, by its full name with labels. */
double daemon_metric(unsigned port, const char *name);
/* Polls daemon_metric until it is at least want or timeout; returns the last value. */
double daemon_metric_wait(unsigned port, const char *name, double want, int timeout_ms);
/* PostgreSQL control: "stop", "start", "stop-immediate". */
void pg_ctl(const char *what);

/* The fake EasyPost API (tests/fake/fake_easypost) as a child process. */
struct fake_api {
        pid_t pid;
        unsigned port;
        char url[64]; /* http://127.0.0.1:PORT/v2 */
};
int fake_start(struct fake_api *f, const char *api_key);
void fake_stop(struct fake_api *f);
/* POST (or GET with body NULL) to a control path; returns the status, resp filled. */
int fake_control(struct fake_api *f, const char *method, const char *path, const char *json,
                 char *resp, size_t cap);
/* Polls sql (one number) until it equals want or timeout; returns the last value. */
long db_wait_long(PGconn *c, const char *sql, long want, int timeout_ms);

Suite *ingest_suite(void);
Suite *sync_suite(void);
Suite *timers_suite(void);
Suite *ops_suite(void);
Suite *pacer_suite(void);
Suite *backfill_suite(void);
Suite *projector_suite(void);
Suite *faults_suite(void);
Suite *hostile_suite(void);
Suite *project_suite(void);
Suite *contention_suite(void);
Suite *dbconn_suite(void);
Suite *status_suite(void);
Suite *webhook_health_suite(void);
Suite *partitions_suite(void);
Suite *reconcile_suite(void);
Suite *migrate_suite(void);
Suite *converge_suite(void);
Suite *objects_suite(void);
Suite *reproject_suite(void);
Suite *search_suite(void);

#endif
