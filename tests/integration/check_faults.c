/*
 * check_faults.c - the promise under faults: kill -9 under load, PostgreSQL
 * stopped hard or its backends terminated mid-load, a lock that stalls
 * commits, slow, idle and vanishing clients; TLS and Basic auth.
 * Every fault test prints sent / acknowledged / stored / lost.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <curl/curl.h>

#include "itest.h"
#include "util.h"

static long
proc_rss_kb(pid_t pid)
{
        char path[64], line[256];
        long kb = -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
                        break;
        if (f)
                fclose(f);
        return kb;
}

/* The daemon's RSS tells what it holds only when it runs bare: ASan keeps
 * freed memory in quarantine, and valgrind (TEST_DAEMON_WRAPPER) runs it on
 * a heap of its own that holds freed blocks back (--freelist-vol). There
 * leaks are the tool's to find. */
static bool
rss_tells(void)
{
#ifdef __SANITIZE_ADDRESS__
        return false;
#else
        const char *wrap = getenv("TEST_DAEMON_WRAPPER");

        return wrap == NULL || wrap[0] == '\0';
#endif
}

static int
proc_fds(pid_t pid)
{
        char path[64];
        int n = 0;
        snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL)
                n += de->d_name[0] != '.';
        if (d)
                closedir(d);
        return n;
}

static void
nap_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static int
tcp_connect(unsigned port)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

struct load {
        pid_t pid;
        char out[64];
        int n;
        char prefix[32];
};

static char *
load_body(const char *prefix, int i)
{
        char id[64], res[200];
        snprintf(id, sizeof(id), "evt_%s_%05d", prefix, i);
        snprintf(res, sizeof(res), "{\"id\":\"trk_%s_%05d\",\"object\":\"Tracker\",\"status\":\"in_transit\","
                                   "\"updated_at\":\"2025-08-01T00:00:00Z\",\"tracking_details\":[]}", prefix, i);
        return make_event(id, "tracker.updated", res);
}

/* Child process sending n events at conc; statuses land in a file. */
static void
load_start(struct load *l, unsigned port, const char *prefix, int n, unsigned conc)
{
        snprintf(l->out, sizeof(l->out), "/tmp/eps-fault-XXXXXX");
        close(mkstemp(l->out));
        snprintf(l->prefix, sizeof(l->prefix), "%s", prefix);
        l->n = n;
        l->pid = fork();
        ck_assert_int_ge(l->pid, 0);
        if (l->pid == 0) {
                char **b = xcalloc((size_t)n, sizeof(char *));
                size_t *lens = xcalloc((size_t)n, sizeof(size_t));
                int *st = xcalloc((size_t)n, sizeof(int));
                for (int i = 0; i < n; i++) {
                        b[i] = load_body(prefix, i);
                        lens[i] = strlen(b[i]);
                }
                post_many(port, b, lens, (size_t)n, conc, st);
                FILE *f = fopen(l->out, "w");
                for (int i = 0; f && i < n; i++)
                        fprintf(f, "%d\n", st[i]);
                if (f)
                        fclose(f);
                _exit(0);
        }
}

/* True once the load has sent everything (its status file is written at its end). */
static bool
load_done(const struct load *l)
{
        struct stat st;

        return stat(l->out, &st) == 0 && st.st_size > 0;
}

static int *
load_wait(struct load *l)
{
        int st;
        ck_assert_int_eq(waitpid(l->pid, &st, 0), l->pid);
        int *codes = xcalloc((size_t)l->n, sizeof(int));
        FILE *f = fopen(l->out, "r");
        ck_assert_ptr_nonnull(f);
        for (int i = 0; i < l->n; i++)
                ck_assert_int_eq(fscanf(f, "%d", &codes[i]), 1);
        fclose(f);
        unlink(l->out);
        return codes;
}

static long
stored_like(PGconn *c, const char *prefix)
{
        char pat[64];
        snprintf(pat, sizeof(pat), "evt_%s_%%", prefix);
        return db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE $1", pat);
}

/*
 * After a fault: every event answered 200 is stored; resending the others
 * (as EasyPost would) until all are 200 leaves every event stored exactly once.
 */
static void
verify_and_retry(PGconn *c, struct load *l, int *codes, unsigned port, const char *what)
{
        int acked = 0, lost = 0, resent = 0;
        char id[64];

        for (int i = 0; i < l->n; i++) {
                if (codes[i] != 200)
                        continue;
                acked++;
                snprintf(id, sizeof(id), "evt_%s_%05d", l->prefix, i);
                if (db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1", id) != 1)
                        lost++;
        }
        long stored_before = stored_like(c, l->prefix);
        for (int round = 0; round < 20; round++) {
                int todo = 0;
                for (int i = 0; i < l->n; i++)
                        todo += codes[i] != 200;
                if (todo == 0)
                        break;
                char **b = xcalloc((size_t)todo, sizeof(char *));
                size_t *lens = xcalloc((size_t)todo, sizeof(size_t));
                int *st = xcalloc((size_t)todo, sizeof(int)), *idx = xcalloc((size_t)todo, sizeof(int));
                int k = 0;
                for (int i = 0; i < l->n; i++)
                        if (codes[i] != 200) {
                                idx[k] = i;
                                b[k] = load_body(l->prefix, i);
                                lens[k] = strlen(b[k]);
                                k++;
                        }
                post_many(port, b, lens, (size_t)todo, 16, st);
                for (int j = 0; j < todo; j++) {
                        codes[idx[j]] = st[j];
                        free(b[j]);
                }
                resent += todo;
                free(b);
                free(lens);
                free(st);
                free(idx);
        }
        for (int i = 0; i < l->n; i++)
                ck_assert_msg(codes[i] == 200, "%s: event %d still %d after retries", what, i, codes[i]);
        long stored = stored_like(c, l->prefix);
        fprintf(stderr, "%s: sent %d, acknowledged %d, stored %ld (before resends), lost %d; "
                        "resent %d, finally stored %ld of %d, each once\n",
                what, l->n, acked, stored_before, lost, resent, stored, l->n);
        ck_assert_int_eq(lost, 0);
        ck_assert_int_eq(stored, l->n);
}

START_TEST(test_kill9_under_load)
{
        PGconn *c = db_open();
        struct daemon d;
        struct load l;

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        load_start(&l, d.port, "kill9", 4000, 32);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 600) FROM webhook_events "
                                         "WHERE event_id LIKE 'evt_kill9_%'", 600, 30000), 600);
        daemon_stop(&d, SIGKILL);
        int *codes = load_wait(&l);
        ck_assert_int_eq(daemon_start(&d, NULL), 0); /* restarted */
        verify_and_retry(c, &l, codes, d.port, "kill -9 under load (32 clients)");
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(codes);
        PQfinish(c);
}
END_TEST

START_TEST(test_postgres_immediate_stop_mid_load)
{
        PGconn *c = db_open();
        struct daemon d;
        struct load l;
        char resp[256];

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        load_start(&l, d.port, "pgstop", 3000, 32);
        ck_assert_int_ge(db_wait_long(c, "SELECT least(count(*), 300) FROM webhook_events "
                                         "WHERE event_id LIKE 'evt_pgstop_%'", 300, 30000), 300);
        PQfinish(c);
        pg_ctl("stop-immediate");
        char *b = load_body("pgstop_probe", 0);
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 503);
        free(b);
        ck_assert(!wait_status(d.port, "/readyz", 200, 3000)); /* down for a few seconds */
        pg_ctl("start");
        int *codes = load_wait(&l);
        ck_assert_int_eq(kill(d.pid, 0), 0); /* the same process throughout */
        ck_assert(wait_status(d.port, "/readyz", 200, 20000));
        int n503 = 0;
        for (int i = 0; i < l.n; i++)
                n503 += codes[i] == 503;
        fprintf(stderr, "PostgreSQL down: %d requests answered 503\n", n503);
        c = db_open();
        verify_and_retry(c, &l, codes, d.port, "PostgreSQL stopped -m immediate mid-load");
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(codes);
        PQfinish(c);
}
END_TEST

START_TEST(test_backends_terminated_mid_load)
{
        PGconn *c = db_open();
        struct daemon d;
        struct load l;

        ck_assert_int_eq(daemon_start(&d, NULL), 0);
        load_start(&l, d.port, "term", 3000, 32);
        long killed = 0;
        int rounds = 0;
        /* Terminate at 300, 600 and 900 stored while the load still sends.
         * The load does not resend: what is answered 503 while the daemon
         * reconnects is resent by verify_and_retry below, so when the load
         * has answered everything before the next mark, there is nothing
         * left to interrupt. */
        for (int round = 0; round < 3; round++) {
                long want = 300L * (round + 1), got = 0;
                uint64_t until = clock_mono_us() + 30000000u;
                while ((got = stored_like(c, "term")) < want && !load_done(&l) && clock_mono_us() < until)
                        nap_ms(20);
                if (got < want && load_done(&l))
                        break;
                ck_assert_msg(got >= want, "%ld stored after 30 s while the load still sends (want %ld)", got,
                              want);
                killed += db_long(c, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = 'easypost-syncd' AND pid <> pg_backend_pid()) t", NULL);
                rounds++;
        }
        int *codes = load_wait(&l);
        fprintf(stderr, "terminated %ld daemon backends in %d rounds during the load\n", killed, rounds);
        ck_assert_int_ge(rounds, 1);
        ck_assert_int_ge(killed, 2);
        ck_assert_int_eq(kill(d.pid, 0), 0);
        ck_assert(wait_status(d.port, "/readyz", 200, 20000));
        verify_and_retry(c, &l, codes, d.port, "pg_terminate_backend mid-load");
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(codes);
        PQfinish(c);
}
END_TEST

START_TEST(test_lock_stall_fills_queue_then_503_at_once)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        struct load l;
        const char *env[] = { "EASYPOST_SYNC_QUEUE_LIMIT=200", "EASYPOST_SYNC_REQUEST_TIMEOUT=30", NULL };

        ck_assert_int_eq(daemon_start(&d, env), 0);
        long rss0 = proc_rss_kb(d.pid);
        db_exec(locker, "BEGIN");
        db_exec(locker, "LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE");
        uint64_t t_lock = clock_mono_us();
        load_start(&l, d.port, "stall", 3000, 256);
        /* the queue fills (readiness says so); a request beyond it is refused at once */
        ck_assert(wait_status(d.port, "/readyz", 503, 20000));
        char resp[256];
        long max_rss = 0;
        double worst_ms = 0;
        int probes = 0;
        while (clock_mono_us() - t_lock < 10000000u) {
                char *b = load_body("stall_probe", probes++);
                uint64_t t0 = clock_mono_us();
                int st = post_event(d.port, b, strlen(b), resp, sizeof(resp));
                double ms = (double)(clock_mono_us() - t0) / 1000.0;
                free(b);
                ck_assert_int_eq(st, 503);
                ck_assert_ptr_nonnull(strstr(resp, "queue full"));
                if (ms > worst_ms)
                        worst_ms = ms;
                long rss = proc_rss_kb(d.pid);
                if (rss > max_rss)
                        max_rss = rss;
                nap_ms(100);
        }
        db_exec(locker, "COMMIT");
        int *codes = load_wait(&l);
        fprintf(stderr, "lock stall 10 s: RSS %ld kB before, %ld kB at most during; a request beyond the "
                        "queue answered 503 within %.1f ms\n", rss0, max_rss, worst_ms);
        /* "at once": the refusal waits neither for the stalled commit (10 s)
         * nor for request_timeout (30 s); a second leaves room for a loaded
         * machine and for valgrind */
        ck_assert_msg(worst_ms < 1000, "503 took %.1f ms", worst_ms);
        if (rss_tells())
                ck_assert_msg(max_rss < rss0 + 64 * 1024, "RSS grew from %ld to %ld kB", rss0, max_rss);
        verify_and_retry(c, &l, codes, d.port, "table lock stalling commits for 10 s");
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(codes);
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

/*
 * A backend that stops answering (SIGSTOP: as a black-holed host or a hung
 * server looks from here): the batch waiting on it is answered 503 within
 * db_timeout, not after TCP's minutes; the connection is replaced, and
 * EasyPost's retry is stored once.
 */
START_TEST(test_stopped_backend_dropped_after_db_timeout)
{
        PGconn *c = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_DB_CONNECTIONS=1", "EASYPOST_SYNC_DB_TIMEOUT=2",
                              "EASYPOST_SYNC_REQUEST_TIMEOUT=60", NULL };
        char resp[256];

        ck_assert_int_eq(daemon_start(&d, env), 0);
        char *b = load_body("stopped_warm", 0);
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
        free(b);
        /* the newest backend that ran a batch: this daemon's one ingest connection */
        long pid = db_long(c, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%eps_ingest_batch(%' "
                              "AND pid <> pg_backend_pid() ORDER BY backend_start DESC LIMIT 1", NULL);
        ck_assert_int_gt(pid, 0);
        ck_assert_int_eq(kill((pid_t)pid, SIGSTOP), 0);
        b = load_body("stopped", 0);
        uint64_t t0 = clock_mono_us();
        int st = post_event(d.port, b, strlen(b), resp, sizeof(resp));
        double secs = (double)(clock_mono_us() - t0) / 1e6;
        ck_assert_int_eq(kill((pid_t)pid, SIGCONT), 0);
        fprintf(stderr, "stopped backend: answered %d after %.1f s (db_timeout 2 s)\n", st, secs);
        ck_assert_int_eq(st, 503);
        ck_assert_msg(secs >= 1.5 && secs < 10, "503 after %.1f s", secs);
        ck_assert(wait_status(d.port, "/readyz", 200, 20000));
        /* the retry: stored, or a duplicate if the resumed backend committed it first */
        ck_assert_int_eq(post_event(d.port, b, strlen(b), resp, sizeof(resp)), 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1",
                                 "evt_stopped_00000"), 1);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(b);
        PQfinish(c);
}
END_TEST

/*
 * A batch stuck on a row lock past its statement_timeout (3/4 of db_timeout,
 * set per transaction on the ingest connection): PostgreSQL cancels it, the
 * event is answered 503 on the same connection and nothing of it is stored
 * (no dead letter: a stored 'failed' copy would make EasyPost's redelivery a
 * duplicate, never projected), and no backend keeps running it. Once the
 * lock is gone, the redelivery is stored and projected.
 */
START_TEST(test_lock_wait_past_statement_timeout_is_503_not_dead_letter)
{
        PGconn *c = db_open(), *locker = db_open();
        struct daemon d;
        const char *env[] = { "EASYPOST_SYNC_DB_CONNECTIONS=1", "EASYPOST_SYNC_DB_TIMEOUT=4",
                              "EASYPOST_SYNC_REQUEST_TIMEOUT=60", NULL };
        const char *running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                              "AND query LIKE '%eps_ingest_batch(%' AND pid <> pg_backend_pid()";
        char resp[256];

        ck_assert_int_eq(daemon_start(&d, env), 0);
        char *first = make_event("evt_stlock_1", "tracker.created",
                                 "{\"id\":\"trk_stlock1\",\"object\":\"Tracker\",\"status\":\"pre_transit\","
                                 "\"updated_at\":\"2025-06-01T09:00:00Z\",\"tracking_details\":[]}");
        char *second = make_event("evt_stlock_2", "tracker.updated",
                                  "{\"id\":\"trk_stlock1\",\"object\":\"Tracker\",\"status\":\"in_transit\","
                                  "\"updated_at\":\"2025-06-02T09:00:00Z\",\"tracking_details\":["
                                  "{\"message\":\"Scanned\",\"status\":\"in_transit\","
                                  "\"datetime\":\"2025-06-02T08:00:00Z\"}]}");
        ck_assert_int_eq(post_event(d.port, first, strlen(first), NULL, 0), 200);
        double reconnects = daemon_metric(d.port, "easypost_sync_db_reconnects_total");

        db_exec(locker, "BEGIN");
        ck_assert_int_eq(db_long(locker, "SELECT count(*) FROM (SELECT 1 FROM trackers "
                                         "WHERE easypost_id = 'trk_stlock1' FOR UPDATE) l", NULL), 1);
        int st = post_event(d.port, second, strlen(second), resp, sizeof(resp));
        fprintf(stderr, "batch on a locked tracker: %d %s\n", st, resp);
        ck_assert_int_eq(st, 503);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1",
                                 "evt_stlock_2"), 0);
        ck_assert_int_eq(db_long(c, running, NULL), 0);
        db_exec(locker, "COMMIT");

        ck_assert_int_eq(post_event(d.port, second, strlen(second), resp, sizeof(resp)), 200);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM webhook_events WHERE event_id = $1 "
                                    "AND status = 'projected'", "evt_stlock_2"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM trackers WHERE easypost_id = $1 "
                                    "AND status = 'in_transit'", "trk_stlock1"), 1);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_events e JOIN trackers t "
                                    "ON t.id = e.tracker_id WHERE t.easypost_id = $1", "trk_stlock1"), 1);
        /* the statement was cancelled on its connection, which stayed */
        ck_assert_double_eq(daemon_metric(d.port, "easypost_sync_db_reconnects_total"), reconnects);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(first);
        free(second);
        PQfinish(locker);
        PQfinish(c);
}
END_TEST

/* Slow, idle and vanishing clients: others are served; nothing leaks. */
START_TEST(test_slow_idle_and_vanishing_clients)
{
        enum { IDLE = 1000 };
        PGconn *c = db_open();
        struct daemon d;
        /* long enough that no idle client is cut before the last one connects */
        const char *env[] = { "EASYPOST_SYNC_IDLE_TIMEOUT=10", NULL };
        static int fds[IDLE];

        ck_assert_int_eq(daemon_start(&d, env), 0);
        /* warm up so that the baseline includes the daemon's steady allocations */
        for (int i = 0; i < 50; i++) {
                char *b = load_body("warm", i);
                ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
                free(b);
        }
        /* the baseline once the daemon has closed the warm-up's connections */
        int fd0 = proc_fds(d.pid), prev = -1;
        uint64_t settle = clock_mono_us() + 5000000u;
        while (fd0 != prev && clock_mono_us() < settle) {
                nap_ms(100);
                prev = fd0;
                fd0 = proc_fds(d.pid);
        }
        long rss0 = proc_rss_kb(d.pid);

        /* a slow client: headers, then never the body */
        int slow = tcp_connect(d.port);
        const char *head = "POST /webhooks/easypost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 500\r\n\r\n";
        ck_assert_int_eq(write(slow, head, strlen(head)), (ssize_t)strlen(head));
        /* a thousand idle connections */
        for (int i = 0; i < IDLE; i++)
                fds[i] = tcp_connect(d.port);
        ck_assert(wait_status(d.port, "/healthz", 200, 20000));
        int fd_busy = 0;
        uint64_t until = clock_mono_us() + 10000000u;
        while ((fd_busy = proc_fds(d.pid)) < fd0 + IDLE && clock_mono_us() < until)
                nap_ms(20);
        uint64_t t0 = clock_mono_us();
        char *b = load_body("beside_idle", 0);
        ck_assert_int_eq(post_event(d.port, b, strlen(b), NULL, 0), 200);
        free(b);
        double ms = (double)(clock_mono_us() - t0) / 1000.0;
        fprintf(stderr, "with %d idle + 1 slow connections: a webhook took %.1f ms; daemon fds %d (was %d)\n",
                IDLE, ms, fd_busy, fd0);
        ck_assert_int_ge(fd_busy, fd0 + IDLE);
        ck_assert_msg(ms < 1000, "webhook beside idle clients took %.1f ms", ms);

        /* clients that send a whole request and vanish before the commit */
        for (int i = 0; i < 200; i++) {
                char *ev = load_body("vanish", i), sig[81], req[4096];
                sign_body(ITEST_SECRET, ev, strlen(ev), sig);
                int n = snprintf(req, sizeof(req), "POST /webhooks/easypost HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Type: application/json\r\nX-Hmac-Signature: %s\r\n"
                                 "Content-Length: %zu\r\n\r\n%s", sig, strlen(ev), ev);
                int s = tcp_connect(d.port);
                ck_assert_int_eq(write(s, req, (size_t)n), n);
                close(s);
                free(ev);
        }
        /* they are stored all the same (committed; nobody left to tell) */
        ck_assert_int_eq(db_wait_long(c, "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_vanish_%'",
                                      200, 20000), 200);
        for (int i = 0; i < IDLE; i++)
                close(fds[i]);
        /* the slow client is cut off by idle_timeout */
        char buf[256];
        ssize_t r = read(slow, buf, sizeof(buf));
        ck_assert_int_le(r, 0 + (r > 0 && strstr(buf, " 2") == NULL ? (int)r : 0));
        close(slow);
        int fds_after = fd0 + 100;
        uint64_t end = clock_mono_us() + 10000000u;
        while (clock_mono_us() < end && (fds_after = proc_fds(d.pid)) > fd0 + 2)
                nap_ms(50);
        long rss1 = proc_rss_kb(d.pid);
        fprintf(stderr, "afterwards: daemon fds %d (baseline %d), RSS %ld kB (baseline %ld kB)\n", fds_after,
                fd0, rss1, rss0);
        ck_assert_int_le(fds_after, fd0 + 2);
        if (rss_tells())
                ck_assert_msg(rss1 < rss0 + 8 * 1024, "RSS %ld kB vs %ld kB baseline", rss1, rss0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        PQfinish(c);
}
END_TEST

static size_t
discard(char *p, size_t size, size_t n, void *arg)
{
        (void)p;
        (void)arg;
        return size * n;
}

START_TEST(test_tls_and_basic_auth)
{
        const char *tmp = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
        char cert[300], key[300], cmd[1200], env1[400], env2[400];
        struct daemon d;

        snprintf(cert, sizeof(cert), "%s/tls-%d.crt", tmp, (int)getpid());
        snprintf(key, sizeof(key), "%s/tls-%d.key", tmp, (int)getpid());
        snprintf(cmd, sizeof(cmd), "openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s' -out '%s' -days 1 "
                                   "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null", key, cert);
        ck_assert_int_eq(system(cmd), 0);
        snprintf(env1, sizeof(env1), "EASYPOST_SYNC_TLS_CERT=%s", cert);
        snprintf(env2, sizeof(env2), "EASYPOST_SYNC_TLS_KEY=%s", key);
        const char *env[] = { env1, env2, "EASYPOST_SYNC_BASIC_AUTH_USER=hook",
                              "EASYPOST_SYNC_BASIC_AUTH_PASSWORD=pw-for-tests", NULL };
        itest_tls_ca = cert;
        int started = daemon_start(&d, env);
        ck_assert_int_eq(started, 0);

        char *body = load_body("tls", 0), sig[81], hdr[120], url[100];
        sign_body(ITEST_SECRET, body, strlen(body), sig);
        snprintf(hdr, sizeof(hdr), "X-Hmac-Signature: %s", sig);
        snprintf(url, sizeof(url), "https://127.0.0.1:%u/webhooks/easypost", d.port);
        long codes[5];
        for (int k = 0; k < 5; k++) {
                CURL *h = curl_easy_init();
                struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
                hl = curl_slist_append(hl, hdr);
                curl_easy_setopt(h, CURLOPT_URL, url);
                curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(h, CURLOPT_CAINFO, cert);
                curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
                curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
                curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
                if (k == 1 || k == 4) { /* right password */
                        curl_easy_setopt(h, CURLOPT_USERNAME, "hook");
                        curl_easy_setopt(h, CURLOPT_PASSWORD, "pw-for-tests");
                } else if (k == 2) {
                        curl_easy_setopt(h, CURLOPT_USERNAME, "hook");
                        curl_easy_setopt(h, CURLOPT_PASSWORD, "wrong");
                } else if (k == 3) { /* TLS 1.1 is refused */
                        curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)(CURL_SSLVERSION_TLSv1_1 | CURL_SSLVERSION_MAX_TLSv1_1));
                        curl_easy_setopt(h, CURLOPT_USERNAME, "hook");
                        curl_easy_setopt(h, CURLOPT_PASSWORD, "pw-for-tests");
                }
                codes[k] = 0;
                if (curl_easy_perform(h) == CURLE_OK)
                        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &codes[k]);
                curl_slist_free_all(hl);
                curl_easy_cleanup(h);
        }
        fprintf(stderr, "TLS + basic auth: no auth %ld, right %ld, wrong %ld, TLS 1.1 %ld, again %ld\n",
                codes[0], codes[1], codes[2], codes[3], codes[4]);
        ck_assert_int_eq(codes[0], 401);
        ck_assert_int_eq(codes[1], 200);
        ck_assert_int_eq(codes[2], 401);
        ck_assert_int_eq(codes[3], 0);
        ck_assert_int_eq(codes[4], 200);
        ck_assert_int_eq(http_req(d.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        /* plain HTTP on the TLS port gets nothing useful */
        itest_tls_ca = NULL;
        ck_assert_int_eq(http_req(d.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 0);
        ck_assert_int_eq(daemon_stop(&d, SIGTERM), 0);
        free(body);
        unlink(cert);
        unlink(key);
}
END_TEST

Suite *
faults_suite(void)
{
        Suite *s = suite_create("faults");
        TCase *tc = tcase_create("faults");

        tcase_set_timeout(tc, 180);
        tcase_add_test(tc, test_kill9_under_load);
        tcase_add_test(tc, test_postgres_immediate_stop_mid_load);
        tcase_add_test(tc, test_backends_terminated_mid_load);
        tcase_add_test(tc, test_lock_stall_fills_queue_then_503_at_once);
        tcase_add_test(tc, test_stopped_backend_dropped_after_db_timeout);
        tcase_add_test(tc, test_lock_wait_past_statement_timeout_is_503_not_dead_letter);
        tcase_add_test(tc, test_slow_idle_and_vanishing_clients);
        tcase_add_test(tc, test_tls_and_basic_auth);
        suite_add_tcase(s, tc);
        return s;
}
