/* itest.c - see itest.h. */
#include "itest.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sig.h"
#include "util.h"

unsigned
free_port(void)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sa);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        close(fd);
        return ntohs(sa.sin_port);
}

static const char *
builddir(void)
{
        const char *s = getenv("abs_top_builddir");
        return s && s[0] ? s : ".";
}

static void
sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

bool
wait_status(unsigned port, const char *path, int want, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;

        while (clock_mono_us() < end) {
                if (http_req(port, "GET", path, NULL, NULL, 0, NULL, 0) == want)
                        return true;
                sleep_ms(20);
        }
        return false;
}

bool itest_wait_ready = true;
const char *itest_tls_ca = NULL;
const char *itest_config = NULL;

int
daemon_start(struct daemon *d, const char *const *extra_env)
{
        static int seq;
        const char *ci = getenv("TEST_PG_CONNINFO");
        const char *tmp = getenv("TEST_TMPDIR");

        memset(d, 0, sizeof(*d));
        ck_assert_msg(ci != NULL, "TEST_PG_CONNINFO is not set: run through tests/integration/integration.sh");
        d->port = free_port();
        snprintf(d->log, sizeof(d->log), "%s/daemon-%d-%d.log", tmp ? tmp : "/tmp", (int)getpid(),
                 ++seq);
        d->pid = fork();
        ck_assert_int_ge(d->pid, 0);
        if (d->pid == 0) {
                char buf[600];
                int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
                if (fd >= 0) {
                        dup2(fd, 2);
                        dup2(fd, 1);
                        close(fd);
                }
                setenv("DATABASE_URL", ci, 1);
                setenv("EASYPOST_WEBHOOK_SECRET", ITEST_SECRET, 1);
                snprintf(buf, sizeof(buf), "127.0.0.1:%u", d->port);
                setenv("EASYPOST_SYNC_LISTEN", buf, 1);
                setenv("EASYPOST_SYNC_LOG_LEVEL", "info", 0);
                for (const char *const *e = extra_env; e && *e; e++) {
                        const char *eq = strchr(*e, '=');
                        snprintf(buf, sizeof(buf), "%.*s", (int)(eq - *e), *e);
                        setenv(buf, eq + 1, 1);
                }
                snprintf(buf, sizeof(buf), "%s/easypost-syncd", builddir());
                const char *wrap = getenv("TEST_DAEMON_WRAPPER"); /* e.g. valgrind */
                /* without a file the argument list ends at its "-c" */
                const char *opt = itest_config ? "-c" : NULL;
                if (wrap && wrap[0])
                        execl("/bin/sh", "sh", "-c", "exec $TEST_DAEMON_WRAPPER \"$0\" \"$@\"", buf,
                              opt, itest_config, (char *)NULL);
                else
                        execl(buf, "easypost-syncd", opt, itest_config, (char *)NULL);
                _exit(127);
        }
        uint64_t end = clock_mono_us() + 20000000u;
        while (http_req(d->port, "GET", "/healthz", NULL, NULL, 0, NULL, 0) == 0 && clock_mono_us() < end)
                sleep_ms(20); /* any answer: the loop runs (healthz may live on metrics_listen) */
        if (clock_mono_us() >= end ||
            (itest_wait_ready && !wait_status(d->port, "/readyz", 200, 20000))) {
                daemon_stop(d, SIGKILL);
                return -1;
        }
        return 0;
}

int
daemon_stop(struct daemon *d, int sig)
{
        int st = 0;

        if (d->pid <= 0)
                return -1;
        kill(d->pid, sig);
        while (waitpid(d->pid, &st, 0) < 0 && errno == EINTR)
                ;
        d->pid = 0;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct resp_buf {
        char *p;
        size_t cap, len;
};

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
        struct resp_buf *r = arg;
        size_t n = size * nmemb;

        if (r && r->p && r->cap > 1) {
                size_t room = r->cap - 1 - r->len;
                size_t k = n < room ? n : room;
                memcpy(r->p + r->len, ptr, k);
                r->len += k;
                r->p[r->len] = '\0';
        }
        return n;
}

int
http_req(unsigned port, const char *method, const char *path, const char *const *headers,
         const void *body, size_t len, char *resp, size_t cap)
{
        CURL *c = curl_easy_init();
        struct curl_slist *hl = NULL;
        struct resp_buf rb = { resp, cap, 0 };
        char url[600];
        long status = 0;

        if (resp && cap)
                resp[0] = '\0';
        snprintf(url, sizeof(url), "%s://127.0.0.1:%u%s", itest_tls_ca ? "https" : "http", port, path);
        if (itest_tls_ca)
                curl_easy_setopt(c, CURLOPT_CAINFO, itest_tls_ca);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &rb);
        hl = curl_slist_append(hl, "Expect:");
        for (const char *const *h = headers; h && *h; h++)
                hl = curl_slist_append(hl, *h);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
        if (body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
        }
        if (strcmp(method, "HEAD") == 0)
                curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        if (curl_easy_perform(c) == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(hl);
        curl_easy_cleanup(c);
        return (int)status;
}

void
sign_body(const char *secret, const void *body, size_t len, char out[81])
{
        struct err e;
        const char *s[1] = { secret };
        struct sig_keyset *ks = sig_keyset_new(s, 1, &e);

        ck_assert_ptr_nonnull(ks);
        sig_sign(ks, 0, body, len, out);
        sig_keyset_free(ks);
}

int
post_event(unsigned port, const char *body, size_t len, char *resp, size_t cap)
{
        char sig[81], hdr[120];
        const char *h[3] = { "Content-Type: application/json", hdr, NULL };

        sign_body(ITEST_SECRET, body, len, sig);
        snprintf(hdr, sizeof(hdr), "X-Hmac-Signature: %s", sig);
        return http_req(port, "POST", "/webhooks/easypost", h, body, len, resp, cap);
}

struct xfer {
        CURL *c;
        struct curl_slist *hl;
        size_t idx;
};

void
post_many(unsigned port, char **bodies, const size_t *lens, size_t n, unsigned conc, int *statuses)
{
        CURLM *m = curl_multi_init();
        struct xfer *x = calloc(conc, sizeof(*x));
        char url[100];
        size_t next = 0, done = 0;

        snprintf(url, sizeof(url), "http://127.0.0.1:%u/webhooks/easypost", port);
        curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)conc);
        for (;;) {
                for (unsigned i = 0; i < conc && next < n; i++) {
                        if (x[i].c)
                                continue;
                        char sig[81], hdr[120];
                        sign_body(ITEST_SECRET, bodies[next], lens[next], sig);
                        snprintf(hdr, sizeof(hdr), "X-Hmac-Signature: %s", sig);
                        x[i].c = curl_easy_init();
                        x[i].idx = next;
                        x[i].hl = curl_slist_append(NULL, "Content-Type: application/json");
                        x[i].hl = curl_slist_append(x[i].hl, "Expect:");
                        x[i].hl = curl_slist_append(x[i].hl, hdr);
                        curl_easy_setopt(x[i].c, CURLOPT_URL, url);
                        curl_easy_setopt(x[i].c, CURLOPT_HTTPHEADER, x[i].hl);
                        curl_easy_setopt(x[i].c, CURLOPT_POSTFIELDS, bodies[next]);
                        curl_easy_setopt(x[i].c, CURLOPT_POSTFIELDSIZE, (long)lens[next]);
                        curl_easy_setopt(x[i].c, CURLOPT_PRIVATE, &x[i]);
                        curl_easy_setopt(x[i].c, CURLOPT_NOSIGNAL, 1L);
                        curl_easy_setopt(x[i].c, CURLOPT_TIMEOUT_MS, 60000L);
                        curl_easy_setopt(x[i].c, CURLOPT_WRITEFUNCTION, write_cb);
                        curl_easy_setopt(x[i].c, CURLOPT_WRITEDATA, NULL);
                        curl_multi_add_handle(m, x[i].c);
                        next++;
                }
                int running = 0;
                curl_multi_perform(m, &running);
                CURLMsg *msg;
                int left;
                while ((msg = curl_multi_info_read(m, &left)) != NULL) {
                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        struct xfer *xf;
                        long st = 0;
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&xf);
                        if (msg->data.result == CURLE_OK)
                                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &st);
                        statuses[xf->idx] = (int)st;
                        curl_multi_remove_handle(m, xf->c);
                        curl_easy_cleanup(xf->c);
                        curl_slist_free_all(xf->hl);
                        xf->c = NULL;
                        done++;
                }
                if (done == n)
                        break;
                curl_multi_poll(m, NULL, 0, 100, NULL);
        }
        free(x);
        curl_multi_cleanup(m);
}

char *
make_event(const char *id, const char *description, const char *result_json)
{
        size_t n = strlen(id) + strlen(description) + (result_json ? strlen(result_json) : 4) + 256;
        char *b = xmalloc(n);

        snprintf(b, n,
                 "{\"id\":\"%s\",\"object\":\"Event\",\"mode\":\"test\",\"description\":\"%s\","
                 "\"created_at\":\"2025-01-02T03:04:05.678Z\",\"previous_attributes\":{},"
                 "\"result\":%s}",
                 id, description, result_json ? result_json : "null");
        return b;
}

PGconn *
db_open(void)
{
        PGconn *c = PQconnectdb(getenv("TEST_PG_CONNINFO"));

        ck_assert_msg(PQstatus(c) == CONNECTION_OK, "db: %s", PQerrorMessage(c));
        return c;
}

long
db_long(PGconn *c, const char *sql, const char *param)
{
        const char *p[1] = { param };
        PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, p, NULL, NULL, 0);

        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
        long v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? atol(PQgetvalue(r, 0, 0)) : -1;
        PQclear(r);
        return v;
}

char *
db_text(PGconn *c, const char *sql, const char *param)
{
        const char *p[1] = { param };
        PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, p, NULL, NULL, 0);

        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
        char *s = xstrdup(PQntuples(r) ? PQgetvalue(r, 0, 0) : "<none>");
        PQclear(r);
        return s;
}

double
daemon_metric(unsigned port, const char *name)
{
        char buf[65536];
        size_t n = strlen(name);

        ck_assert_int_eq(http_req(port, "GET", "/metrics", NULL, NULL, 0, buf, sizeof(buf)), 200);
        for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                if (strncmp(l, name, n) == 0 && l[n] == ' ')
                        return strtod(l + n + 1, NULL);
        ck_abort_msg("metric %s not found", name);
        return -1;
}

double
daemon_metric_wait(unsigned port, const char *name, double want, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        double v = daemon_metric(port, name);

        while (v < want && clock_mono_us() < end) {
                wait_status(port, "/healthz", 200, 100);
                usleep(50 * 1000);
                v = daemon_metric(port, name);
        }
        return v;
}

void
db_exec(PGconn *c, const char *sql)
{
        PGresult *r = PQexec(c, sql);

        ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                      "%s: %s", sql, PQerrorMessage(c));
        PQclear(r);
}

void
pg_ctl(const char *what)
{
        char cmd[1200];
        const char *dir = getenv("TEST_PG_DIR"), *port = getenv("TEST_PG_PORT");

        ck_assert_msg(dir && port, "TEST_PG_DIR/TEST_PG_PORT not set");
        if (strcmp(what, "start") == 0)
                snprintf(cmd, sizeof(cmd), "%s start '%s' %s", srcdir_path("tests/lib/pg.sh"), dir, port);
        else
                snprintf(cmd, sizeof(cmd), "%s stop '%s' %s", srcdir_path("tests/lib/pg.sh"), dir,
                         strcmp(what, "stop-immediate") == 0 ? "immediate" : "fast");
        ck_assert_int_eq(system(cmd), 0);
}

int
fake_start(struct fake_api *f, const char *api_key)
{
        int fds[2];
        char line[64] = "";

        memset(f, 0, sizeof(*f));
        ck_assert_int_eq(pipe(fds), 0);
        f->pid = fork();
        ck_assert_int_ge(f->pid, 0);
        if (f->pid == 0) {
                char bin[600], log[600];
                const char *tmp = getenv("TEST_TMPDIR");
                snprintf(bin, sizeof(bin), "%s/tests/fake/fake_easypost", builddir());
                snprintf(log, sizeof(log), "%s/fake-%d.log", tmp ? tmp : "/tmp", (int)getpid());
                int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (lfd >= 0) {
                        dup2(lfd, 2);
                        close(lfd);
                }
                dup2(fds[1], 1);
                close(fds[0]);
                close(fds[1]);
                execl(bin, "fake_easypost", "--listen", "127.0.0.1:0", "--api-key", api_key,
                      "--no-fixtures", (char *)NULL);
                _exit(127);
        }
        close(fds[1]);
        FILE *in = fdopen(fds[0], "r");
        if (in == NULL || fgets(line, sizeof(line), in) == NULL || sscanf(line, "port=%u", &f->port) != 1) {
                if (in)
                        fclose(in);
                fake_stop(f);
                return -1;
        }
        fclose(in);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u/v2", f->port);
        return 0;
}

void
fake_stop(struct fake_api *f)
{
        int st;

        if (f->pid > 0) {
                kill(f->pid, SIGTERM);
                while (waitpid(f->pid, &st, 0) < 0 && errno == EINTR)
                        ;
        }
        f->pid = 0;
}

int
fake_control(struct fake_api *f, const char *method, const char *path, const char *json,
             char *resp, size_t cap)
{
        const char *h[] = { "Content-Type: application/json", NULL };

        return http_req(f->port, method, path, h, json, json ? strlen(json) : 0, resp, cap);
}

long
db_wait_long(PGconn *c, const char *sql, long want, int timeout_ms)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        long v;

        for (;;) {
                v = db_long(c, sql, NULL);
                if (v == want || clock_mono_us() > end)
                        return v;
                sleep_ms(50);
        }
}

char *
itest_slurp(const char *path)
{
        struct err e;
        size_t len;
        char *s = file_read_all(path, &len, &e);

        ck_assert_msg(s != NULL, "%s: %s", path, e.msg);
        return s;
}

pid_t
syncd_spawn(const char *url, const char *const *env, const char *const *args, char *out, char *err)
{
        static int seq;
        const char *tmp = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
        const char *argv[16] = { "easypost-syncd" };
        char bin[512];
        size_t na = 1;

        snprintf(out, ITEST_PATH, "%s/syncd-%d-%d.out", tmp, (int)getpid(), ++seq);
        if (err)
                snprintf(err, ITEST_PATH, "%s/syncd-%d-%d.log", tmp, (int)getpid(), seq);
        snprintf(bin, sizeof(bin), "%s/easypost-syncd", getenv("abs_top_builddir"));
        for (const char *const *a = args; a && *a && na < ARRAY_LEN(argv) - 1; a++)
                argv[na++] = *a;
        argv[na] = NULL;
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int e = err ? open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644) : o;
                if (o < 0 || e < 0)
                        _exit(127);
                dup2(o, 1);
                dup2(e, 2);
                setenv("DATABASE_URL", url, 1);
                for (const char *const *v = env; v && *v; v++)
                        putenv((char *)*v);
                execv(bin, (char *const *)argv);
                _exit(127);
        }
        return pid;
}

int
syncd_wait(pid_t pid)
{
        int st = 0;

        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
