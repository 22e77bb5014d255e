/*
 * check_hostile.c - hostile input against the real daemon and PostgreSQL.
 *
 * One table of malformed, oversized, slow and misrouted requests. Most go out
 * over raw TCP, because libcurl would repair them (framing, header syntax,
 * methods). Each row has its expected status (or "refused": a 4xx or a closed
 * connection, never a 2xx; or "closed": no answer, the idle timeout cut the
 * connection; or "clean": 400 with nothing stored or 200 stored as an event,
 * for numbers that one parser may refuse and another store exactly) and
 * whether its event may be stored; every row uses its own
 * event id and the table ends with a count of the rows stored for it (a stored
 * row must never be a dead letter). Then the daemon must still be alive, store
 * a valid event and exit 0 on SIGTERM.
 * The measured table goes to stderr (doc/hostile-input.md keeps a copy).
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

#define H_MAX_BODY 1048576L   /* max_body_bytes: room for the 100,000-key object */
#define H_MAX_HEADER 16384L   /* max_header_bytes: the default, set explicitly */
#define H_IDLE 2              /* idle_timeout (s): slow clients are cut after this */
#define H_PATH "/webhooks/easypost"

/* Expected outcomes besides an exact status. */
#define W_REFUSED (-100) /* a 4xx, or the connection closed without a status; never 2xx */
#define W_CLOSED (-101)  /* closed without any status (idle timeout) */
#define W_CLEAN (-102)   /* 400, nothing stored; or 200, stored as an event (not a dead letter) */

/* raw_status() results besides a status. */
#define RAW_CLOSED 0
#define RAW_TIMEOUT (-1)
#define RAW_GARBAGE (-2)

static struct daemon dm;

/* ---- a growable byte buffer ---------------------------------------------------------- */

struct buf {
        char *p;
        size_t len, cap;
};

static void
buf_add(struct buf *b, const void *s, size_t n)
{
        if (b->len + n + 1 > b->cap) {
                b->cap = (b->len + n + 1) * 2;
                b->p = xrealloc(b->p, b->cap);
        }
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
buf_printf(struct buf *b, const char *fmt, ...)
{
        va_list ap;
        char small[512];

        va_start(ap, fmt);
        int n = vsnprintf(small, sizeof(small), fmt, ap);
        va_end(ap);
        ck_assert_int_ge(n, 0);
        if ((size_t)n < sizeof(small)) {
                buf_add(b, small, (size_t)n);
                return;
        }
        char *big = xmalloc((size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        buf_add(b, big, (size_t)n);
        free(big);
}

static void
buf_free(struct buf *b)
{
        free(b->p);
        memset(b, 0, sizeof(*b));
}

/* ---- raw TCP ------------------------------------------------------------------------- */

static int
raw_connect(unsigned port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { 5, 0 }; /* a daemon that stops reading must not hang the test */

        ck_assert_int_ge(fd, 0);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s",
                      strerror(errno));
        return fd;
}

/* Sends everything it can; stops when the daemon has answered and closed
 * (EPIPE, ECONNRESET) or stopped reading (send timeout: EAGAIN). Returns the
 * bytes sent; *err gets the errno that stopped it (0 when all went out). */
static size_t
raw_send_n(int fd, const void *p, size_t n, int *err)
{
        const char *s = p;
        size_t sent = 0;

        *err = 0;
        while (sent < n) {
                ssize_t w = send(fd, s + sent, n - sent, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0) {
                        *err = w < 0 ? errno : EPIPE;
                        break;
                }
                sent += (size_t)w;
        }
        return sent;
}

static void
raw_send(int fd, const void *p, size_t n)
{
        int err;

        (void)raw_send_n(fd, p, n, &err);
}

#define RECV_TIMEOUT (-2)

/* recv(2) of what arrives by `end` (clock_mono_us), or RECV_TIMEOUT. */
static ssize_t
raw_recv_by(int fd, uint64_t end, void *p, size_t cap)
{
        for (;;) {
                uint64_t now = clock_mono_us();
                if (now >= end)
                        return RECV_TIMEOUT;
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int pr = poll(&pfd, 1, (int)((end - now) / 1000u) + 1);
                if (pr < 0 && errno == EINTR)
                        continue;
                if (pr == 0)
                        return RECV_TIMEOUT;
                ssize_t r = recv(fd, p, cap, 0);
                if (r < 0 && errno == EINTR)
                        continue;
                return r;
        }
}

/* Reads one response head into head[cap] and returns its status: skips 1xx
 * interim answers unless stop_1xx. RAW_CLOSED when the connection ends (EOF or
 * reset) before a status line, RAW_TIMEOUT after timeout_ms of silence. */
static int
raw_status(int fd, int timeout_ms, bool stop_1xx, char *head, size_t cap)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        size_t n = 0;
        int st;

        head[0] = '\0';
        for (;;) {
                char *eoh = strstr(head, "\r\n\r\n");
                if (eoh != NULL || n + 1 >= cap) {
                        if (sscanf(head, "HTTP/1.%*d %d", &st) != 1)
                                return RAW_GARBAGE;
                        if (st >= 100 && st < 200 && !stop_1xx && eoh != NULL) {
                                size_t used = (size_t)(eoh + 4 - head);
                                memmove(head, eoh + 4, n - used + 1);
                                n -= used;
                                continue;
                        }
                        return st;
                }
                ssize_t r = raw_recv_by(fd, end, head + n, cap - 1 - n);
                if (r == RECV_TIMEOUT)
                        return RAW_TIMEOUT;
                if (r <= 0)
                        return n > 0 && sscanf(head, "HTTP/1.%*d %d", &st) == 1 ? st : RAW_CLOSED;
                n += (size_t)r;
                head[n] = '\0';
        }
}

/* Connects, sends the whole request, returns the status (head in head[cap]). */
static int
raw_exchange(unsigned port, const struct buf *req, char *head, size_t cap)
{
        int fd = raw_connect(port);

        raw_send(fd, req->p, req->len);
        int st = raw_status(fd, 15000, false, head, cap);
        close(fd);
        return st;
}

/* ---- request pieces ------------------------------------------------------------------ */

static void
req_start(struct buf *b, const char *method, const char *path, const char *ctype)
{
        buf_printf(b, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", method, path);
        if (ctype)
                buf_printf(b, "Content-Type: %s\r\n", ctype);
}

static void
req_sig(struct buf *b, const void *body, size_t len)
{
        char sig[81];

        sign_body(ITEST_SECRET, body, len, sig);
        buf_printf(b, "X-Hmac-Signature: %s\r\n", sig);
}

static void
req_body(struct buf *b, const void *body, size_t len)
{
        buf_printf(b, "Content-Length: %zu\r\n\r\n", len);
        buf_add(b, body, len);
}

/* POST body to path with Content-Type ctype, signed correctly. */
static int
post_signed(const char *method, const char *path, const char *ctype, const char *body,
            size_t len, char *head, size_t cap)
{
        struct buf b = { 0 };

        req_start(&b, method, path, ctype);
        req_sig(&b, body, len);
        req_body(&b, body, len);
        int st = raw_exchange(dm.port, &b, head, cap);
        buf_free(&b);
        return st;
}

static int
post_json(const char *body, size_t len, char *head, size_t cap)
{
        return post_signed("POST", H_PATH, "application/json", body, len, head, cap);
}

/* POST of body with the signature header value sigval (NULL: no header). */
static int
post_sigval(const char *sigval, const char *body, size_t len, char *head, size_t cap)
{
        struct buf b = { 0 };

        req_start(&b, "POST", H_PATH, "application/json");
        if (sigval)
                buf_printf(&b, "X-Hmac-Signature:%s%s\r\n", sigval[0] ? " " : "", sigval);
        req_body(&b, body, len);
        int st = raw_exchange(dm.port, &b, head, cap);
        buf_free(&b);
        return st;
}

static char *
event_body(const char *id)
{
        return make_event(id, "hostile.test", "{\"id\":\"obj_hostile\"}");
}

static bool
has_header(const char *head, const char *name, const char *value)
{
        size_t nn = strlen(name);

        for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
                const char *h = p + 2;
                if (strncasecmp(h, name, nn) == 0 && h[nn] == ':') {
                        h += nn + 1;
                        while (*h == ' ')
                                h++;
                        return strncmp(h, value, strlen(value)) == 0;
                }
        }
        return false;
}

static double
ms_since(uint64_t t0)
{
        return (double)(clock_mono_us() - t0) / 1000.0;
}

/* ---- the rows ------------------------------------------------------------------------
 * Each runner sends its request(s) for event id `id` and returns the status it
 * got. It may write a note for the table and clear *ok when a side condition
 * (a header, a timing, another client being served) failed. */

struct ctx {
        const char *id;
        char note[160];
        bool ok;
        char head[8192];
};

typedef int (*row_fn)(struct ctx *c);

static int
r_sig_missing(struct ctx *c)
{
        char *b = event_body(c->id);
        int st = post_sigval(NULL, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

static int
r_sig_empty(struct ctx *c)
{
        char *b = event_body(c->id);
        int st = post_sigval("", b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

/* The right hex under another scheme's prefix. */
static int
r_sig_wrong_prefix(struct ctx *c)
{
        char *b = event_body(c->id);
        char sig[81], val[100];
        sign_body(ITEST_SECRET, b, strlen(b), sig);
        snprintf(val, sizeof(val), "hmac-sha512-hex=%s", sig + strlen("hmac-sha256-hex="));
        int st = post_sigval(val, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

static int
r_sig_upper_hex(struct ctx *c)
{
        char *b = event_body(c->id);
        char sig[81];
        sign_body(ITEST_SECRET, b, strlen(b), sig);
        for (char *p = sig + strlen("hmac-sha256-hex="); *p; p++)
                if (*p >= 'a' && *p <= 'f')
                        *p = (char)(*p - 'a' + 'A');
        int st = post_sigval(sig, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

static int
r_sig_other_body(struct ctx *c)
{
        char other_id[96];
        snprintf(other_id, sizeof(other_id), "%s_other", c->id);
        char *b = event_body(c->id), *o = event_body(other_id);
        char sig[81];
        sign_body(ITEST_SECRET, o, strlen(o), sig);
        int st = post_sigval(sig, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        free(o);
        return st;
}

/* Signed over body + "\n" (a signer that added a newline), sent without it. */
static int
r_sig_trailing_newline(struct ctx *c)
{
        char *b = event_body(c->id);
        size_t n = strlen(b);
        char *nl = xmalloc(n + 2);
        memcpy(nl, b, n);
        memcpy(nl + n, "\n", 2);
        char sig[81];
        sign_body(ITEST_SECRET, nl, n + 1, sig);
        int st = post_sigval(sig, b, n, c->head, sizeof(c->head));
        free(nl);
        free(b);
        return st;
}

/* The right value followed by a bare CR before the CRLF: evhttp refuses the
 * head (400) before the handler could see an 81-byte value (401). */
static int
r_sig_trailing_cr(struct ctx *c)
{
        char *b = event_body(c->id);
        char sig[81], val[90];
        sign_body(ITEST_SECRET, b, strlen(b), sig);
        snprintf(val, sizeof(val), "%s\r", sig);
        int st = post_sigval(val, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

/* The right signature, but the body has a newline appended after signing. */
static int
r_body_trailing_newline(struct ctx *c)
{
        char *b = event_body(c->id);
        size_t n = strlen(b);
        char sig[81];
        sign_body(ITEST_SECRET, b, n, sig);
        b = xrealloc(b, n + 2);
        memcpy(b + n, "\n", 2);
        int st = post_sigval(sig, b, n + 1, c->head, sizeof(c->head));
        free(b);
        return st;
}

static int
r_empty_unsigned(struct ctx *c)
{
        return post_sigval(NULL, "", 0, c->head, sizeof(c->head));
}

static int
r_empty_signed(struct ctx *c)
{
        return post_json("", 0, c->head, sizeof(c->head));
}

/* Only the head, declaring max_body_bytes + 1: the answer must come without the body. */
static int
r_over_max_head_only(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, strlen(body));
        buf_printf(&b, "Content-Length: %ld\r\n\r\n", H_MAX_BODY + 1);
        int fd = raw_connect(dm.port);
        uint64_t t0 = clock_mono_us();
        raw_send(fd, b.p, b.len);
        int st = raw_status(fd, 5000, true, c->head, sizeof(c->head));
        snprintf(c->note, sizeof(c->note), "answered in %.0f ms, body never sent", ms_since(t0));
        close(fd);
        buf_free(&b);
        free(body);
        return st;
}

static int
r_cl_overflow(struct ctx *c)
{
        struct buf b = { 0 };
        req_start(&b, "POST", H_PATH, "application/json");
        buf_printf(&b, "Content-Length: 99999999999999999999999\r\n\r\n{}");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

static int
r_cl_negative(struct ctx *c)
{
        struct buf b = { 0 };
        req_start(&b, "POST", H_PATH, "application/json");
        buf_printf(&b, "Content-Length: -5\r\n\r\n{}");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* Two Content-Length headers that disagree (a request-smuggling shape): the
 * signed event is the long one; a server taking either value must not store
 * something it did not fully read. */
static int
r_cl_twice(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        size_t n = strlen(body);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, n);
        buf_printf(&b, "Content-Length: 2\r\n");
        req_body(&b, body, n);
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        free(body);
        return st;
}

/* A chunk header declaring max_body_bytes + 1, no data behind it. */
static int
r_chunk_over_max(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, strlen(body));
        buf_printf(&b, "Transfer-Encoding: chunked\r\n\r\n%lx\r\n", H_MAX_BODY + 1);
        int fd = raw_connect(dm.port);
        raw_send(fd, b.p, b.len);
        int st = raw_status(fd, 5000, false, c->head, sizeof(c->head));
        close(fd);
        buf_free(&b);
        free(body);
        return st;
}

/* Many small chunks adding up to max_body_bytes + 1. */
static int
r_chunks_sum_over_max(struct ctx *c)
{
        struct buf b = { 0 };
        char chunk[4096];
        memset(chunk, ' ', sizeof(chunk));
        req_start(&b, "POST", H_PATH, "application/json");
        buf_printf(&b, "X-Hmac-Signature: hmac-sha256-hex=%064d\r\n", 0);
        buf_printf(&b, "Transfer-Encoding: chunked\r\n\r\n");
        long left = H_MAX_BODY + 1;
        while (left > 0) {
                size_t k = left < (long)sizeof(chunk) ? (size_t)left : sizeof(chunk);
                buf_printf(&b, "%zx\r\n", k);
                buf_add(&b, chunk, k);
                buf_add(&b, "\r\n", 2);
                left -= (long)k;
        }
        buf_printf(&b, "0\r\n\r\n");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* Declares 100 bytes more than it sends, then goes silent: the idle timeout
 * must close it, and meanwhile another client is served. */
static int
r_cl_larger_silence(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        size_t n = strlen(body);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, n);
        buf_printf(&b, "Content-Length: %zu\r\n\r\n", n + 100);
        buf_add(&b, body, n);
        int fd = raw_connect(dm.port);
        uint64_t t0 = clock_mono_us();
        raw_send(fd, b.p, b.len);
        uint64_t t1 = clock_mono_us();
        int hz = http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0);
        double hz_ms = ms_since(t1);
        int st = raw_status(fd, (H_IDLE + 6) * 1000, false, c->head, sizeof(c->head));
        double secs = ms_since(t0) / 1000.0;
        snprintf(c->note, sizeof(c->note), "cut after %.1f s; healthz meanwhile %d in %.0f ms",
                 secs, hz, hz_ms);
        c->ok = hz == 200 && hz_ms < 1000 && secs < H_IDLE + 3;
        close(fd);
        buf_free(&b);
        free(body);
        return st;
}

/* An unfinished head, then silence (slowloris). */
static int
r_partial_head_silence(struct ctx *c)
{
        static const char part[] = "POST " H_PATH " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1";
        int fd = raw_connect(dm.port);
        uint64_t t0 = clock_mono_us();
        raw_send(fd, part, sizeof(part) - 1);
        int hz = http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0);
        int st = raw_status(fd, (H_IDLE + 6) * 1000, false, c->head, sizeof(c->head));
        double secs = ms_since(t0) / 1000.0;
        snprintf(c->note, sizeof(c->note), "cut after %.1f s; healthz meanwhile %d", secs, hz);
        c->ok = hz == 200 && secs < H_IDLE + 3;
        close(fd);
        return st;
}

/* A correctly signed event sent as three chunks. */
static int
r_chunked_signed(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        size_t n = strlen(body), a = n / 3, m = n / 3;
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, n);
        buf_printf(&b, "Transfer-Encoding: chunked\r\n\r\n");
        buf_printf(&b, "%zx\r\n", a);
        buf_add(&b, body, a);
        buf_printf(&b, "\r\n%zx\r\n", m);
        buf_add(&b, body + a, m);
        buf_printf(&b, "\r\n%zx\r\n", n - a - m);
        buf_add(&b, body + a + m, n - a - m);
        buf_printf(&b, "\r\n0\r\n\r\n");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        free(body);
        return st;
}

/* Expect: 100-continue, body only after the interim answer (curl's way for big bodies). */
static int
r_expect_continue(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        size_t n = strlen(body);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, n);
        buf_printf(&b, "Expect: 100-continue\r\nContent-Length: %zu\r\n\r\n", n);
        int fd = raw_connect(dm.port);
        raw_send(fd, b.p, b.len);
        int first = raw_status(fd, 5000, true, c->head, sizeof(c->head));
        raw_send(fd, body, n);
        int st = raw_status(fd, 15000, false, c->head, sizeof(c->head));
        snprintf(c->note, sizeof(c->note), "interim %d", first);
        c->ok = first == 100;
        close(fd);
        buf_free(&b);
        free(body);
        return st;
}

static int
post_fmt(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Signs and posts a body made from fmt (a JSON document around c->id). */
static int
post_fmt(struct ctx *c, const char *fmt, ...)
{
        char body[1024];
        va_list ap;

        va_start(ap, fmt);
        int n = vsnprintf(body, sizeof(body), fmt, ap);
        va_end(ap);
        ck_assert(n > 0 && (size_t)n < sizeof(body));
        return post_json(body, (size_t)n, c->head, sizeof(c->head));
}

static int
r_invalid_utf8(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\","
                           "\"description\":\"tracker.\xff\xfe\"}", c->id);
}

static int
r_overlong_utf8(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"note\":\"\xc0\xaf\"}", c->id);
}

static int
r_lone_surrogate(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"note\":\"\\ud800\"}", c->id);
}

static int
r_nested_deep(struct ctx *c)
{
        enum { DEPTH = 10000 };
        struct buf b = { 0 };
        buf_printf(&b, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"hostile.test\","
                       "\"deep\":", c->id);
        for (int i = 0; i < DEPTH; i++)
                buf_add(&b, "[", 1);
        for (int i = 0; i < DEPTH; i++)
                buf_add(&b, "]", 1);
        buf_add(&b, "}", 1);
        int st = post_json(b.p, b.len, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* 100,000 distinct keys (3 alphanumerics each, ~800 KB, under max_body_bytes),
 * while another client keeps asking /healthz: the parse may delay it (one
 * thread) but must not stall it; the slowest probe must stay under 2 s. */
static int
r_many_keys(struct ctx *c)
{
        static const char al[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        enum { KEYS = 100000, AL = sizeof(al) - 1 };
        struct buf b = { 0 }, req = { 0 };

        buf_printf(&b, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"hostile.keys\","
                       "\"x\":{", c->id);
        for (int i = 0; i < KEYS; i++) {
                char k[16];
                int n = snprintf(k, sizeof(k), "%s\"%c%c%c\":%d", i ? "," : "", al[i / (AL * AL)],
                                 al[(i / AL) % AL], al[i % AL], i % 10);
                buf_add(&b, k, (size_t)n);
        }
        buf_add(&b, "}}", 2);
        ck_assert_int_le((long)b.len, H_MAX_BODY);
        req_start(&req, "POST", H_PATH, "application/json");
        req_sig(&req, b.p, b.len);
        req_body(&req, b.p, b.len);
        int fd = raw_connect(dm.port);
        uint64_t t0 = clock_mono_us();
        raw_send(fd, req.p, req.len);
        /* probe /healthz until the big one is answered: the worst probe shows a stall */
        double worst = 0;
        int probes = 0, bad = 0, first_bad = 0;
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                if (poll(&pfd, 1, 0) != 0 || ms_since(t0) > 30000)
                        break;
                uint64_t t1 = clock_mono_us();
                int hz = http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0);
                if (hz != 200 && bad++ == 0)
                        first_bad = hz;
                double ms = ms_since(t1);
                worst = ms > worst ? ms : worst;
                probes++;
        }
        int st = raw_status(fd, 30000, false, c->head, sizeof(c->head));
        snprintf(c->note, sizeof(c->note), "%zu bytes, answered in %.0f ms; %d healthz probes "
                 "meanwhile, %d failed (first: %d), slowest %.0f ms", b.len, ms_since(t0), probes,
                 bad, first_bad, worst);
        c->ok = bad == 0 && worst < 2000;
        close(fd);
        buf_free(&req);
        buf_free(&b);
        return st;
}

static int
r_duplicate_keys(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"id\":\"%sb\"}", c->id, c->id);
}

static int
r_int_out_of_range(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"n\":123456789012345678901234567890}", c->id);
}

static int
r_real_out_of_range(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"n\":1e999}", c->id);
}

static int
r_number_beyond_all(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\","
                           "\"n\":1e999999}", c->id);
}

static int
r_integer_20000_digits(struct ctx *c)
{
        struct buf b = { 0 };
        buf_printf(&b, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\",\"n\":",
                   c->id);
        for (int i = 0; i < 20000; i++)
                buf_add(&b, i ? "7" : "1", 1);
        buf_add(&b, "}", 1);
        int st = post_json(b.p, b.len, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* A number whose scale (6,401 fraction digits + exponent 10,000) overflows
 * PostgreSQL's numeric (dscale at most 16,383): jsonb would refuse the body
 * and break the event's batch, so it must be refused here, with a 400. */
static int
r_numeric_scale(struct ctx *c)
{
        struct buf b = { 0 };
        buf_printf(&b, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\",\"n\":0.",
                   c->id);
        for (int i = 0; i < 6400; i++)
                buf_add(&b, "0", 1);
        buf_printf(&b, "1e-10000}");
        int st = post_json(b.p, b.len, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

static int
r_id_number(struct ctx *c)
{
        return post_fmt(c, "{\"id\":12345,\"object\":\"Event\",\"description\":\"x\","
                           "\"note\":\"%s\"}", c->id);
}

static int
r_id_too_long(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s%0*d\",\"object\":\"Event\",\"description\":\"x\"}", c->id,
                        (int)(65 - strlen(c->id)), 0);
}

static int
r_nul_in_description(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"tracker\\u0000"
                           "updated\"}", c->id);
}

/* U+0000 elsewhere: stored raw (jsonb cannot hold it), answered 200. */
static int
r_nul_in_result(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"hostile.test\","
                           "\"result\":{\"id\":\"obj_1\",\"note\":\"a\\u0000b\"}}", c->id);
}

/* A created_at PostgreSQL refuses (offset minutes 99; found by
 * fuzz/extract_fuzz): the event must still be stored as an event (created_at
 * NULL), not as a dead letter of its batch, and certainly not refused 503. */
static int
r_created_at_bad_offset(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"hostile.test\","
                           "\"created_at\":\"2025-01-02T03:04:05+05:99\","
                           "\"result\":{\"id\":\"o\"}}", c->id);
}

/* Found by fuzz/epevent_fuzz: "Event" followed by U+0000 passed as "Event". */
static int
r_object_event_nul(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\\u0000Tracker\","
                           "\"description\":\"hostile.test\"}", c->id);
}

static int
r_not_object(struct ctx *c)
{
        return post_fmt(c, "[\"%s\"]", c->id);
}

static int
r_trailing_garbage(struct ctx *c)
{
        return post_fmt(c, "{\"id\":\"%s\",\"object\":\"Event\",\"description\":\"x\"} {}", c->id);
}

/* One header line of 64 KiB, over max_header_bytes. */
static int
r_header_64k(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        char *pad = xmalloc(65536 + 1);
        memset(pad, 'a', 65536);
        pad[65536] = '\0';
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, strlen(body));
        buf_printf(&b, "X-Pad: %s\r\n", pad);
        req_body(&b, body, strlen(body));
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        free(pad);
        free(body);
        return st;
}

/* A request line (URI) of 64 KiB. */
static int
r_uri_64k(struct ctx *c)
{
        struct buf b = { 0 };
        buf_printf(&b, "GET /healthz?");
        for (int i = 0; i < 65536 / 8; i++)
                buf_add(&b, "aaaaaaaa", 8);
        buf_printf(&b, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* 1,000 headers of ~30 bytes: ~30 KiB of head, over max_header_bytes. */
static int
r_headers_1000(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, strlen(body));
        for (int i = 0; i < 1000; i++)
                buf_printf(&b, "X-Hostile-%04d: value-value\r\n", i);
        req_body(&b, body, strlen(body));
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        snprintf(c->note, sizeof(c->note), "head %zu bytes", b.len - strlen(body));
        buf_free(&b);
        free(body);
        return st;
}

/* 1,000 tiny headers that fit in max_header_bytes: only bytes are limited. */
static int
r_headers_1000_small(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        req_start(&b, "POST", H_PATH, "application/json");
        req_sig(&b, body, strlen(body));
        for (int i = 0; i < 1000; i++)
                buf_printf(&b, "h%d:1\r\n", i % 10);
        req_body(&b, body, strlen(body));
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        snprintf(c->note, sizeof(c->note), "head %zu bytes", b.len - strlen(body));
        buf_free(&b);
        free(body);
        return st;
}

static int
post_path(struct ctx *c, const char *path)
{
        char *b = event_body(c->id);
        int st = post_signed("POST", path, "application/json", b, strlen(b), c->head,
                             sizeof(c->head));
        free(b);
        return st;
}

static int
r_path_dotdot(struct ctx *c)
{
        return post_path(c, "/webhooks/../webhooks/easypost");
}

static int
r_path_dotdot_encoded(struct ctx *c)
{
        return post_path(c, "/webhooks/%2e%2e/webhooks/easypost");
}

static int
r_path_nul(struct ctx *c)
{
        return post_path(c, "/webhooks/easypost%00");
}

static int
r_path_nul_suffix(struct ctx *c)
{
        return post_path(c, "/webhooks/easypost%00.json");
}

static int
r_path_trailing_slash(struct ctx *c)
{
        return post_path(c, "/webhooks/easypost/");
}

/* A 405 must say what is allowed. */
static void
allow_note(struct ctx *c)
{
        c->ok = has_header(c->head, "Allow", "POST");
        snprintf(c->note, sizeof(c->note), c->ok ? "Allow: POST" : "no Allow: POST");
}

static int
method(struct ctx *c, const char *m)
{
        char *b = event_body(c->id);
        int st = post_signed(m, H_PATH, "application/json", b, strlen(b), c->head,
                             sizeof(c->head));
        free(b);
        if (st == 405)
                allow_note(c);
        return st;
}

static int r_put(struct ctx *c) { return method(c, "PUT"); }
static int r_delete(struct ctx *c) { return method(c, "DELETE"); }
static int r_patch(struct ctx *c) { return method(c, "PATCH"); }
static int r_get(struct ctx *c) { return method(c, "GET"); }
static int r_options(struct ctx *c) { return method(c, "OPTIONS"); }

static int
r_head(struct ctx *c)
{
        struct buf b = { 0 };
        req_start(&b, "HEAD", H_PATH, NULL);
        buf_printf(&b, "\r\n");
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        if (st == 405)
                allow_note(c);
        return st;
}

/* evhttp answers a method it does not know with 501 before any routing. */
static int
r_unknown_method(struct ctx *c)
{
        char *b = event_body(c->id);
        int st = post_signed("BREW", H_PATH, "application/json", b, strlen(b), c->head,
                             sizeof(c->head));
        free(b);
        return st;
}

static int
ctype(struct ctx *c, const char *ct)
{
        char *b = event_body(c->id);
        int st = post_signed("POST", H_PATH, ct, b, strlen(b), c->head, sizeof(c->head));
        free(b);
        return st;
}

static int r_ct_text(struct ctx *c) { return ctype(c, "text/plain"); }
static int r_ct_missing(struct ctx *c) { return ctype(c, NULL); }
static int r_ct_jsonp(struct ctx *c) { return ctype(c, "application/jsonp"); }
static int r_ct_form(struct ctx *c) { return ctype(c, "application/x-www-form-urlencoded"); }
static int r_ct_charset(struct ctx *c) { return ctype(c, "application/json; charset=utf-8"); }

/* A TLS ClientHello on the plain-HTTP port. */
static int
r_tls_hello(struct ctx *c)
{
        static const unsigned char hello[] = { 0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00,
                                               0x2b, 0x03, 0x03, 'r',  'a',  'n',  'd',  'o',
                                               'm',  0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00,
                                               '\r', '\n', '\r', '\n' };
        struct buf b = { 0 };
        buf_add(&b, hello, sizeof(hello));
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        return st;
}

/* HTTP/1.0 without Content-Length: evhttp reads no body, so the signature
 * (made for the body that follows) cannot match the empty one. */
static int
r_no_content_length(struct ctx *c)
{
        struct buf b = { 0 };
        char *body = event_body(c->id);
        buf_printf(&b, "POST %s HTTP/1.0\r\nContent-Type: application/json\r\n", H_PATH);
        req_sig(&b, body, strlen(body));
        buf_printf(&b, "\r\n%s", body);
        int st = raw_exchange(dm.port, &b, c->head, sizeof(c->head));
        buf_free(&b);
        free(body);
        return st;
}

/* ---- the table ------------------------------------------------------------------------ */

static const struct row {
        const char *kind;
        int want;    /* a status, W_REFUSED or W_CLOSED */
        bool stored; /* the row's event is stored afterwards (W_CLEAN: exactly when 200) */
        row_fn run;
} rows[] = {
        { "no signature", 401, false, r_sig_missing },
        { "empty signature", 401, false, r_sig_empty },
        { "wrong prefix (hmac-sha512-hex=, right hex)", 401, false, r_sig_wrong_prefix },
        { "upper-case hex", 401, false, r_sig_upper_hex },
        { "signature of another body", 401, false, r_sig_other_body },
        { "signature over body + \"\\n\"", 401, false, r_sig_trailing_newline },
        { "signature value + bare CR (evhttp)", 400, false, r_sig_trailing_cr },
        { "body + \"\\n\" after signing", 401, false, r_body_trailing_newline },
        { "0-byte body, unsigned", 401, false, r_empty_unsigned },
        { "0-byte body, signed", 400, false, r_empty_signed },
        { "Content-Length max+1, head only", 413, false, r_over_max_head_only },
        { "Content-Length 10^23", W_REFUSED, false, r_cl_overflow },
        { "Content-Length -5", 400, false, r_cl_negative },
        { "two Content-Length (2, then real)", W_REFUSED, false, r_cl_twice },
        { "chunk header max+1, no data", 413, false, r_chunk_over_max },
        { "chunks summing to max+1", 413, false, r_chunks_sum_over_max },
        { "Content-Length > body, then silence", W_CLOSED, false, r_cl_larger_silence },
        { "unfinished head, then silence", W_CLOSED, false, r_partial_head_silence },
        { "chunked, signed", 200, true, r_chunked_signed },
        { "Expect: 100-continue, signed", 200, true, r_expect_continue },
        { "HTTP/1.0, no Content-Length", 401, false, r_no_content_length },
        { "invalid UTF-8 (\\xff\\xfe)", 400, false, r_invalid_utf8 },
        { "overlong UTF-8 (\\xc0\\xaf)", 400, false, r_overlong_utf8 },
        { "lone surrogate \\ud800", 400, false, r_lone_surrogate },
        { "JSON nested 10,000 deep", 400, false, r_nested_deep },
        { "100,000-key object (signed)", 200, true, r_many_keys },
        { "duplicate keys", 400, false, r_duplicate_keys },
        { "integer beyond 64 bits (30 digits)", W_CLEAN, false, r_int_out_of_range },
        { "real beyond a double (1e999)", W_CLEAN, false, r_real_out_of_range },
        { "number beyond numeric's scale (0.0...1e-10000)", W_CLEAN, false, r_numeric_scale },
        { "number 1e999999", 400, false, r_number_beyond_all },
        { "integer of 20,000 digits", 400, false, r_integer_20000_digits },
        { "id not a string", 400, false, r_id_number },
        { "id of 65 bytes", 400, false, r_id_too_long },
        { "\\u0000 in description", 400, false, r_nul_in_description },
        { "\\u0000 in result (stored raw)", 200, true, r_nul_in_result },
        { "created_at offset +05:99", 200, true, r_created_at_bad_offset },
        { "\"object\":\"Event\\u0000Tracker\"", 400, false, r_object_event_nul },
        { "not an object", 400, false, r_not_object },
        { "trailing garbage after the object", 400, false, r_trailing_garbage },
        { "header line of 64 KiB", W_REFUSED, false, r_header_64k },
        { "request line of 64 KiB", W_REFUSED, false, r_uri_64k },
        { "1,000 headers (~30 KiB head)", W_REFUSED, false, r_headers_1000 },
        { "1,000 tiny headers (within limit)", 200, true, r_headers_1000_small },
        { "path /webhooks/../webhooks/easypost", 404, false, r_path_dotdot },
        { "path /webhooks/%2e%2e/webhooks/easypost", 404, false, r_path_dotdot_encoded },
        { "path /webhooks/easypost%00", 404, false, r_path_nul },
        { "path /webhooks/easypost%00.json", 404, false, r_path_nul_suffix },
        { "path /webhooks/easypost/", 404, false, r_path_trailing_slash },
        { "PUT", 405, false, r_put },
        { "DELETE", 405, false, r_delete },
        { "PATCH", 405, false, r_patch },
        { "GET", 405, false, r_get },
        { "OPTIONS", 405, false, r_options },
        { "HEAD", 405, false, r_head },
        { "unknown method BREW (evhttp)", 501, false, r_unknown_method },
        { "Content-Type text/plain", 415, false, r_ct_text },
        { "no Content-Type", 415, false, r_ct_missing },
        { "Content-Type application/jsonp", 415, false, r_ct_jsonp },
        { "Content-Type form-urlencoded", 415, false, r_ct_form },
        { "application/json; charset=utf-8", 200, true, r_ct_charset },
        { "TLS ClientHello on plain HTTP", W_REFUSED, false, r_tls_hello },
};

static void
fmt_want(int want, char *out, size_t cap)
{
        if (want == W_REFUSED)
                snprintf(out, cap, "4xx/closed");
        else if (want == W_CLOSED)
                snprintf(out, cap, "closed");
        else if (want == W_CLEAN)
                snprintf(out, cap, "400/200+row");
        else
                snprintf(out, cap, "%d", want);
}

static void
fmt_got(int st, char *out, size_t cap)
{
        if (st == RAW_CLOSED)
                snprintf(out, cap, "closed");
        else if (st == RAW_TIMEOUT)
                snprintf(out, cap, "timeout");
        else if (st == RAW_GARBAGE)
                snprintf(out, cap, "garbage");
        else
                snprintf(out, cap, "%d", st);
}

static bool
matches(int want, int st)
{
        if (want == W_REFUSED)
                return st == RAW_CLOSED || (st >= 400 && st < 500);
        if (want == W_CLOSED)
                return st == RAW_CLOSED;
        if (want == W_CLEAN)
                return st == 400 || st == 200;
        return st == want;
}

/* True while the daemon runs; a dead one is left unreaped for daemon_stop. */
static bool
daemon_alive(void)
{
        siginfo_t si = { 0 };

        return waitid(P_PID, (id_t)dm.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

static void
up(void)
{
        static char body[64], hdr[64], idle[64];
        snprintf(body, sizeof(body), "EASYPOST_SYNC_MAX_BODY_BYTES=%ld", H_MAX_BODY);
        snprintf(hdr, sizeof(hdr), "EASYPOST_SYNC_MAX_HEADER_BYTES=%ld", H_MAX_HEADER);
        snprintf(idle, sizeof(idle), "EASYPOST_SYNC_IDLE_TIMEOUT=%d", H_IDLE);
        const char *env[] = { body, hdr, idle, NULL };
        ck_assert_int_eq(daemon_start(&dm, env), 0);
}

static void
down(void)
{
        if (dm.pid > 0)
                ck_assert_int_eq(daemon_stop(&dm, SIGTERM), 0);
}

START_TEST(test_hostile_table)
{
        enum { NROWS = sizeof(rows) / sizeof(rows[0]) };
        PGconn *db = db_open();
        char prefix[48], want[32], got[32], failures[2048] = "";
        size_t nfail = 0, flen = 0;
        unsigned long long nonce = (unsigned long long)clock_real_ms();
        int sts[NROWS];
        long stored[NROWS], failed[NROWS];
        struct ctx *cx = xcalloc(NROWS, sizeof(*cx));
        char (*ids)[80] = xcalloc(NROWS, sizeof(*ids));

        snprintf(prefix, sizeof(prefix), "evt_hostile_%llu_", nonce);
        for (size_t i = 0; i < NROWS; i++) {
                snprintf(ids[i], sizeof(ids[i]), "%s%02zu", prefix, i);
                cx[i].id = ids[i];
                cx[i].ok = true;
                sts[i] = rows[i].run(&cx[i]);
                ck_assert_msg(daemon_alive(), "daemon died on row \"%s\"", rows[i].kind);
        }
        /* Stored rows only after every request: a late write would show up here. */
        for (size_t i = 0; i < NROWS; i++) {
                char like[80];
                snprintf(like, sizeof(like), "%s%%", ids[i]);
                stored[i] = db_long(db, "SELECT count(*) FROM webhook_events "
                                        "WHERE event_id LIKE $1", like);
                failed[i] = db_long(db, "SELECT count(*) FROM webhook_events "
                                        "WHERE event_id LIKE $1 AND status = 'failed'", like);
        }
        fprintf(stderr, "\nhostile input (max_body_bytes=%ld max_header_bytes=%ld "
                        "idle_timeout=%d):\n", H_MAX_BODY, H_MAX_HEADER, H_IDLE);
        fprintf(stderr, "| %-46s | %-11s | %-7s | %-6s | %s\n", "kind", "expected", "got",
                "stored", "note");
        for (size_t i = 0; i < NROWS; i++) {
                /* a stored row must be an event, never a dead letter */
                bool want_row = rows[i].want == W_CLEAN ? sts[i] == 200 : rows[i].stored;
                bool ok = matches(rows[i].want, sts[i]) && cx[i].ok &&
                          stored[i] == (want_row ? 1 : 0) && failed[i] == 0;
                if (failed[i] > 0)
                        snprintf(cx[i].note, sizeof(cx[i].note),
                                 "stored as a dead letter (failed)");
                fmt_want(rows[i].want, want, sizeof(want));
                fmt_got(sts[i], got, sizeof(got));
                fprintf(stderr, "| %-46s | %-11s | %-7s | %-6ld | %s%s\n", rows[i].kind, want, got,
                        stored[i], ok ? "" : "MISMATCH ", cx[i].note);
                if (!ok) {
                        nfail++;
                        flen += (size_t)snprintf(failures + flen,
                                                 flen < sizeof(failures) ? sizeof(failures) - flen
                                                                         : 0,
                                                 "%s%s: want %s, got %s, stored %ld",
                                                 nfail > 1 ? "; " : "", rows[i].kind, want, got,
                                                 stored[i]);
                        if (flen >= sizeof(failures))
                                flen = sizeof(failures) - 1;
                }
        }
        fprintf(stderr, "%zu rows, %zu mismatches\n\n", (size_t)NROWS, nfail);

        /* Still alive, still storing, and a clean exit. The daemon is stopped
         * before any assertion: a failed one ends the test process, and Check
         * then SIGKILLs the daemon, losing its exit status (and any leak report). */
        int hz = http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0);
        char id[80], resp[256];
        snprintf(id, sizeof(id), "%sfinal", prefix);
        char *b = event_body(id);
        int st = post_event(dm.port, b, strlen(b), resp, sizeof(resp));
        long final_rows =
                db_long(db, "SELECT count(*) FROM webhook_events WHERE event_id = $1", id);
        int exit_status = daemon_stop(&dm, SIGTERM);
        free(b);
        free(cx);
        free(ids);
        PQfinish(db);
        ck_assert_int_eq(hz, 200);
        ck_assert_int_eq(st, 200);
        ck_assert_ptr_nonnull(strstr(resp, "\"stored\""));
        ck_assert_int_eq(final_rows, 1);
        ck_assert_msg(exit_status == 0, "daemon exit status %d after SIGTERM (see %s)", exit_status,
                      dm.log);
        ck_assert_msg(nfail == 0, "%zu hostile rows mismatched: %s", nfail, failures);
}
END_TEST

/* ---- early answers to clients still sending (lingering close) ------------------------- */

#define L_BODY (2L << 20) /* twice max_body_bytes, sent in one go before reading */

/* Reads until end of file, an error or timeout_ms; returns 0 on a clean end
 * of file, else the errno of the failed recv (ETIMEDOUT on timeout). */
static int
raw_read_all(int fd, int timeout_ms, struct buf *out)
{
        uint64_t end = clock_mono_us() + (uint64_t)timeout_ms * 1000u;
        char chunk[16384];

        for (;;) {
                ssize_t r = raw_recv_by(fd, end, chunk, sizeof(chunk));
                if (r == RECV_TIMEOUT)
                        return ETIMEDOUT;
                if (r < 0)
                        return errno;
                if (r == 0)
                        return 0;
                buf_add(out, chunk, (size_t)r);
        }
}

/* The head of an oversized signed POST declaring `declared` bytes. */
static void
oversized_head(struct buf *b, const char *body, size_t len, unsigned long long declared)
{
        req_start(b, "POST", H_PATH, "application/json");
        req_sig(b, body, len);
        buf_printf(b, "Content-Length: %llu\r\n\r\n", declared);
}

/* A client that sends head and 2 MiB of body in one go and only then reads:
 * evhttp answers 413 from the head; the client must be able to send it all
 * (no reset while sending), then read that answer whole and a clean end of
 * file. */
START_TEST(test_early_413_reaches_a_client_still_sending)
{
        struct buf req = { 0 }, resp = { 0 };
        char *body = xmalloc(L_BODY);
        int serr, rerr;
        long clen = -1;

        memset(body, ' ', L_BODY);
        oversized_head(&req, body, L_BODY, L_BODY);
        buf_add(&req, body, L_BODY);
        int fd = raw_connect(dm.port);
        /* A small send buffer, as over a real network: what the daemon does
         * not read cannot all wait in this host's buffers. */
        int sndbuf = 65536;
        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
        size_t sent = raw_send_n(fd, req.p, req.len, &serr);
        rerr = raw_read_all(fd, 15000, &resp);
        close(fd);
        const char *eoh = resp.p ? strstr(resp.p, "\r\n\r\n") : NULL;
        const char *cl = resp.p ? strcasestr(resp.p, "\r\nContent-Length:") : NULL;
        if (cl != NULL)
                clen = strtol(cl + strlen("\r\nContent-Length:"), NULL, 10);
        fprintf(stderr, "early 413: sent %zu of %zu bytes (%s), read %zu bytes then %s\n", sent,
                req.len, serr ? strerror(serr) : "all", resp.len,
                rerr ? strerror(rerr) : "end of file");
        fprintf(stderr, "early 413 answer: %s\n", resp.p ? resp.p : "(nothing)");
        ck_assert_msg(rerr == 0, "reading the answer ended with %s after %zu bytes: %.80s",
                      strerror(rerr), resp.len, resp.p ? resp.p : "");
        ck_assert_msg(resp.len > 0 && strncmp(resp.p, "HTTP/1.1 413 ", 13) == 0, "answer: %.80s",
                      resp.p ? resp.p : "(nothing)");
        ck_assert_ptr_nonnull(eoh);
        ck_assert_int_gt(clen, 0);
        ck_assert_int_eq((long)(resp.len - (size_t)(eoh + 4 - resp.p)), clen);
        ck_assert_msg(sent == req.len, "the daemon stopped reading after %zu of %zu bytes: %s",
                      sent, req.len, strerror(serr));
        buf_free(&req);
        buf_free(&resp);
        free(body);
}
END_TEST

/* A client that declares a huge body and never stops sending is cut off
 * (reset) once it has sent a few MiB more than the daemon reads, within
 * seconds; the daemon serves and stores as before. */
START_TEST(test_endless_sender_is_cut_off)
{
        struct buf head = { 0 };
        char *chunk = xcalloc(1, 65536);
        char *ev = event_body("evt_linger_endless");
        int err = 0;
        size_t total = 0;

        memset(chunk, ' ', 65536);
        oversized_head(&head, ev, strlen(ev), 1ULL << 40);
        int fd = raw_connect(dm.port);
        uint64_t t0 = clock_mono_us();
        total += raw_send_n(fd, head.p, head.len, &err);
        while (err == 0 && ms_since(t0) < 30000)
                total += raw_send_n(fd, chunk, 65536, &err);
        double secs = ms_since(t0) / 1000.0;
        close(fd);
        fprintf(stderr, "endless sender: cut after %.1f s and %zu bytes (%s)\n", secs, total,
                err ? strerror(err) : "not cut");
        ck_assert_msg(err == EPIPE || err == ECONNRESET,
                      "sending ended with %s after %.1f s and %zu bytes",
                      err ? strerror(err) : "nothing (30 s)", secs, total);
        ck_assert_msg(secs < 15, "cut only after %.1f s", secs);
        ck_assert_msg(total < (64UL << 20), "%zu bytes accepted before the cut", total);

        char resp[256];
        char *b = event_body("evt_linger_after_endless");
        ck_assert_int_eq(http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        ck_assert_int_eq(post_event(dm.port, b, strlen(b), resp, sizeof(resp)), 200);
        free(b);
        free(ev);
        free(chunk);
        buf_free(&head);
}
END_TEST

/* Clients that get an early 413 and then stay connected without a word:
 * the daemon holds at most its cap of lingering sockets (256) however many
 * such clients there are, lets each go after its time bound (2 s) although
 * the client stays, and serves meanwhile. */
START_TEST(test_lingering_sockets_are_bounded)
{
        enum { N = 300, CAP = 256 };
        int fds[N];
        struct buf head = { 0 };
        char *ev = event_body("evt_linger_bounded");
        char resp[512];
        const char *metric = "process_open_fds";
        double base = daemon_metric(dm.port, metric), most, now;

        oversized_head(&head, ev, strlen(ev), L_BODY);
        for (int i = 0; i < N; i++) {
                fds[i] = raw_connect(dm.port);
                raw_send(fds[i], head.p, head.len);
        }
        for (int i = 0; i < N; i++) {
                int st = raw_status(fds[i], 15000, true, resp, sizeof(resp));
                ck_assert_msg(st == 413, "client %d got %d", i, st);
        }
        /* Every connection has been answered and closed by evhttp: what is
         * still open for the clients is lingering. */
        most = daemon_metric(dm.port, metric);
        ck_assert_int_eq(http_req(dm.port, "GET", "/healthz", NULL, NULL, 0, NULL, 0), 200);
        uint64_t t0 = clock_mono_us();
        while ((now = daemon_metric(dm.port, metric)) > base + 8 && ms_since(t0) < 20000)
                usleep(100 * 1000);
        fprintf(stderr, "lingering: %.0f open fds before, %.0f with %d silent clients answered, "
                        "%.0f after %.1f s\n", base, most, N, now, ms_since(t0) / 1000.0);
        for (int i = 0; i < N; i++)
                close(fds[i]);
        ck_assert_msg(most <= base + CAP + 16, "%.0f open fds once all were answered (%.0f before)", most, base);
        ck_assert_msg(now <= base + 8, "%.0f open fds 20 s later (%.0f before)", now, base);
        buf_free(&head);
        free(ev);
}
END_TEST

/* A client that gets an early 413 and stays connected without a word: while
 * its socket lingers (until the 2 s bound) the daemon waits for it, it does
 * not spin. (With epoll's changelist, evhttp's removal of the descriptor it
 * closes was applied only after the close, failed, and left the socket
 * registered, always writable, on the copy that lingers: a core busy for
 * the whole bound.) */
START_TEST(test_lingering_socket_costs_no_cpu)
{
        struct buf head = { 0 };
        char *ev = event_body("evt_linger_idle");
        char resp[512];
        const char *fds = "process_open_fds", *cpu = "process_cpu_seconds_total";
        double base = daemon_metric(dm.port, fds), now;

        oversized_head(&head, ev, strlen(ev), L_BODY);
        int fd = raw_connect(dm.port);
        raw_send(fd, head.p, head.len);
        ck_assert_int_eq(raw_status(fd, 15000, true, resp, sizeof(resp)), 413);
        double cpu0 = daemon_metric(dm.port, cpu);
        uint64_t t0 = clock_mono_us();
        /* the socket lingers until its time bound; then the daemon's copy closes */
        while ((now = daemon_metric(dm.port, fds)) > base && ms_since(t0) < 20000)
                usleep(100 * 1000);
        double wall = ms_since(t0) / 1000.0, used = daemon_metric(dm.port, cpu) - cpu0;
        close(fd);
        fprintf(stderr, "lingering socket: %.2f s of CPU in %.2f s (%.0f open fds, %.0f before)\n",
                used, wall, now, base);
        ck_assert_msg(now <= base, "%.0f open fds 20 s later (%.0f before)", now, base);
        ck_assert_msg(used < 0.25 * wall, "the daemon used %.2f s of CPU in %.2f s while a socket lingered",
                      used, wall);
        buf_free(&head);
        free(ev);
}
END_TEST

/* ---- reply heads: Date and Content-Length written by the daemon ----------------------- */

/* Reads one response from fd: head (status line and headers, with the blank
 * line) into head and exactly Content-Length bytes of body into body, none
 * for the answer to a HEAD (head_only). `in` keeps what arrived after it:
 * the next pipelined answer. */
static void
read_response(int fd, struct buf *in, bool head_only, struct buf *head, struct buf *body)
{
        uint64_t end = clock_mono_us() + 30000u * 1000u;
        char chunk[4096];

        for (;;) {
                char *eoh = in->p ? strstr(in->p, "\r\n\r\n") : NULL;
                if (eoh != NULL) {
                        size_t hl = (size_t)(eoh + 4 - in->p);
                        char *cl = strstr(in->p, "\r\nContent-Length: ");
                        ck_assert_msg(cl != NULL && cl < eoh, "no Content-Length: %s", in->p);
                        size_t want = head_only ? 0 : strtoul(cl + 18, NULL, 10);
                        if (in->len >= hl + want) {
                                buf_add(head, in->p, hl);
                                buf_add(body, in->p + hl, want);
                                in->len -= hl + want;
                                memmove(in->p, in->p + hl + want, in->len + 1);
                                return;
                        }
                }
                ssize_t r = raw_recv_by(fd, end, chunk, sizeof(chunk));
                ck_assert_msg(r > 0, "connection ended or silent after %zu bytes", in->len);
                buf_add(in, chunk, (size_t)r);
        }
}

static size_t
count_str(const char *s, const char *needle)
{
        size_t n = 0;

        for (const char *p = strstr(s, needle); p != NULL; p = strstr(p + 1, needle))
                n++;
        return n;
}

/* One Date header, IMF-fixdate, between t0 and t1 (time(NULL) before the
 * request and after the answer); one Content-Length, equal to the body's. */
static void
check_head(const struct buf *head, size_t body_len, time_t t0, time_t t1)
{
        ck_assert_msg(count_str(head->p, "\r\nDate: ") == 1, "Date headers: %s", head->p);
        ck_assert_msg(count_str(head->p, "\r\nContent-Length: ") == 1, "lengths: %s", head->p);
        const char *d = strstr(head->p, "\r\nDate: ") + 8;
        struct tm tm = { 0 };
        const char *rest = strptime(d, "%a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        ck_assert_msg(rest != NULL && rest - d == 31, "Date: %.40s", d);
        time_t t = timegm(&tm);
        ck_assert_msg(t >= t0 && t <= t1, "Date %lld outside [%lld, %lld]", (long long)t,
                      (long long)t0, (long long)t1);
        char want[48];
        snprintf(want, sizeof(want), "\r\nContent-Length: %zu\r\n", body_len);
        ck_assert_msg(strstr(head->p, want) != NULL, "%s", head->p);
}

/* A stored event, its duplicate on the same keep-alive connection, a 401, a
 * HEAD and a GET of /healthz: each head has one Date of the current second
 * and one Content-Length that frames its body (none after a HEAD), so
 * keep-alive and pipelining still work. */
START_TEST(test_reply_heads_frame_their_bodies)
{
        char id[64], want[128];
        snprintf(id, sizeof(id), "evt_head_%llu", (unsigned long long)clock_real_ms());
        char *ev = event_body(id);
        size_t len = strlen(ev);
        int fd = raw_connect(dm.port);
        struct buf in = { 0 };

        for (int i = 0; i < 2; i++) {
                struct buf req = { 0 }, head = { 0 }, body = { 0 };
                buf_printf(&req, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 "Content-Type: application/json\r\n", H_PATH);
                req_sig(&req, ev, len);
                req_body(&req, ev, len);
                time_t t0 = time(NULL);
                raw_send(fd, req.p, req.len);
                read_response(fd, &in, false, &head, &body);
                time_t t1 = time(NULL);
                ck_assert_msg(strncmp(head.p, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", head.p);
                check_head(&head, body.len, t0, t1);
                snprintf(want, sizeof(want), "{\"id\":\"%s\",\"status\":\"%s\"}\n", id,
                         i == 0 ? "stored" : "duplicate");
                ck_assert_str_eq(body.p, want);
                buf_free(&req);
                buf_free(&head);
                buf_free(&body);
        }

        struct buf req = { 0 }, head = { 0 }, body = { 0 };
        buf_printf(&req, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         "X-Hmac-Signature: hmac-sha256-hex=00\r\n", H_PATH);
        req_body(&req, ev, len);
        buf_printf(&req, "HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                         "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        time_t t0 = time(NULL);
        raw_send(fd, req.p, req.len);
        read_response(fd, &in, false, &head, &body);
        ck_assert_msg(strncmp(head.p, "HTTP/1.1 401 ", 13) == 0, "%s", head.p);
        check_head(&head, body.len, t0, time(NULL));
        ck_assert_msg(body.len > 2 && body.p[0] == '{' && body.p[body.len - 1] == '\n', "%s", body.p);
        buf_free(&head);
        buf_free(&body);
        /* HEAD: the length a GET gets, and no body before the next answer */
        read_response(fd, &in, true, &head, &body);
        ck_assert_msg(strncmp(head.p, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", head.p);
        check_head(&head, strlen("{\"status\":\"ok\"}\n"), t0, time(NULL));
        buf_free(&head);
        buf_free(&body);
        read_response(fd, &in, false, &head, &body);
        ck_assert_msg(strncmp(head.p, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", head.p);
        check_head(&head, body.len, t0, time(NULL));
        ck_assert_str_eq(body.p, "{\"status\":\"ok\"}\n");
        ck_assert_uint_eq(in.len, 0);
        close(fd);
        buf_free(&in);
        buf_free(&req);
        buf_free(&head);
        buf_free(&body);
        free(ev);
}
END_TEST

Suite *
hostile_suite(void)
{
        Suite *s = suite_create("hostile");
        TCase *tc = tcase_create("table");

        tcase_add_checked_fixture(tc, up, down);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_hostile_table);
        suite_add_tcase(s, tc);

        tc = tcase_create("linger");
        tcase_add_checked_fixture(tc, up, down);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_early_413_reaches_a_client_still_sending);
        tcase_add_test(tc, test_endless_sender_is_cut_off);
        tcase_add_test(tc, test_lingering_sockets_are_bounded);
        tcase_add_test(tc, test_lingering_socket_costs_no_cpu);
        suite_add_tcase(s, tc);

        tc = tcase_create("reply");
        tcase_add_checked_fixture(tc, up, down);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_reply_heads_frame_their_bodies);
        suite_add_tcase(s, tc);
        return s;
}
