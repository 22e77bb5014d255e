/*
 * check_ops.c - what an operator relies on: /readyz following the database,
 * /metrics as Prometheus text whose counters move, SIGHUP secret rotation
 * under load, SIGTERM under load, a separate metrics listener, JSON logs.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

START_TEST(test_readyz_follows_database)
{
        struct daemon d;
        char resp[512];

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        ck_assert_int_eq(http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp)), 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"migrations\":\"ok\""));
        ck_assert_int_eq(http_req(d.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        pg_ctl("stop");
        ck_assert(wait_status(d.port, "/readyz", 503, 10000));
        http_req(d.port, "GET", "/readyz", NULL, NULL, 0, resp, sizeof(resp));
        ck_assert_ptr_nonnull(strstr(resp, "\"database\":\"down\""));
        ck_assert_int_eq(http_req(d.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        pg_ctl("start");
        ck_assert(wait_status(d.port, "/readyz", 200, 20000));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
}
END_TEST

/* /readyz's body holds want within timeout_ms (polled); the last body in resp. */
static bool
readyz_says(unsigned port, const char *want, char *resp, size_t cap, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        struct timespec pause = { 0, 50000000 };

        for (;;) {
                resp[0] = '\0';
                http_req(port, "GET", "/readyz", NULL, NULL, 0, resp, cap);
                if (strstr(resp, want))
                        return true;
                if (clock_mono_us() >= end)
                        return false;
                nanosleep(&pause, NULL);
        }
}

/*
 * A daemon restarted on a new build before its --migrate (a package upgrade
 * restarts it) is not ready while the newest migration is missing, and turns
 * ready once it is there, without a restart or a reconnect. In a database of
 * its own, so that a failure here leaves the other tests' database whole.
 */
START_TEST(test_readyz_ready_once_migrated_while_running)
{
        char ci[1024], env_url[1100], cmd[2048], resp[512];
        struct daemon d;
        PGconn *c = db_open();

        db_exec(c, "DROP DATABASE IF EXISTS eps_ops_pending");
        db_exec(c, "CREATE DATABASE eps_ops_pending");
        PQfinish(c);
        snprintf(ci, sizeof(ci), "%s dbname=eps_ops_pending", getenv("TEST_PG_CONNINFO"));
        snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' '%s/easypost-syncd' --migrate 2>/dev/null", ci,
                 getenv("abs_top_builddir"));
        ck_assert_int_eq(system(cmd), 0);
        c = PQconnectdb(ci);
        ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
        db_exec(c, "CREATE TABLE held AS SELECT * FROM schema_migrations"
                   " WHERE version = (SELECT max(version) FROM schema_migrations)");
        db_exec(c, "DELETE FROM schema_migrations WHERE version = (SELECT version FROM held)");
        snprintf(env_url, sizeof(env_url), "DATABASE_URL=%s", ci);
        const char *env[] = { env_url, NULL };
        itest_wait_ready = false;
        ck_assert_int_eq(daemon_start(&d, env), 0);
        itest_wait_ready = true;
        ck_assert_msg(readyz_says(d.port, "\"migrations\":\"pending\"", resp, sizeof(resp), 30000), "%s", resp);
        ck_assert_ptr_nonnull(strstr(resp, "\"status\":\"not ready\""));
        /* what --migrate leaves */
        db_exec(c, "INSERT INTO schema_migrations SELECT * FROM held");
        ck_assert(wait_status(d.port, "/readyz", 200, 30000));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
        c = db_open();
        db_exec(c, "DROP DATABASE eps_ops_pending");
        PQfinish(c);
}
END_TEST

/* Every sample line is name{labels} value; every name has HELP and TYPE. */
static double
prom_value(const char *text, const char *series)
{
        const char *p = text;
        size_t n = strlen(series);

        while ((p = strstr(p, series)) != NULL) {
                if ((p == text || p[-1] == '\n') && p[n] == ' ')
                        return atof(p + n + 1);
                p += n;
        }
        return -1;
}

/* Ours, or one of the Prometheus standard process metrics. */
static bool
ours(const char *name)
{
        return strncmp(name, "easypost_sync_", 14) == 0 || strncmp(name, "process_", 8) == 0;
}

/* "NAME TYPE" of a # TYPE line: counters end in _total, nothing else does,
 * and a counter's family (NAME without _total) is no other metric's name,
 * so the text parses the same as OpenMetrics. */
static void
check_type_name(const char *text, const char *decl)
{
        size_t n = strcspn(decl, " ");
        bool total = n > 6 && strncmp(decl + n - 6, "_total", 6) == 0;
        bool counter = strcmp(decl + n, " counter") == 0;

        ck_assert_msg(total == counter, "counter iff _total: %s", decl);
        if (counter) {
                char family[220];
                snprintf(family, sizeof(family), "# TYPE %.*s ", (int)(n - 6), decl);
                ck_assert_msg(strstr(text, family) == NULL, "family of %s collides", decl);
        }
}

static void
check_exposition(const char *text)
{
        char *copy = xstrdup(text), *save = NULL;
        int samples = 0;

        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (line[0] == '#') {
                        ck_assert_msg((strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) &&
                                              ours(line + 7),
                                      "bad comment: %s", line);
                        if (strncmp(line, "# TYPE ", 7) == 0)
                                check_type_name(text, line + 7);
                        continue;
                }
                char name[200];
                size_t k = strcspn(line, "{ ");
                ck_assert_msg(k < sizeof(name) && ours(line), "bad line: %s", line);
                memcpy(name, line, k);
                name[k] = '\0';
                const char *sp = strrchr(line, ' ');
                ck_assert_ptr_nonnull(sp);
                char *end;
                strtod(sp + 1, &end);
                ck_assert_msg(*end == '\0', "bad value: %s", line);
                if (line[k] == '{')
                        ck_assert_msg(strchr(line, '}') != NULL && strchr(line, '}') < sp, "labels: %s", line);
                /* histogram series belong to their base name */
                char base[200];
                snprintf(base, sizeof(base), "%s", name);
                const char *suffixes[] = { "_bucket", "_sum", "_count" };
                for (int i = 0; i < 3; i++) {
                        size_t bl = strlen(base), sl = strlen(suffixes[i]);
                        if (bl > sl && strcmp(base + bl - sl, suffixes[i]) == 0) {
                                char t[260];
                                snprintf(t, sizeof(t), "# TYPE %.*s histogram", (int)(bl - sl), base);
                                if (strstr(text, t)) {
                                        base[bl - sl] = '\0';
                                        break;
                                }
                        }
                }
                char help[260], type[260];
                snprintf(help, sizeof(help), "# HELP %s ", base);
                snprintf(type, sizeof(type), "# TYPE %s ", base);
                ck_assert_msg(strstr(text, help) && strstr(text, type), "no HELP/TYPE for %s", base);
                samples++;
        }
        ck_assert_int_gt(samples, 30);
        free(copy);
}

START_TEST(test_metrics_exposition_moves_with_traffic)
{
        struct daemon d;
        static char m1[200000], m2[200000];
        const char *series = "easypost_sync_events_total{description=\"batch.created\",outcome=\"stored\"}";

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        ck_assert_int_eq(http_req(d.port, "GET", "/metrics", NULL, NULL, 0, m1, sizeof(m1)), 200);
        check_exposition(m1);
        double req0 = prom_value(m1, "easypost_sync_http_requests_total{endpoint=\"webhook\",code=\"2xx\"}");
        double lat0 = prom_value(m1, "easypost_sync_ack_latency_seconds_count");
        const char *parse_rejects = "easypost_sync_webhooks_rejected_total{reason=\"parse\"}";
        double rej0 = prom_value(m1, parse_rejects);
        for (int i = 0; i < 7; i++) {
                char id[40];
                snprintf(id, sizeof(id), "evt_metrics_%d_%d", (int)getpid(), i);
                char *b = make_event(id, "batch.created", NULL);
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200); /* duplicate */
                free(b);
        }
        ck_assert_int_eq(post_event(d.port, "nope", 4, NULL, 0), 400);
        ck_assert_int_eq(http_req(d.port, "GET", "/metrics", NULL, NULL, 0, m2, sizeof(m2)), 200);
        check_exposition(m2);
        ck_assert_double_eq(prom_value(m2, "easypost_sync_http_requests_total{endpoint=\"webhook\",code=\"2xx\"}"),
                            req0 + 14);
        ck_assert_double_eq(prom_value(m2, "easypost_sync_ack_latency_seconds_count"), lat0 + 14);
        ck_assert_double_eq(prom_value(m2, series), 7);
        ck_assert_double_eq(prom_value(m2, "easypost_sync_events_total{description=\"batch.created\",outcome=\"duplicate\"}"), 7);
        ck_assert_double_ge(prom_value(m2, "easypost_sync_http_requests_total{endpoint=\"webhook\",code=\"4xx\"}"), 1);
        ck_assert_double_ge(prom_value(m2, "easypost_sync_signature_matches_total{slot=\"0\"}"), 15);
        ck_assert_double_eq(prom_value(m2, parse_rejects), rej0 + 1);
        ck_assert_double_ge(prom_value(m2, "easypost_sync_batch_events_sum"), 7);
        ck_assert_double_eq(prom_value(m2, "easypost_sync_batch_events_count"),
                            prom_value(m2, "easypost_sync_batches_total"));
        /* the Prometheus standard process metrics, from /proc */
        double now = (double)clock_real_ms() / 1000.0;
        ck_assert_double_gt(prom_value(m2, "process_resident_memory_bytes"), 1e6);
        ck_assert_double_ge(prom_value(m2, "process_virtual_memory_bytes"),
                            prom_value(m2, "process_resident_memory_bytes"));
        ck_assert_double_ge(prom_value(m2, "process_open_fds"), 3);
        ck_assert_double_le(prom_value(m2, "process_open_fds"), prom_value(m2, "process_max_fds"));
        ck_assert_double_ge(prom_value(m2, "process_cpu_seconds_total"),
                            prom_value(m1, "process_cpu_seconds_total"));
        ck_assert_double_le(prom_value(m2, "process_start_time_seconds"), now + 1);
        ck_assert_double_ge(prom_value(m2, "process_start_time_seconds"), now - 300);
        ck_assert_ptr_null(strstr(m2, "easypost_sync_process_"));
        /* /readyz is 200 with one connection up; the second may still be connecting */
        ck_assert_double_eq(daemon_metric_wait(d.port, "easypost_sync_db_connections{state=\"up\"}", 2, 20000),
                            2);
        ck_assert_ptr_null(strstr(m2, ITEST_SECRET));
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
}
END_TEST

/* Child process: sends n events signed with the test secret; writes statuses. */
static pid_t
load_in_child(unsigned port, const char *prefix, int n, const char *out)
{
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char **bodies = xcalloc((size_t)n, sizeof(char *));
                size_t *lens = xcalloc((size_t)n, sizeof(size_t));
                int *st = xcalloc((size_t)n, sizeof(int));
                for (int i = 0; i < n; i++) {
                        char id[64];
                        snprintf(id, sizeof(id), "evt_%s_%05d", prefix, i);
                        bodies[i] = make_event(id, "batch.created", NULL);
                        lens[i] = strlen(bodies[i]);
                }
                post_many(port, bodies, lens, (size_t)n, 16, st);
                FILE *f = fopen(out, "w");
                for (int i = 0; f && i < n; i++)
                        fprintf(f, "%d\n", st[i]);
                if (f)
                        fclose(f);
                _exit(0);
        }
        return pid;
}

static int *
read_statuses(const char *path, int n)
{
        int *st = xcalloc((size_t)n, sizeof(int));
        FILE *f = fopen(path, "r");
        ck_assert_ptr_nonnull(f);
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(fscanf(f, "%d", &st[i]), 1);
        fclose(f);
        return st;
}

START_TEST(test_sighup_rotates_secret_under_load)
{
        enum { N = 3000 };
        struct daemon d;
        char *secrets = tmpfile_with(ITEST_SECRET "\n");
        char env1[300], out[] = "/tmp/eps-ops-load-XXXXXX";
        snprintf(env1, sizeof(env1), "EASYPOST_WEBHOOK_SECRET_FILE=%s", secrets);
        const char *env[] = { "EASYPOST_WEBHOOK_SECRET=", env1, NULL };
        int st;

        close(mkstemp(out));
        ck_assert_int_eq(daemon_start(&d, env), 0);
        /* rotation step 1: the new secret first, the old one still accepted */
        pid_t child = load_in_child(d.port, "hup", N, out);
        rewrite(secrets, "rotated-secret\n" ITEST_SECRET "\n");
        for (int i = 0; i < 20; i++) {
                kill(d.pid, SIGHUP);
                wait_status(d.port, "/nowhere", 200, 25); /* pace the signals */
        }
        ck_assert_int_eq(waitpid(child, &st, 0), child);
        int *codes = read_statuses(out, N);
        for (int i = 0; i < N; i++)
                ck_assert_msg(codes[i] == 200, "request %d got %d during reloads", i, codes[i]);
        free(codes);
        /* step 2: the old secret retired */
        rewrite(secrets, "rotated-secret\n");
        kill(d.pid, SIGHUP);
        char *b = make_event("evt_hup_after", "batch.created", NULL);
        uint64_t end = clock_mono_us() + 20000000u;
        while (post_event(d.port, b, strlen(b), NULL, 0) != 401 && clock_mono_us() < end)
                ;
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 401);
        char sig[81], hdr[120];
        sign_body("rotated-secret", b, strlen(b), sig);
        snprintf(hdr, sizeof(hdr), "X-Hmac-Signature: %s", sig);
        const char *h[] = { "Content-Type: application/json", hdr, NULL };
        ck_assert_int_eq(http_req(d.port, "POST", "/webhooks/easypost", h, b, strlen(b), NULL, 0), 200);
        /* a broken file keeps the running configuration */
        rewrite(secrets, "");
        kill(d.pid, SIGHUP);
        /* once the daemon has refused the reload, the running secret still works */
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "grep -q 'reload refused' '%s'", d.log);
        end = clock_mono_us() + 20000000u;
        while (system(cmd) != 0 && clock_mono_us() < end)
                wait_status(d.port, "/nowhere", 200, 50);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_int_eq(http_req(d.port, "POST", "/webhooks/easypost", h, b, strlen(b), NULL, 0), 200);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(b);
        unlink(out);
        unlink(secrets);
        free(secrets);
}
END_TEST

START_TEST(test_sigterm_under_load_answers_are_stored)
{
        enum { N = 4000 };
        struct daemon d;
        char out[] = "/tmp/eps-ops-term-XXXXXX";
        PGconn *c = db_open();
        int st;

        close(mkstemp(out));
        db_exec(c, "DELETE FROM webhook_events WHERE event_id LIKE 'evt_term_%'");
        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        pid_t child = load_in_child(d.port, "term", N, out);
        /* let the load get going, then ask the daemon to stop */
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 300) FROM webhook_events "
                                         "WHERE event_id LIKE 'evt_term_%'", 300, 20000), 300);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        ck_assert_int_eq(waitpid(child, &st, 0), child);
        int *codes = read_statuses(out, N);
        int ok = 0, other = 0;
        for (int i = 0; i < N; i++) {
                if (codes[i] == 200) {
                        char id[64];
                        snprintf(id, sizeof(id), "evt_term_%05d", i);
                        ck_assert_msg(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1", id) == 1,
                                      "%s answered 200 but not stored", id);
                        ok++;
                } else {
                        ck_assert_msg(codes[i] == 0 || codes[i] == 503, "unexpected %d", codes[i]);
                        other++;
                }
        }
        fprintf(stderr, "SIGTERM under load: %d answered 200 (all stored), %d refused or cut off\n", ok, other);
        ck_assert_int_ge(ok, 300);
        free(codes);
        unlink(out);
        PQfinish(c);
}
END_TEST

START_TEST(test_metrics_listen_and_json_logs)
{
        struct daemon d;
        unsigned mport = free_port();
        char env1[64];

        snprintf(env1, sizeof(env1), "EASYPOST_SYNC_METRICS_LISTEN=127.0.0.1:%u", mport);
        const char *env[] = { env1, "EASYPOST_SYNC_LOG_FORMAT=json", NULL };
        itest_wait_ready = false; /* /readyz lives on the ops port here */
        int started = daemon_start(&d, env);
        itest_wait_ready = true;
        ck_assert_int_eq(started, 0);
        ck_assert(wait_status(mport, "/readyz", 200, 20000));
        ck_assert_int_eq(http_req(mport, "GET", "/metrics", NULL, NULL, 0, NULL, 0), 200);
        ck_assert_int_eq(http_req(mport, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        ck_assert_int_eq(http_req(d.port, "GET", "/metrics", NULL, NULL, 0, NULL, 0), 404);
        ck_assert_int_eq(http_req(mport, "POST", "/webhooks/easypost", NULL, "{}", 2, NULL, 0), 404);
        ck_assert_int_eq(post_event(d.port, "x", 1, NULL, 0), 400);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        FILE *f = fopen(d.log, "r");
        char line[4096];
        int n = 0;
        while (f && fgets(line, sizeof(line), f)) {
                json_error_t je;
                json_t *o = json_loads(line, 0, &je);
                ck_assert_msg(o != NULL, "log line is not JSON: %s", line);
                ck_assert(json_is_string(json_object_get(o, "ts")) && json_is_string(json_object_get(o, "lvl")) &&
                          json_is_string(json_object_get(o, "msg")));
                json_decref(o);
                n++;
        }
        if (f)
                fclose(f);
        ck_assert_int_ge(n, 3);
}
END_TEST

/* A TCP connection to the daemon that has sent nothing yet. */
static int
tcp_open(unsigned port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

/* Sends GET path on fd; the answer's status, or 0 when none came within ms. */
static int
tcp_get(int fd, const char *path, int ms)
{
        char req[256], resp[512];
        size_t got = 0;
        uint64_t end = clock_mono_us() + (uint64_t)ms * 1000u;

        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
        ck_assert_int_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
        while (got < 12 && clock_mono_us() < end) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, 50) <= 0)
                        continue;
                ssize_t n = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
                if (n <= 0)
                        return 0;
                got += (size_t)n;
        }
        resp[got] = '\0';
        return got >= 12 && strncmp(resp, "HTTP/1.1 ", 9) == 0 ? atoi(resp + 9) : 0;
}

/*
 * max_connections counts open client connections: with 3 open, the next one
 * waits in the backlog; as they close it is served. Three rounds: a count
 * that missed a close (or counted one twice) would stall or never pause.
 */
START_TEST(test_connection_cap_counts_open_connections)
{
        struct daemon d;
        static char m[200000];
        const char *env[] = { "EASYPOST_SYNC_MAX_CONNECTIONS=3", NULL };

        ck_assert_int_eq(daemon_start(&d, env), 0);
        for (int round = 0; round < 3; round++) {
                int idle[3];
                for (int i = 0; i < 3; i++)
                        idle[i] = tcp_open(d.port);
                int probe = tcp_open(d.port); /* accepted by the kernel, waits for the daemon */
                ck_assert_msg(tcp_get(probe, "/healthz", 1000) == 0,
                              "round %d: answered with max_connections open", round);
                for (int i = 0; i < 3; i++)
                        close(idle[i]);
                ck_assert_int_eq(tcp_get(probe, "/healthz", 20000), 200);
                close(probe);
        }
        ck_assert_int_eq(http_req(d.port, "GET", "/metrics", NULL, NULL, 0, m, sizeof(m)), 200);
        ck_assert_double_ge(prom_value(m, "easypost_sync_http_accept_pauses_total"), 3);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
}
END_TEST

Suite *
ops_suite(void)
{
        Suite *s = suite_create("ops");
        TCase *tc = tcase_create("ops");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_readyz_follows_database);
        tcase_add_test(tc, test_readyz_ready_once_migrated_while_running);
        tcase_add_test(tc, test_metrics_exposition_moves_with_traffic);
        tcase_add_test(tc, test_sighup_rotates_secret_under_load);
        tcase_add_test(tc, test_sigterm_under_load_answers_are_stored);
        tcase_add_test(tc, test_metrics_listen_and_json_logs);
        tcase_add_test(tc, test_connection_cap_counts_open_connections);
        suite_add_tcase(s, tc);
        return s;
}
