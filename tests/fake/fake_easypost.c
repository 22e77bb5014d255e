/*
 * fake_easypost.c - a local stand-in for the EasyPost API v2, for integration tests.
 *
 * One evhttp on one event_base serves GET /v2/shipments/{id}, /v2/trackers/{id},
 * /v2/events, /v2/events/{id} and /v2/webhooks, and PATCH /v2/webhooks/{id} (which
 * re-enables a disabled webhook), from an in-memory store that the test seeds over
 * /_control (tests/fake/fake_easypost.md lists the control API). Fault rules turn the next
 * matching API requests into errors, slow answers or dropped connections; counters let
 * a test check what the client sent and how fast. Delays are timers, never sleeps, so a
 * slow answer on one connection never holds up another.
 *
 * A delivery simulator (POST /_control/sim) plays EasyPost's side of an account: trackers
 * that advance, the events they make, and signed webhook deliveries with retries and
 * disabling, as the section "delivery simulator" below describes.
 *
 * Deliberately not a full API: no writes under /v2 but the webhook update, no
 * pagination except for events and trackers,
 * and one API key (no test/production distinction). Control requests need no auth and
 * are not counted in the stats.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#ifndef EPS_SRCDIR
#define EPS_SRCDIR "."
#endif

#define FAKE_BODY_MAX           (8u << 20)      /* control bodies; API requests have none */
#define FAKE_PAGE_DEFAULT       20
#define FAKE_PAGE_MAX           100
#define FAKE_RECENT_MAX         256             /* requests kept for GET /_control/stats */
#define FAKE_SECONDS_MAX        3600            /* per-second buckets kept (oldest dropped) */
#define FAKE_UA_MAX             64              /* distinct User-Agent values kept */
#define FAKE_STR_MAX            512             /* longest path/UA/URI kept in stats and logs */
#define FAKE_DELAY_MAX_MS       600000
#define FAKE_AUTH_MAX           1024            /* longer Authorization values are just wrong */

/* What a fault rule does to a request it matches; copied into the call it hits. */
struct fault_action {
        int status;             /* 0: answer normally (after delay_ms) */
        int retry_after;        /* seconds for Retry-After; -1: no header */
        unsigned delay_ms;
        bool drop;              /* close the connection without answering */
        char *body;             /* NULL: the EasyPost error document */
        char *code, *message;   /* NULL: derived from status */
};

struct fault {
        TAILQ_ENTRY(fault) link;
        char *path_prefix;
        int remaining;          /* -1: forever */
        struct fault_action act;
};
TAILQ_HEAD(fault_list, fault);

/* One stored event; the list is kept newest first (created_at, then id). */
struct event_entry {
        int64_t created_ms;
        const char *id;         /* borrowed from obj */
        json_t *obj;            /* own reference */
};

struct second_count {
        int64_t second;
        unsigned count;
};

struct recent {
        uint64_t t_ms;
        const char *method;     /* static string */
        char *uri;
        char *body;             /* the request body (printable copy), NULL without one */
        int status;             /* 0: dropped */
};

struct stats {
        unsigned gen;           /* bumped by reset, so late completions are not counted */
        uint64_t since_ms;
        unsigned long requests, auth_failures, faults_applied, dropped, no_user_agent;
        json_t *by_path, *by_status, *user_agents;
        struct second_count *seconds;
        size_t nseconds, cap_seconds;
        unsigned max_per_second;
        uint64_t *win;          /* monotonic ms of arrivals in the last 1000 ms */
        size_t win_start, win_end, win_cap;
        unsigned max_per_window;
        struct recent recent[FAKE_RECENT_MAX];
        size_t recent_next, recent_len;
};

/*
 * One request in progress. API and control requests answered at once live on the
 * stack; delayed or dropped ones are on the heap, in fake.pending, with a timer.
 */
struct call {
        TAILQ_ENTRY(call) link;
        struct fake *f;
        struct evhttp_request *req;     /* NULL once answered or dropped */
        struct event *timer;
        char *path, *query;             /* raw copies: the request may be detached later */
        char *safe_path, *safe_uri;     /* printable copies for logs and stats */
        char *safe_body;                /* the request body for stats, NULL without one */
        const char *method;
        enum evhttp_cmd_type cmd;
        uint64_t t_ms;                  /* arrival, unix ms */
        unsigned gen;
        bool api, faulted;
        struct fault_action act;
};
TAILQ_HEAD(call_list, call);

struct fake {
        struct event_base *base;
        struct evhttp *http;
        struct event *sigterm, *sigint;
        const char *api_key;
        size_t api_key_len;
        json_t *objects;                /* id -> object, every kind */
        struct event_entry *events;
        size_t nevents, cap_events;
        struct fault_list faults;
        long trackers_rate;             /* GET /v2/trackers per second before 429; 0: no limit */
        uint64_t trk_times[128];        /* monotonic ms of the last second's tracker lists */
        size_t ntrk_times;
        struct call_list pending;
        struct stats st;
        unsigned long seq;              /* x-ep-request-uuid */
        struct sim *sim;                /* the delivery simulator, NULL when none runs */
};

/* The delivery simulator (its own section below, hooked into the router). */
static bool sim_payloads(struct call *c, const char *id);
static void sim_control(struct call *c);
static void sim_free(struct sim *s);

/* ---- small helpers ------------------------------------------------------------------- */

static void *
xrealloc(void *p, size_t n)
{
        void *q = realloc(p, n ? n : 1);

        if (q == NULL) {
                fprintf(stderr, "fake_easypost: out of memory\n");
                abort();
        }
        return q;
}

static void *
xcalloc(size_t n, size_t size)
{
        void *p = calloc(n ? n : 1, size ? size : 1);

        if (p == NULL) {
                fprintf(stderr, "fake_easypost: out of memory\n");
                abort();
        }
        return p;
}

static char *
xstrdup(const char *s)
{
        size_t n = strlen(s) + 1;

        return memcpy(xrealloc(NULL, n), s, n);
}

static char *
strdup_or_null(const char *s)
{
        return s ? xstrdup(s) : NULL;
}

/* Jansson returns NULL only on OOM here (inputs are valid), which we treat like malloc. */
static json_t *
jcheck(json_t *j)
{
        if (j == NULL) {
                fprintf(stderr, "fake_easypost: out of memory (jansson)\n");
                abort();
        }
        return j;
}

static uint64_t
clock_real_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t
clock_mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Printable ASCII copy, capped: request lines and headers are attacker-controlled
 * bytes, and they end up in log lines and as jansson keys (which must be UTF-8).
 */
static char *
printable_dup(const char *s)
{
        size_t n = strlen(s);
        char *d;

        if (n > FAKE_STR_MAX)
                n = FAKE_STR_MAX;
        d = xrealloc(NULL, n + 1);
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)s[i];
                d[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
        }
        d[n] = '\0';
        return d;
}

static bool
has_prefix(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Strict decimal integer in [min, max]; false on anything else. */
static bool
int_parse(const char *s, long min, long max, long *out)
{
        char *end;
        long v;

        if (s == NULL || *s == '\0' || *s == ' ' || *s == '+')
                return false;
        v = strtol(s, &end, 10);
        if (*end != '\0' || v < min || v > max)
                return false;
        *out = v;
        return true;
}

static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        unsigned yoe = (unsigned)(y - era * 400);
        unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
        unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

        return era * 146097 + (int64_t)doe - 719468;
}

static bool
digits(const char **p, int n, unsigned *out)
{
        unsigned v = 0;

        for (int i = 0; i < n; i++) {
                if ((*p)[i] < '0' || (*p)[i] > '9')
                        return false;
                v = v * 10 + (unsigned)((*p)[i] - '0');
        }
        *p += n;
        *out = v;
        return true;
}

/*
 * "YYYY-MM-DD[THH:MM:SS[.fff...]][Z|+-HH:MM|+-HHMM]" to unix ms. EasyPost mixes event
 * timestamps with milliseconds and object timestamps without, so comparing the strings
 * would order "...:05Z" after "...:05.456Z"; we compare numbers instead.
 */
static bool
time_parse_ms(const char *s, int64_t *out)
{
        unsigned y, mo, d, h = 0, mi = 0, sec = 0, ms = 0, oh, om;
        int64_t off_min = 0;
        const char *p = s;

        if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
            !digits(&p, 2, &d))
                return false;
        if (*p == 'T' || *p == 't' || *p == ' ') {
                p++;
                if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || *p++ != ':' ||
                    !digits(&p, 2, &sec))
                        return false;
                if (*p == '.') {
                        unsigned scale = 100;
                        p++;
                        if (*p < '0' || *p > '9')
                                return false;
                        for (; *p >= '0' && *p <= '9'; p++) {
                                ms += (unsigned)(*p - '0') * scale;
                                scale /= 10;
                        }
                }
                if (*p == 'Z' || *p == 'z') {
                        p++;
                } else if (*p == '+' || *p == '-') {
                        int sign = *p++ == '-' ? -1 : 1;
                        if (!digits(&p, 2, &oh))
                                return false;
                        if (*p == ':')
                                p++;
                        if (!digits(&p, 2, &om) || oh > 23 || om > 59)
                                return false;
                        off_min = sign * (int64_t)(oh * 60 + om);
                }
        }
        if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
                return false;
        *out = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) - off_min * 60) *
                       1000 + ms;
        return true;
}

static const char *
reason_phrase(int status)
{
        switch (status) {
        case 200: return "OK";
        case 201: return "Created";
        case 204: return "No Content";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 402: return "Payment Required";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 500: return "Internal Server Error";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        default: return "Status";
        }
}

/* EasyPost-style error code for an injected status without an explicit "code". */
static const char *
status_code_name(int status)
{
        switch (status) {
        case 400: return "BAD_REQUEST";
        case 401: return "APIKEY.INACTIVE";
        case 402: return "PAYMENT_REQUIRED";
        case 403: return "FORBIDDEN";
        case 404: return "NOT_FOUND";
        case 408: return "REQUEST_TIMEOUT";
        case 422: return "UNPROCESSABLE_ENTITY";
        case 429: return "RATE_LIMITED";
        case 500: return "INTERNAL_SERVER_ERROR";
        case 502: return "BAD_GATEWAY";
        case 503: return "SERVICE_UNAVAILABLE";
        case 504: return "GATEWAY_TIMEOUT";
        default: return "FAULT.INJECTED";
        }
}

static const char *
method_name(enum evhttp_cmd_type cmd)
{
        switch (cmd) {
        case EVHTTP_REQ_GET: return "GET";
        case EVHTTP_REQ_POST: return "POST";
        case EVHTTP_REQ_HEAD: return "HEAD";
        case EVHTTP_REQ_PUT: return "PUT";
        case EVHTTP_REQ_DELETE: return "DELETE";
        case EVHTTP_REQ_OPTIONS: return "OPTIONS";
        case EVHTTP_REQ_TRACE: return "TRACE";
        case EVHTTP_REQ_CONNECT: return "CONNECT";
        case EVHTTP_REQ_PATCH: return "PATCH";
        default: return "OTHER";
        }
}

/* ---- stats ---------------------------------------------------------------------------- */

static void
stats_init(struct stats *st)
{
        st->by_path = jcheck(json_object());
        st->by_status = jcheck(json_object());
        st->user_agents = jcheck(json_array());
        st->since_ms = clock_real_ms();
}

static void
stats_fini(struct stats *st)
{
        json_decref(st->by_path);
        json_decref(st->by_status);
        json_decref(st->user_agents);
        for (size_t i = 0; i < FAKE_RECENT_MAX; i++) {
                free(st->recent[i].uri);
                free(st->recent[i].body);
        }
        free(st->seconds);
        free(st->win);
        memset(st, 0, sizeof(*st));
}

/* Counters go back to zero; the generation survives so in-flight calls are not counted. */
static void
stats_reset(struct stats *st)
{
        unsigned gen = st->gen + 1;

        stats_fini(st);
        stats_init(st);
        st->gen = gen;
}

static void
counter_inc(json_t *obj, const char *key)
{
        json_int_t v = json_integer_value(json_object_get(obj, key));

        json_object_set_new(obj, key, jcheck(json_integer(v + 1)));
}

/* Called once per API request when it arrives, before faults or auth. */
static void
stats_arrival(struct stats *st, const struct call *c, const char *ua)
{
        int64_t sec = (int64_t)(c->t_ms / 1000);
        size_t i;
        uint64_t now;

        st->requests++;
        counter_inc(st->by_path, c->safe_path);

        /* wall-clock seconds, ascending; the clock may step back, so search from the end */
        i = st->nseconds;
        while (i > 0 && st->seconds[i - 1].second > sec)
                i--;
        if (i > 0 && st->seconds[i - 1].second == sec) {
                i--;
                st->seconds[i].count++;
        } else {
                if (st->nseconds == FAKE_SECONDS_MAX) {
                        memmove(st->seconds, st->seconds + 1, (st->nseconds - 1) * sizeof(*st->seconds));
                        st->nseconds--;
                        if (i > 0)
                                i--;
                }
                if (st->nseconds == st->cap_seconds) {
                        st->cap_seconds = st->cap_seconds ? 2 * st->cap_seconds : 64;
                        st->seconds = xrealloc(st->seconds, st->cap_seconds * sizeof(*st->seconds));
                }
                memmove(st->seconds + i + 1, st->seconds + i, (st->nseconds - i) * sizeof(*st->seconds));
                st->seconds[i].second = sec;
                st->seconds[i].count = 1;
                st->nseconds++;
        }
        if (st->seconds[i].count > st->max_per_second)
                st->max_per_second = st->seconds[i].count;

        /* sliding 1 s window on the monotonic clock: catches bursts across a second boundary */
        now = clock_mono_ms();
        while (st->win_start < st->win_end && st->win[st->win_start] + 1000 <= now)
                st->win_start++;
        if (st->win_end == st->win_cap) {
                if (st->win_start > 0) {
                        memmove(st->win, st->win + st->win_start,
                                (st->win_end - st->win_start) * sizeof(*st->win));
                        st->win_end -= st->win_start;
                        st->win_start = 0;
                } else {
                        st->win_cap = st->win_cap ? 2 * st->win_cap : 64;
                        st->win = xrealloc(st->win, st->win_cap * sizeof(*st->win));
                }
        }
        st->win[st->win_end++] = now;
        if (st->win_end - st->win_start > st->max_per_window)
                st->max_per_window = (unsigned)(st->win_end - st->win_start);

        if (ua == NULL) {
                st->no_user_agent++;
        } else {
                char *safe = printable_dup(ua);
                size_t k;
                json_t *v;
                bool seen = false;

                json_array_foreach(st->user_agents, k, v) {
                        if (strcmp(json_string_value(v), safe) == 0) {
                                seen = true;
                                break;
                        }
                }
                if (!seen && json_array_size(st->user_agents) < FAKE_UA_MAX)
                        json_array_append_new(st->user_agents, jcheck(json_string(safe)));
                free(safe);
        }
}

/* Called once per API request when it is answered (status) or dropped (status 0). */
static void
stats_completion(struct stats *st, const struct call *c, int status)
{
        struct recent *r;
        char key[16];

        if (c->gen != st->gen)
                return;
        if (status == 0) {
                st->dropped++;
        } else {
                snprintf(key, sizeof(key), "%d", status);
                counter_inc(st->by_status, key);
        }
        r = &st->recent[st->recent_next];
        free(r->uri);
        free(r->body);
        r->uri = xstrdup(c->safe_uri);
        r->body = strdup_or_null(c->safe_body);
        r->t_ms = c->t_ms;
        r->method = c->method;
        r->status = status;
        st->recent_next = (st->recent_next + 1) % FAKE_RECENT_MAX;
        if (st->recent_len < FAKE_RECENT_MAX)
                st->recent_len++;
}

static json_t *
stats_to_json(const struct fake *f)
{
        const struct stats *st = &f->st;
        json_t *secs = jcheck(json_array());
        json_t *recent = jcheck(json_array());
        size_t first = (st->recent_next + FAKE_RECENT_MAX - st->recent_len) % FAKE_RECENT_MAX;
        size_t npending = 0;
        const struct call *c;

        for (size_t i = 0; i < st->nseconds; i++)
                json_array_append_new(secs, jcheck(json_pack("{s:I,s:i}",
                        "second", (json_int_t)st->seconds[i].second,
                        "count", (int)st->seconds[i].count)));
        for (size_t i = 0; i < st->recent_len; i++) {
                const struct recent *r = &st->recent[(first + i) % FAKE_RECENT_MAX];
                json_t *item = jcheck(json_pack("{s:I,s:s,s:s,s:i}",
                        "t_ms", (json_int_t)r->t_ms, "method", r->method,
                        "uri", r->uri, "status", r->status));
                if (r->body)
                        json_object_set_new(item, "body", jcheck(json_string(r->body)));
                json_array_append_new(recent, item);
        }
        TAILQ_FOREACH(c, &f->pending, link)
                npending++;
        return jcheck(json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:O,s:O,s:o,s:i,s:i,s:O,s:I,s:I,s:o}",
                "since_ms", (json_int_t)st->since_ms,
                "requests", (json_int_t)st->requests,
                "auth_failures", (json_int_t)st->auth_failures,
                "faults_applied", (json_int_t)st->faults_applied,
                "dropped", (json_int_t)st->dropped,
                "in_flight", (json_int_t)npending,
                "by_path", st->by_path,
                "by_status", st->by_status,
                "per_second", secs,
                "max_per_second", (int)st->max_per_second,
                "max_per_1s_window", (int)st->max_per_window,
                "user_agents", st->user_agents,
                "no_user_agent", (json_int_t)st->no_user_agent,
                "recent_max", (json_int_t)FAKE_RECENT_MAX,
                "recent", recent));
}

/* ---- replies -------------------------------------------------------------------------- */

static void
call_log(const struct call *c, int status)
{
        uint64_t ms = clock_real_ms() - c->t_ms;

        fprintf(stderr, "fake_easypost method=%s uri=\"%s\" status=%d%s%s ms=%" PRIu64 "\n",
                c->method, c->safe_uri, status, c->faulted ? " fault=1" : "",
                status == 0 ? " dropped=1" : "", ms);
}

/* Sends the single reply for c->req; body is sent as given (NULL: empty). */
static void
call_reply(struct call *c, int status, const char *body, int retry_after)
{
        struct fake *f = c->f;
        struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
        struct evbuffer *out = evbuffer_new();
        char buf[64];

        if (out == NULL)
                abort();
        evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
        if (c->api) {
                /* same shape as EasyPost's header, so clients can log it */
                snprintf(buf, sizeof(buf), "fake%028lx", ++f->seq);
                evhttp_add_header(h, "x-ep-request-uuid", buf);
        }
        if (retry_after >= 0) {
                snprintf(buf, sizeof(buf), "%d", retry_after);
                evhttp_add_header(h, "Retry-After", buf);
        }
        if (status == 401)
                evhttp_add_header(h, "WWW-Authenticate", "Basic realm=\"EasyPost\"");
        if (body)
                evbuffer_add(out, body, strlen(body));
        evhttp_send_reply(c->req, status, reason_phrase(status), out);
        evbuffer_free(out);
        c->req = NULL;
        call_log(c, status);
        if (c->api)
                stats_completion(&f->st, c, status);
}

/* Takes ownership of j. */
static void
call_reply_json(struct call *c, int status, json_t *j)
{
        char *text = json_dumps(j, JSON_COMPACT);

        if (text == NULL)
                abort();
        call_reply(c, status, text, -1);
        free(text);
        json_decref(j);
}

static void
call_reply_error(struct call *c, int status, const char *code, const char *message)
{
        call_reply_json(c, status, jcheck(json_pack("{s:{s:s,s:s,s:[]}}", "error",
                "code", code, "message", message, "errors")));
}

/*
 * Closes the connection without a byte of answer. Never called from inside the
 * evhttp request callback (libevent still uses the connection after it returns):
 * only from the call's timer.
 */
static void
call_drop(struct call *c)
{
        struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);

        if (evcon)
                evhttp_connection_free(evcon);  /* frees the request too */
        else
                evhttp_request_free(c->req);    /* client already gone: request is ours */
        c->req = NULL;
        call_log(c, 0);
        if (c->api)
                stats_completion(&c->f->st, c, 0);
}

/* ---- store ---------------------------------------------------------------------------- */

static const char *
object_id(const json_t *obj)
{
        const char *id = json_string_value(json_object_get(obj, "id"));

        return id && id[0] ? id : NULL;
}

/* Checks an object can be stored; fills msg and returns false otherwise. */
static bool
store_check(const json_t *obj, char *msg, size_t msglen)
{
        const char *id, *created;
        int64_t ms;

        if (!json_is_object(obj)) {
                snprintf(msg, msglen, "each object must be a JSON object");
                return false;
        }
        id = object_id(obj);
        if (id == NULL) {
                snprintf(msg, msglen, "object has no string \"id\"");
                return false;
        }
        if (strchr(id, '/') || strlen(id) > 256) {
                snprintf(msg, msglen, "id is not usable in a URL path");
                return false;
        }
        created = json_string_value(json_object_get(obj, "created_at"));
        if (has_prefix(id, "evt_") && (created == NULL || !time_parse_ms(created, &ms))) {
                snprintf(msg, msglen, "event %.64s needs a parseable \"created_at\"", id);
                return false;
        }
        return true;
}

static void
events_remove(struct fake *f, const char *id)
{
        for (size_t i = 0; i < f->nevents; i++) {
                if (strcmp(f->events[i].id, id) == 0) {
                        json_decref(f->events[i].obj);
                        memmove(f->events + i, f->events + i + 1,
                                (f->nevents - i - 1) * sizeof(*f->events));
                        f->nevents--;
                        return;
                }
        }
}

static bool
event_newer(const struct event_entry *a, const struct event_entry *b)
{
        return a->created_ms > b->created_ms ||
               (a->created_ms == b->created_ms && strcmp(a->id, b->id) > 0);
}

/* Stores obj (store_check passed) under its id, replacing an older one with the same id. */
static void
store_put(struct fake *f, json_t *obj)
{
        const char *id = object_id(obj);
        struct event_entry e;
        size_t i;

        if (has_prefix(id, "evt_")) {
                events_remove(f, id);
                time_parse_ms(json_string_value(json_object_get(obj, "created_at")), &e.created_ms);
                e.id = id;
                e.obj = json_incref(obj);
                for (i = 0; i < f->nevents && !event_newer(&e, &f->events[i]); i++)
                        ;
                if (f->nevents == f->cap_events) {
                        f->cap_events = f->cap_events ? 2 * f->cap_events : 64;
                        f->events = xrealloc(f->events, f->cap_events * sizeof(*f->events));
                }
                memmove(f->events + i + 1, f->events + i, (f->nevents - i) * sizeof(*f->events));
                f->events[i] = e;
                f->nevents++;
        }
        json_object_set(f->objects, id, obj);
}

static size_t
store_clear(struct fake *f)
{
        size_t n = json_object_size(f->objects);

        for (size_t i = 0; i < f->nevents; i++)
                json_decref(f->events[i].obj);
        f->nevents = 0;
        json_object_clear(f->objects);
        return n;
}

/* The event as list and retrieve answers show it: without "result". */
static json_t *
event_public(const json_t *obj)
{
        json_t *copy = jcheck(json_copy((json_t *)obj));

        json_object_del(copy, "result");
        return copy;
}

/* ---- faults --------------------------------------------------------------------------- */

static void
fault_action_fini(struct fault_action *a)
{
        free(a->body);
        free(a->code);
        free(a->message);
        memset(a, 0, sizeof(*a));
}

static void
fault_action_copy(struct fault_action *dst, const struct fault_action *src)
{
        *dst = *src;
        dst->body = strdup_or_null(src->body);
        dst->code = strdup_or_null(src->code);
        dst->message = strdup_or_null(src->message);
}

static void
fault_free(struct fault *r)
{
        if (r == NULL)
                return;
        free(r->path_prefix);
        fault_action_fini(&r->act);
        free(r);
}

static bool
json_int_in(const json_t *v, long min, long max, long *out)
{
        if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
                return false;
        *out = (long)json_integer_value(v);
        return true;
}

/* Parses one rule; NULL with msg on a bad one. Unknown keys are errors: typos must show. */
static struct fault *
fault_parse(const json_t *o, char *msg, size_t msglen)
{
        struct fault *r = xcalloc(1, sizeof(*r));
        const char *key;
        json_t *v;
        long n;

        r->remaining = 1;
        r->act.retry_after = -1;
        if (!json_is_object(o)) {
                snprintf(msg, msglen, "a fault rule must be a JSON object");
                goto fail;
        }
        json_object_foreach((json_t *)o, key, v) {
                if (strcmp(key, "path_prefix") == 0) {
                        if (!json_is_string(v) || json_string_value(v)[0] != '/')
                                goto bad;
                        r->path_prefix = xstrdup(json_string_value(v));
                } else if (strcmp(key, "status") == 0) {
                        if (!json_int_in(v, 100, 599, &n))
                                goto bad;
                        r->act.status = (int)n;
                } else if (strcmp(key, "retry_after") == 0) {
                        if (!json_int_in(v, 0, 86400, &n))
                                goto bad;
                        r->act.retry_after = (int)n;
                } else if (strcmp(key, "count") == 0) {
                        if (!json_int_in(v, -1, 1000000, &n) || n == 0)
                                goto bad;
                        r->remaining = (int)n;
                } else if (strcmp(key, "delay_ms") == 0) {
                        if (!json_int_in(v, 0, FAKE_DELAY_MAX_MS, &n))
                                goto bad;
                        r->act.delay_ms = (unsigned)n;
                } else if (strcmp(key, "drop") == 0) {
                        if (!json_is_boolean(v))
                                goto bad;
                        r->act.drop = json_is_true(v);
                } else if (strcmp(key, "body") == 0) {
                        if (json_is_string(v))
                                r->act.body = xstrdup(json_string_value(v));
                        else if (json_is_object(v) || json_is_array(v))
                                r->act.body = json_dumps(v, JSON_COMPACT);
                        else
                                goto bad;
                } else if (strcmp(key, "code") == 0 || strcmp(key, "message") == 0) {
                        if (!json_is_string(v))
                                goto bad;
                        if (key[0] == 'c')
                                r->act.code = xstrdup(json_string_value(v));
                        else
                                r->act.message = xstrdup(json_string_value(v));
                } else {
                        snprintf(msg, msglen, "unknown field \"%.64s\"", key);
                        goto fail;
                }
        }
        if (r->act.drop && r->act.status) {
                snprintf(msg, msglen, "\"drop\" and \"status\" exclude each other");
                goto fail;
        }
        if (!r->act.drop && r->act.status == 0 && r->act.delay_ms == 0) {
                snprintf(msg, msglen, "rule does nothing: give status, drop or delay_ms");
                goto fail;
        }
        if (r->path_prefix == NULL)
                r->path_prefix = xstrdup("/v2/");
        return r;
bad:
        snprintf(msg, msglen, "bad value for \"%.64s\"", key);
fail:
        fault_free(r);
        return NULL;
}

/* First rule matching path, in the order they were queued; uses up one of its count. */
static bool
faults_take(struct fake *f, const char *path, struct fault_action *out)
{
        struct fault *r;

        TAILQ_FOREACH(r, &f->faults, link) {
                if (!has_prefix(path, r->path_prefix))
                        continue;
                fault_action_copy(out, &r->act);
                if (r->remaining > 0 && --r->remaining == 0) {
                        TAILQ_REMOVE(&f->faults, r, link);
                        fault_free(r);
                }
                return true;
        }
        return false;
}

static size_t
faults_clear(struct fake *f)
{
        struct fault *r;
        size_t n = 0;

        while ((r = TAILQ_FIRST(&f->faults)) != NULL) {
                TAILQ_REMOVE(&f->faults, r, link);
                fault_free(r);
                n++;
        }
        return n;
}

static json_t *
faults_to_json(const struct fake *f)
{
        json_t *arr = jcheck(json_array());
        const struct fault *r;

        TAILQ_FOREACH(r, &f->faults, link) {
                json_t *o = jcheck(json_pack("{s:s,s:i}", "path_prefix", r->path_prefix,
                                             "count", r->remaining));
                if (r->act.status)
                        json_object_set_new(o, "status", jcheck(json_integer(r->act.status)));
                if (r->act.retry_after >= 0)
                        json_object_set_new(o, "retry_after", jcheck(json_integer(r->act.retry_after)));
                if (r->act.delay_ms)
                        json_object_set_new(o, "delay_ms", jcheck(json_integer(r->act.delay_ms)));
                if (r->act.drop)
                        json_object_set_new(o, "drop", json_true());
                if (r->act.body)
                        json_object_set_new(o, "body", jcheck(json_string(r->act.body)));
                if (r->act.code)
                        json_object_set_new(o, "code", jcheck(json_string(r->act.code)));
                if (r->act.message)
                        json_object_set_new(o, "message", jcheck(json_string(r->act.message)));
                json_array_append_new(arr, o);
        }
        return jcheck(json_pack("{s:o}", "faults", arr));
}

/* ---- API ------------------------------------------------------------------------------ */

/*
 * Basic with "KEY:" (empty password, as EasyPost's clients send it) or Bearer KEY.
 * Constant-time compare of equal lengths: the fake should not teach clients bad habits,
 * but it must never print or store the value either.
 */
static bool
auth_ok(const struct fake *f, struct evhttp_request *req)
{
        const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        unsigned char dec[FAKE_AUTH_MAX];
        size_t n, pad = 0;
        int len;

        if (h == NULL || strlen(h) > FAKE_AUTH_MAX)
                return false;
        if (strncasecmp(h, "Bearer ", 7) == 0) {
                h += 7;
                while (*h == ' ')
                        h++;
                n = strlen(h);
                return n == f->api_key_len && CRYPTO_memcmp(h, f->api_key, n) == 0;
        }
        if (strncasecmp(h, "Basic ", 6) != 0)
                return false;
        h += 6;
        while (*h == ' ')
                h++;
        n = strlen(h);
        while (n > 0 && h[n - 1] == ' ')
                n--;
        if (n == 0 || n % 4 != 0)
                return false;
        if (h[n - 1] == '=')
                pad++;
        if (n > 1 && h[n - 2] == '=')
                pad++;
        len = EVP_DecodeBlock(dec, (const unsigned char *)h, (int)n);
        if (len < 0 || (size_t)len < pad)
                return false;
        len -= (int)pad;                /* EVP_DecodeBlock counts padding as zero bytes */
        return (size_t)len == f->api_key_len + 1 && dec[f->api_key_len] == ':' &&
               CRYPTO_memcmp(dec, f->api_key, f->api_key_len) == 0;
}

static void
api_object_get(struct call *c, const char *id, const char *prefix)
{
        json_t *obj;

        if (*id == '\0' || strchr(id, '/') || !has_prefix(id, prefix) ||
            (obj = json_object_get(c->f->objects, id)) == NULL) {
                call_reply_error(c, 404, "NOT_FOUND", "The requested resource could not be found.");
                return;
        }
        if (has_prefix(id, "evt_"))
                call_reply_json(c, 200, event_public(obj));
        else
                call_reply_json(c, 200, json_incref(obj));
}

static ssize_t
entries_find(const struct event_entry *e, size_t n, const char *id)
{
        for (size_t i = 0; i < n; i++)
                if (strcmp(e[i].id, id) == 0)
                        return (ssize_t)i;
        return -1;
}

/*
 * One page of a list kept newest first (created_at, then id), as EasyPost pages
 * /events and /trackers: {key:[...],"has_more":bool}. before_id pages towards older
 * items (the next page is before_id=<last id>); after_id gives the page_size items just
 * newer than the cursor, still newest first, with has_more telling whether even newer
 * ones exist. Cursors must name a listed item. start_datetime/end_datetime filter by
 * created_at (inclusive). render makes each item's public form (a new reference).
 */
static void
api_list_page(struct call *c, const struct event_entry *entries, size_t n, const char *key,
              json_t *(*render)(const json_t *))
{
        struct evkeyvalq q;
        const char *v, *before, *after;
        long page = FAKE_PAGE_DEFAULT;
        int64_t start = INT64_MIN, end = INT64_MAX;
        ssize_t lo = 0, hi, pos;        /* candidate range [lo, hi) of entries */
        size_t *match = NULL, nmatch = 0, first, take;
        json_t *items;

        TAILQ_INIT(&q);
        if (evhttp_parse_query_str(c->query ? c->query : "", &q) != 0) {
                call_reply_error(c, 400, "BAD_REQUEST", "Malformed query string.");
                goto out;
        }
        if ((v = evhttp_find_header(&q, "page_size")) && !int_parse(v, 1, FAKE_PAGE_MAX, &page)) {
                call_reply_error(c, 422, "PARAMETER.INVALID", "page_size must be between 1 and 100.");
                goto out;
        }
        if (((v = evhttp_find_header(&q, "start_datetime")) && !time_parse_ms(v, &start)) ||
            ((v = evhttp_find_header(&q, "end_datetime")) && !time_parse_ms(v, &end))) {
                call_reply_error(c, 422, "PARAMETER.INVALID", "Invalid datetime.");
                goto out;
        }
        before = evhttp_find_header(&q, "before_id");
        after = evhttp_find_header(&q, "after_id");
        if (before && after) {
                call_reply_error(c, 422, "PARAMETER.INVALID", "Use before_id or after_id, not both.");
                goto out;
        }
        hi = (ssize_t)n;
        if (before || after) {
                pos = entries_find(entries, n, before ? before : after);
                if (pos < 0) {
                        call_reply_error(c, 422, "PARAMETER.INVALID", "Unknown id in cursor.");
                        goto out;
                }
                if (before)
                        lo = pos + 1;
                else
                        hi = pos;
        }
        match = xcalloc(n ? n : 1, sizeof(*match));
        for (ssize_t i = lo; i < hi; i++)
                if (entries[i].created_ms >= start && entries[i].created_ms <= end)
                        match[nmatch++] = (size_t)i;
        take = nmatch < (size_t)page ? nmatch : (size_t)page;
        first = after ? nmatch - take : 0;      /* after_id: the ones closest to the cursor */
        items = jcheck(json_array());
        for (size_t i = first; i < first + take; i++)
                json_array_append_new(items, render(entries[match[i]].obj));
        call_reply_json(c, 200, jcheck(json_pack("{s:o,s:b}", key, items, "has_more", nmatch > take)));
out:
        free(match);
        evhttp_clear_headers(&q);
}

/* GET /v2/events: the stored events, newest first, without "result". */
static void
api_events_list(struct call *c)
{
        api_list_page(c, c->f->events, c->f->nevents, "events", event_public);
}

static json_t *
object_public(const json_t *obj)
{
        return json_incref((json_t *)obj);
}

static int
entry_cmp_newest(const void *a, const void *b)
{
        const struct event_entry *x = a, *y = b;

        return event_newer(x, y) ? -1 : event_newer(y, x) ? 1 : 0;
}

/*
 * GET /v2/trackers: the stored trk_ objects paged like /events (newest first by
 * created_at, then id; a tracker without a parseable created_at is not listed).
 * Above trackers_rate requests in the last second (POST /_control/trackers), 429
 * with Retry-After 1, as EasyPost limits list requests.
 */
static void
api_trackers_list(struct call *c)
{
        struct fake *f = c->f;
        struct event_entry *list;
        size_t n = 0;
        const char *key;
        json_t *v;
        uint64_t now = clock_mono_ms();

        if (f->trackers_rate > 0) {
                size_t kept = 0;
                for (size_t i = 0; i < f->ntrk_times; i++)
                        if (now - f->trk_times[i] < 1000)
                                f->trk_times[kept++] = f->trk_times[i];
                f->ntrk_times = kept;
                if (kept >= (size_t)f->trackers_rate) {
                        call_reply(c, 429, "{\"error\":{\"code\":\"RATE_LIMITED\",\"message\":"
                                           "\"Too many list requests.\",\"errors\":[]}}", 1);
                        return;
                }
                if (f->ntrk_times < sizeof(f->trk_times) / sizeof(f->trk_times[0]))
                        f->trk_times[f->ntrk_times++] = now;
        }
        list = xcalloc(json_object_size(f->objects) + 1, sizeof(*list));
        json_object_foreach(f->objects, key, v) {
                const char *created = json_string_value(json_object_get(v, "created_at"));
                if (!has_prefix(key, "trk_") || created == NULL ||
                    !time_parse_ms(created, &list[n].created_ms))
                        continue;
                list[n].id = key;
                list[n].obj = v;
                n++;
        }
        qsort(list, n, sizeof(*list), entry_cmp_newest);
        api_list_page(c, list, n, "trackers", object_public);
        free(list);
}

/*
 * GET /v2/events/{id}/payloads: EasyPost's log of delivery attempts. A seeded
 * event with a "result" has one failed attempt whose request_body is the whole
 * event as it would have been sent (compact JSON); one without has none.
 */
static void
api_event_payloads(struct call *c, const char *id)
{
        json_t *obj = json_object_get(c->f->objects, id), *list;

        if (obj == NULL || !has_prefix(id, "evt_")) {
                call_reply_error(c, 404, "NOT_FOUND", "The requested resource could not be found.");
                return;
        }
        if (sim_payloads(c, id))
                return;
        list = jcheck(json_array());
        if (json_object_get(obj, "result") != NULL) {
                char *body = json_dumps(obj, JSON_COMPACT);
                if (body == NULL)
                        abort();
                json_array_append_new(list, jcheck(json_pack("{s:s,s:s,s:s,s:i,s:s,s:i}",
                        "object", "Payload", "id", "payload_fake", "request_body", body,
                        "response_code", 500, "response_body", "{}", "total_time", 30)));
                free(body);
        }
        call_reply_json(c, 200, jcheck(json_pack("{s:o}", "payloads", list)));
}

/* GET /v2/webhooks: every stored hook_ object, as EasyPost lists them. */
static void
api_webhooks_list(struct call *c)
{
        json_t *list = jcheck(json_array()), *v;
        const char *key;

        json_object_foreach(c->f->objects, key, v)
                if (has_prefix(key, "hook_"))
                        json_array_append(list, v);
        call_reply_json(c, 200, jcheck(json_pack("{s:o}", "webhooks", list)));
}

/*
 * PATCH /v2/webhooks/{id}: EasyPost re-enables a disabled webhook on any update.
 * The body, when there is one, must be a JSON object; webhook_secret and
 * custom_headers are the fields EasyPost takes (others get 422). Answers the
 * webhook with disabled_at null.
 */
static void
api_webhook_update(struct call *c, const char *id)
{
        struct evbuffer *in = evhttp_request_get_input_buffer(c->req);
        size_t len = evbuffer_get_length(in);
        json_t *obj = json_object_get(c->f->objects, id), *body = NULL, *v, *copy;
        const char *key;

        if (obj == NULL || !has_prefix(id, "hook_") || strchr(id, '/')) {
                call_reply_error(c, 404, "NOT_FOUND", "The requested resource could not be found.");
                return;
        }
        if (len > 0) {
                body = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, NULL);
                if (!json_is_object(body)) {
                        json_decref(body);
                        call_reply_error(c, 400, "BAD_REQUEST", "The body must be a JSON object.");
                        return;
                }
                json_object_foreach(body, key, v) {
                        if (strcmp(key, "webhook_secret") != 0 && strcmp(key, "custom_headers") != 0) {
                                json_decref(body);
                                call_reply_error(c, 422, "PARAMETER.INVALID", "Unknown webhook parameter.");
                                return;
                        }
                }
        }
        copy = jcheck(json_deep_copy(obj));
        json_object_set_new(copy, "disabled_at", json_null());
        if (body && json_object_get(body, "custom_headers"))
                json_object_set(copy, "custom_headers", json_object_get(body, "custom_headers"));
        json_decref(body);
        store_put(c->f, copy);
        call_reply_json(c, 200, copy);
}

/* Normal API answer: auth, method, route. */
static void
api_serve(struct call *c)
{
        struct fake *f = c->f;
        const char *p = c->path;

        if (!auth_ok(f, c->req)) {
                if (c->gen == f->st.gen)
                        f->st.auth_failures++;
                call_reply_error(c, 401, "APIKEY.REQUIRED",
                                 "Unauthorized. Please check credentials and try again.");
                return;
        }
        if (c->cmd == EVHTTP_REQ_PATCH && has_prefix(p, "/v2/webhooks/")) {
                api_webhook_update(c, p + strlen("/v2/webhooks/"));
                return;
        }
        if (c->cmd != EVHTTP_REQ_GET) {
                call_reply_error(c, 405, "METHOD.NOT_ALLOWED",
                                 "The fake API answers GET only (and PATCH /v2/webhooks/{id}).");
                return;
        }
        if (strcmp(p, "/v2/webhooks") == 0 || strcmp(p, "/v2/webhooks/") == 0) {
                api_webhooks_list(c);
                return;
        }
        if (has_prefix(p, "/v2/shipments/"))
                api_object_get(c, p + strlen("/v2/shipments/"), "shp_");
        else if (strcmp(p, "/v2/trackers") == 0 || strcmp(p, "/v2/trackers/") == 0)
                api_trackers_list(c);
        else if (has_prefix(p, "/v2/trackers/"))
                api_object_get(c, p + strlen("/v2/trackers/"), "trk_");
        else if (strcmp(p, "/v2/events") == 0 || strcmp(p, "/v2/events/") == 0)
                api_events_list(c);
        else if (has_prefix(p, "/v2/events/") && strlen(p) > strlen("/v2/events//payloads") &&
                 strcmp(p + strlen(p) - strlen("/payloads"), "/payloads") == 0) {
                char id[128];
                size_t n = strlen(p) - strlen("/v2/events/") - strlen("/payloads");
                if (n >= sizeof(id))
                        n = sizeof(id) - 1;
                memcpy(id, p + strlen("/v2/events/"), n);
                id[n] = '\0';
                api_event_payloads(c, id);
        } else if (has_prefix(p, "/v2/events/"))
                api_object_get(c, p + strlen("/v2/events/"), "evt_");
        else
                call_reply_error(c, 404, "NOT_FOUND", "The requested resource could not be found.");
}

/* Runs a call to its end: the fault's answer if one applies, else the normal one. */
static void
call_run(struct call *c)
{
        if (c->faulted && c->act.drop) {
                call_drop(c);
        } else if (c->faulted && c->act.status) {
                char *def = NULL;

                if (c->act.body == NULL) {
                        json_t *e = jcheck(json_pack("{s:{s:s,s:s,s:[]}}", "error",
                                "code", c->act.code ? c->act.code : status_code_name(c->act.status),
                                "message", c->act.message ? c->act.message : "Injected fault.",
                                "errors"));
                        def = json_dumps(e, JSON_COMPACT);
                        json_decref(e);
                }
                call_reply(c, c->act.status, c->act.body ? c->act.body : def, c->act.retry_after);
                free(def);
        } else {
                api_serve(c);
        }
}

/* A printable copy of the request body for the stats; NULL when it has none. */
static char *
body_printable(struct evhttp_request *req)
{
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        char *raw, *safe;

        if (len == 0)
                return NULL;
        if (len > FAKE_STR_MAX)
                len = FAKE_STR_MAX;
        raw = xrealloc(NULL, len + 1);
        evbuffer_copyout(in, raw, len);
        raw[len] = '\0';
        for (size_t i = 0; i < len; i++)
                if (raw[i] == '\0')
                        raw[i] = '?';
        safe = printable_dup(raw);
        free(raw);
        return safe;
}

static struct call *
call_new(struct fake *f, struct evhttp_request *req, bool api)
{
        struct call *c = xcalloc(1, sizeof(*c));
        const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
        const char *path = u ? evhttp_uri_get_path(u) : NULL;
        const char *query = u ? evhttp_uri_get_query(u) : NULL;
        const char *uri = evhttp_request_get_uri(req);

        c->f = f;
        c->req = req;
        c->api = api;
        c->path = xstrdup(path ? path : "");
        c->query = strdup_or_null(query);
        c->safe_path = printable_dup(c->path);
        c->safe_uri = printable_dup(uri ? uri : "");
        c->cmd = evhttp_request_get_command(req);
        if (api)
                c->safe_body = body_printable(req);
        c->method = method_name(c->cmd);
        c->t_ms = clock_real_ms();
        c->gen = f->st.gen;
        c->act.retry_after = -1;
        return c;
}

static void
call_free(struct call *c)
{
        if (c == NULL)
                return;
        if (c->timer)
                event_free(c->timer);
        fault_action_fini(&c->act);
        free(c->path);
        free(c->query);
        free(c->safe_path);
        free(c->safe_uri);
        free(c->safe_body);
        free(c);
}

static void
call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
        struct call *c = arg;

        (void)fd;
        (void)what;
        TAILQ_REMOVE(&c->f->pending, c, link);
        call_run(c);
        call_free(c);
}

static void
api_begin(struct fake *f, struct evhttp_request *req)
{
        struct call *c = call_new(f, req, true);
        struct timeval tv;

        stats_arrival(&f->st, c,
                      evhttp_find_header(evhttp_request_get_input_headers(req), "User-Agent"));
        if (faults_take(f, c->path, &c->act)) {
                c->faulted = true;
                f->st.faults_applied++;
        }
        /* drops go through the timer too: the connection must outlive this callback */
        if (c->faulted && (c->act.drop || c->act.delay_ms > 0)) {
                c->timer = evtimer_new(f->base, call_timer_cb, c);
                if (c->timer == NULL)
                        abort();
                tv.tv_sec = c->act.delay_ms / 1000;
                tv.tv_usec = (c->act.delay_ms % 1000) * 1000;
                TAILQ_INSERT_TAIL(&f->pending, c, link);
                evtimer_add(c->timer, &tv);
                return;
        }
        call_run(c);
        call_free(c);
}

/* ---- control -------------------------------------------------------------------------- */

/* The request body as JSON (object or array); NULL after answering 400. */
static json_t *
control_body(struct call *c)
{
        struct evbuffer *in = evhttp_request_get_input_buffer(c->req);
        size_t len = evbuffer_get_length(in);
        json_error_t jerr;
        json_t *j;
        char msg[256];

        if (len == 0) {
                call_reply_error(c, 400, "BAD_REQUEST", "Empty body: send JSON.");
                return NULL;
        }
        j = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
        if (j == NULL) {
                snprintf(msg, sizeof(msg), "Invalid JSON at line %d: %s", jerr.line, jerr.text);
                call_reply_error(c, 400, "BAD_REQUEST", msg);
        }
        return j;
}

static void
control_objects_post(struct call *c)
{
        json_t *body = control_body(c), *v, *ids;
        size_t i;
        char msg[200];

        if (body == NULL)
                return;
        if (json_is_object(body)) {
                json_t *arr = jcheck(json_array());
                json_array_append_new(arr, body);
                body = arr;
        }
        json_array_foreach(body, i, v) {
                if (!store_check(v, msg, sizeof(msg))) {
                        call_reply_error(c, 422, "PARAMETER.INVALID", msg);
                        json_decref(body);
                        return;
                }
        }
        ids = jcheck(json_array());
        json_array_foreach(body, i, v) {
                store_put(c->f, v);
                json_array_append_new(ids, jcheck(json_string(object_id(v))));
        }
        call_reply_json(c, 201, jcheck(json_pack("{s:i,s:o}", "stored", (int)json_array_size(ids),
                                                 "ids", ids)));
        json_decref(body);
}

static void
control_objects_get(struct call *c)
{
        struct fake *f = c->f;
        json_t *ids = jcheck(json_array()), *evs = jcheck(json_array()), *v;
        const char *key;

        json_object_foreach(f->objects, key, v)
                json_array_append_new(ids, jcheck(json_string(key)));
        for (size_t i = 0; i < f->nevents; i++)
                json_array_append_new(evs, jcheck(json_string(f->events[i].id)));
        call_reply_json(c, 200, jcheck(json_pack("{s:o,s:o}", "ids", ids, "events", evs)));
}

static void
control_faults_post(struct call *c)
{
        struct fake *f = c->f;
        json_t *body = control_body(c), *v;
        struct fault_list staged;
        struct fault *r;
        size_t i, n = 0, total = 0;
        char msg[200];

        if (body == NULL)
                return;
        if (json_is_object(body)) {
                json_t *arr = jcheck(json_array());
                json_array_append_new(arr, body);
                body = arr;
        }
        /* all or nothing: a bad rule in a list queues none of them */
        TAILQ_INIT(&staged);
        json_array_foreach(body, i, v) {
                if ((r = fault_parse(v, msg, sizeof(msg))) == NULL) {
                        while ((r = TAILQ_FIRST(&staged)) != NULL) {
                                TAILQ_REMOVE(&staged, r, link);
                                fault_free(r);
                        }
                        call_reply_error(c, 422, "PARAMETER.INVALID", msg);
                        json_decref(body);
                        return;
                }
                TAILQ_INSERT_TAIL(&staged, r, link);
        }
        while ((r = TAILQ_FIRST(&staged)) != NULL) {
                TAILQ_REMOVE(&staged, r, link);
                TAILQ_INSERT_TAIL(&f->faults, r, link);
                n++;
        }
        TAILQ_FOREACH(r, &f->faults, link)
                total++;
        call_reply_json(c, 201, jcheck(json_pack("{s:i,s:i}", "queued", (int)n, "faults", (int)total)));
        json_decref(body);
}

/* POST /_control/trackers {"rate": N}: GET /v2/trackers above N a second gets 429; 0 lifts it. */
static void
control_trackers_post(struct call *c)
{
        json_t *body = control_body(c);
        long rate;

        if (body == NULL)
                return;
        if (!json_int_in(json_object_get(body, "rate"), 0, 100, &rate)) {
                call_reply_error(c, 422, "PARAMETER.INVALID", "rate must be an integer 0..100.");
        } else {
                c->f->trackers_rate = rate;
                c->f->ntrk_times = 0;
                call_reply_json(c, 200, jcheck(json_pack("{s:i}", "rate", (int)rate)));
        }
        json_decref(body);
}

/* ---- delivery simulator --------------------------------------------------------------- */

/*
 * EasyPost's side of an account, for end-to-end tests. The simulator owns N trackers and
 * each tick advances `step` of them (round robin, delivered ones skipped) one status
 * further: pre_transit -> in_transit -> out_for_delivery -> delivered. Every change adds
 * a tracking detail, bumps updated_at (whole seconds, strictly increasing per tracker),
 * replaces the tracker in the store and creates an Event (tracker.created/updated,
 * result = the tracker) in the store. Each event is then delivered:
 *
 *   created --webhook enabled--> QUEUED --a slot free--> IN FLIGHT --2xx--> acked
 *      |                           ^                        | non-2xx, no connection,
 *      | webhook disabled          +-------- WAIT <---------+ timeout (backoff doubling,
 *      v                            (timer; dropped when the      capped)
 *   never attempted: no payload      webhook gets disabled)
 *
 * Every attempt is recorded and served by GET /v2/events/{id}/payloads. max_failures
 * failed attempts in a row set disabled_at on the webhook (a hook_ object in the store,
 * which PATCH /v2/webhooks/{id} re-enables); the webhook's state is always read from the
 * store, so a re-enabled webhook gets the events created from then on. A connection
 * is freed after its request's callback has returned (libevent still uses it inside),
 * by a reaper event; the simulator frees the ones still in flight when it is stopped.
 */

#define SIM_TRACKERS_MAX        10000
#define SIM_STATES              4
#define SIM_RESP_MAX            512     /* response body kept per attempt */

static const char *const sim_status[SIM_STATES] = {
        "pre_transit", "in_transit", "out_for_delivery", "delivered",
};
static const char *const sim_detail[SIM_STATES] = {
        "status_update", "arrived_at_facility", "out_for_delivery", "arrived_at_destination",
};
static const char *const sim_message[SIM_STATES] = {
        "Shipping Label Created", "Arrived at USPS Regional Facility", "Out for Delivery",
        "Delivered, In/At Mailbox",
};

enum sim_dstate {
        SIM_QUEUED,     /* waiting for an in-flight slot */
        SIM_WAIT,       /* failed; its retry timer runs */
        SIM_FLIGHT,     /* request sent, no answer yet */
};

struct sim_delivery {
        TAILQ_ENTRY(sim_delivery) link; /* on the list of its state */
        struct sim *s;
        size_t ev;                      /* index into s->events */
        unsigned tries;                 /* attempts made */
        enum sim_dstate state;
        struct evhttp_connection *conn; /* SIM_FLIGHT */
        struct event *timer;            /* SIM_WAIT */
        uint64_t sent_ms;               /* monotonic, SIM_FLIGHT */
};
TAILQ_HEAD(sim_dlist, sim_delivery);

struct sim_tracker {
        json_t *obj;                    /* own: the tracker as EasyPost holds it; NULL before */
        int state;                      /* index into sim_status; -1: not created yet */
        int64_t updated_s;
        size_t last_event;              /* index into s->events of its latest change */
};

struct sim_event {
        char id[40];                    /* evt_ + 32 hex */
        size_t tracker;
        char *body;                     /* own: the compact JSON that is sent */
        json_t *payloads;               /* own: the attempts, oldest first */
        bool acked, while_disabled;
};

struct sim {
        struct fake *f;
        char *url, *host, *path, *hook_id, *carrier;
        unsigned char *secret;
        size_t secret_len;
        int port;
        size_t ntrackers, step, cursor;
        long interval_ms, backoff_ms, backoff_max_ms, timeout_ms;
        long max_failures, max_in_flight, max_attempts;
        struct sim_tracker *trk;
        struct sim_event *events;
        size_t nevents, cap_events;
        struct event *tick;             /* EV_PERSIST; NULL when interval_ms is 0 */
        struct event *reaper;           /* frees the connections in reap */
        struct evhttp_connection **reap;
        size_t nreap, cap_reap;
        bool paused, ticking, we_disabled;
        struct sim_dlist queued, waiting, flight;
        size_t nqueued, nwaiting, nflight;
        unsigned long ticks, created, delivered, ok, failed, dropped, fail_run;
        unsigned long disabled_count, created_while_disabled;
        unsigned long long seq;         /* tracking codes */
};

static void sim_pump(struct sim *s);

static void
sim_hex(char *out, size_t nbytes)
{
        unsigned char r[32];

        if (nbytes > sizeof(r) || RAND_bytes(r, (int)nbytes) != 1)
                abort();
        for (size_t i = 0; i < nbytes; i++)
                snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* RFC 3339 UTC; with_ms for event timestamps (object timestamps have whole seconds). */
static json_t *
sim_time(uint64_t ms, bool with_ms)
{
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        char buf[96];

        gmtime_r(&t, &tm);
        if (with_ms)
                snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         (unsigned)(ms % 1000));
        else
                snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        return jcheck(json_string(buf));
}

/* The webhook as the store holds it now: a missing one counts as disabled. */
static bool
sim_hook_enabled(struct sim *s)
{
        json_t *h = json_object_get(s->f->objects, s->hook_id);
        bool on = h != NULL && !json_is_string(json_object_get(h, "disabled_at"));

        if (on && s->we_disabled) {     /* re-enabled (PATCH): a new run of failures */
                s->we_disabled = false;
                s->fail_run = 0;
        }
        return on;
}

static void
sim_delivery_free(struct sim_delivery *d)
{
        if (d->timer)
                event_free(d->timer);
        free(d);
}

static void
sim_dlist_remove(struct sim *s, struct sim_delivery *d)
{
        switch (d->state) {
        case SIM_QUEUED: TAILQ_REMOVE(&s->queued, d, link); s->nqueued--; break;
        case SIM_WAIT: TAILQ_REMOVE(&s->waiting, d, link); s->nwaiting--; break;
        case SIM_FLIGHT: TAILQ_REMOVE(&s->flight, d, link); s->nflight--; break;
        }
}

static void
sim_enqueue(struct sim *s, struct sim_delivery *d)
{
        d->state = SIM_QUEUED;
        TAILQ_INSERT_TAIL(&s->queued, d, link);
        s->nqueued++;
}

/* Pending retries and queued deliveries go; in-flight ones end, but are not retried. */
static void
sim_drop_pending(struct sim *s)
{
        struct sim_delivery *d;

        while ((d = TAILQ_FIRST(&s->queued)) != NULL || (d = TAILQ_FIRST(&s->waiting)) != NULL) {
                sim_dlist_remove(s, d);
                s->dropped++;
                sim_delivery_free(d);
        }
}

/* What EasyPost does after too many failures: disabled_at set, retries dropped. */
static void
sim_disable(struct sim *s)
{
        json_t *h = json_object_get(s->f->objects, s->hook_id), *copy;

        if (h != NULL) {
                copy = jcheck(json_deep_copy(h));
                json_object_set_new(copy, "disabled_at", sim_time(clock_real_ms(), false));
                store_put(s->f, copy);
                json_decref(copy);
        }
        s->we_disabled = true;
        s->disabled_count++;
        sim_drop_pending(s);
        fprintf(stderr, "fake_easypost sim: webhook %s disabled after %lu failed deliveries in a row\n",
                s->hook_id, s->fail_run);
}

static void
sim_retry_cb(evutil_socket_t fd, short what, void *arg)
{
        struct sim_delivery *d = arg;
        struct sim *s = d->s;

        (void)fd;
        (void)what;
        sim_dlist_remove(s, d);
        event_free(d->timer);
        d->timer = NULL;
        sim_enqueue(s, d);
        sim_pump(s);
}

/* Records one attempt (code 0: no HTTP answer) and decides what comes next for d. */
static void
sim_attempt_done(struct sim *s, struct sim_delivery *d, int code, const char *resp, uint64_t ms)
{
        struct sim_event *ev = &s->events[d->ev];
        char pid[48] = "payload_";
        long delay;
        struct timeval tv;

        sim_hex(pid + 8, 16);
        fprintf(stderr, "fake_easypost sim: event=%s attempt=%u status=%d ms=%" PRIu64 "\n", ev->id,
                d->tries, code, ms);
        json_array_append_new(ev->payloads, jcheck(json_pack("{s:s,s:s,s:o,s:o,s:s,s:s,s:i,s:s,s:I}",
                "id", pid, "object", "Payload",
                "created_at", sim_time(clock_real_ms(), false),
                "updated_at", sim_time(clock_real_ms(), false),
                "request_url", s->url, "request_body", ev->body, "response_code", code,
                "response_body", resp, "total_time", (json_int_t)ms)));
        if (code >= 200 && code < 300) {
                ev->acked = true;
                s->ok++;
                s->fail_run = 0;
                sim_delivery_free(d);
                return;
        }
        s->failed++;
        s->fail_run++;
        if (sim_hook_enabled(s) && s->fail_run >= (unsigned long)s->max_failures)
                sim_disable(s);
        if (!sim_hook_enabled(s) || d->tries >= (unsigned)s->max_attempts) {
                s->dropped++;
                sim_delivery_free(d);
                return;
        }
        delay = s->backoff_ms;
        for (unsigned i = 1; i < d->tries && delay < s->backoff_max_ms; i++)
                delay *= 2;
        if (delay > s->backoff_max_ms)
                delay = s->backoff_max_ms;
        d->timer = evtimer_new(s->f->base, sim_retry_cb, d);
        if (d->timer == NULL)
                abort();
        d->state = SIM_WAIT;
        TAILQ_INSERT_TAIL(&s->waiting, d, link);
        s->nwaiting++;
        tv.tv_sec = delay / 1000;
        tv.tv_usec = (delay % 1000) * 1000;
        evtimer_add(d->timer, &tv);
}

/* The answer to one delivery (req NULL: connection refused, reset or timed out). */
static void
sim_delivery_cb(struct evhttp_request *req, void *arg)
{
        struct sim_delivery *d = arg;
        struct sim *s = d->s;
        int code = req ? evhttp_request_get_response_code(req) : 0;
        char resp[SIM_RESP_MAX + 1] = "";

        if (req && code > 0) {
                struct evbuffer *in = evhttp_request_get_input_buffer(req);
                ev_ssize_t n = evbuffer_copyout(in, resp, SIM_RESP_MAX);
                resp[n > 0 ? n : 0] = '\0';
                for (ev_ssize_t i = 0; i < n; i++)
                        if ((unsigned char)resp[i] < 0x20 || (unsigned char)resp[i] >= 0x7f)
                                resp[i] = '?';
        }
        sim_dlist_remove(s, d);
        if (s->nreap == s->cap_reap) {
                s->cap_reap = s->cap_reap ? 2 * s->cap_reap : 16;
                s->reap = xrealloc(s->reap, s->cap_reap * sizeof(*s->reap));
        }
        s->reap[s->nreap++] = d->conn;  /* libevent still uses it until we return */
        d->conn = NULL;
        event_active(s->reaper, EV_TIMEOUT, 1);
        sim_attempt_done(s, d, code, resp, clock_mono_ms() - d->sent_ms);
        sim_pump(s);
}

/* Sends d: the body signed as EasyPost signs it, from a new connection. */
static void
sim_send(struct sim *s, struct sim_delivery *d)
{
        struct sim_event *ev = &s->events[d->ev];
        size_t len = strlen(ev->body);
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned maclen = 0;
        char sig[16 + 2 * EVP_MAX_MD_SIZE + 1] = "hmac-sha256-hex=", host[300];
        struct evhttp_request *req;
        struct evkeyvalq *h;
        struct timeval tv = { s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000 };

        if (HMAC(EVP_sha256(), s->secret, (int)s->secret_len, (const unsigned char *)ev->body, len,
                 mac, &maclen) == NULL)
                abort();
        for (unsigned i = 0; i < maclen; i++)
                snprintf(sig + 16 + 2 * i, 3, "%02x", mac[i]);
        snprintf(host, sizeof(host), "%s:%d", s->host, s->port);
        d->tries++;
        d->sent_ms = clock_mono_ms();
        d->conn = evhttp_connection_base_new(s->f->base, NULL, s->host, (unsigned short)s->port);
        req = d->conn ? evhttp_request_new(sim_delivery_cb, d) : NULL;
        if (req == NULL)
                abort();
        evhttp_connection_set_timeout_tv(d->conn, &tv);
        h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Host", host);
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "User-Agent", "EasyPost WebHook Agent 1.0 (fake_easypost)");
        evhttp_add_header(h, "X-Hmac-Signature", sig);
        evbuffer_add(evhttp_request_get_output_buffer(req), ev->body, len);
        d->state = SIM_FLIGHT;
        TAILQ_INSERT_TAIL(&s->flight, d, link);
        s->nflight++;
        if (evhttp_make_request(d->conn, req, EVHTTP_REQ_POST, s->path) != 0) {
                /* no socket: libevent kept neither the request nor a callback for it */
                sim_dlist_remove(s, d);
                evhttp_request_free(req);
                evhttp_connection_free(d->conn);
                d->conn = NULL;
                sim_attempt_done(s, d, 0, "", 0);
        }
}

/* Starts queued deliveries while slots are free; drops them if the webhook is disabled. */
static void
sim_pump(struct sim *s)
{
        struct sim_delivery *d;

        if (!sim_hook_enabled(s)) {
                sim_drop_pending(s);
                return;
        }
        while (s->nflight < (size_t)s->max_in_flight && (d = TAILQ_FIRST(&s->queued)) != NULL) {
                sim_dlist_remove(s, d);
                sim_send(s, d);
        }
}

/* A change of tracker i: its Event is stored and, unless the webhook is disabled, queued. */
static void
sim_event_new(struct sim *s, size_t i, const char *prev_status)
{
        struct sim_tracker *t = &s->trk[i];
        struct sim_event *ev;
        uint64_t now = clock_real_ms();
        json_t *obj;

        if (s->nevents == s->cap_events) {
                s->cap_events = s->cap_events ? 2 * s->cap_events : 256;
                s->events = xrealloc(s->events, s->cap_events * sizeof(*s->events));
        }
        ev = &s->events[s->nevents];
        memset(ev, 0, sizeof(*ev));
        memcpy(ev->id, "evt_", 4);
        sim_hex(ev->id + 4, 16);
        ev->tracker = i;
        obj = jcheck(json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:[],s:[],s:s,s:o,s:o}",
                "id", ev->id, "object", "Event", "mode", "test",
                "description", prev_status ? "tracker.updated" : "tracker.created",
                "previous_attributes", prev_status ? jcheck(json_pack("{s:s}", "status", prev_status))
                                                   : jcheck(json_object()),
                "result", jcheck(json_deep_copy(t->obj)), "status", "pending", "pending_urls", "completed_urls",
                "user_id", "user_fakesim", "created_at", sim_time(now, true),
                "updated_at", sim_time(now, true)));
        ev->body = json_dumps(obj, JSON_COMPACT);
        if (ev->body == NULL)
                abort();
        store_put(s->f, obj);
        json_decref(obj);
        ev->payloads = jcheck(json_array());
        t->last_event = s->nevents++;
        if (sim_hook_enabled(s)) {
                struct sim_delivery *d = xcalloc(1, sizeof(*d));
                d->s = s;
                d->ev = t->last_event;
                sim_enqueue(s, d);
        } else {
                ev->while_disabled = true;
                s->created_while_disabled++;
        }
}

/* Tracker i one status further: a new detail, updated_at bumped, the store updated. */
static void
sim_advance(struct sim *s, size_t i)
{
        struct sim_tracker *t = &s->trk[i];
        uint64_t now = clock_real_ms();
        int64_t sec = (int64_t)(now / 1000);
        const char *prev = t->state >= 0 ? sim_status[t->state] : NULL;
        json_t *copy;
        int st;

        if (t->state < 0) {
                char id[40] = "trk_", code[40], url[100];
                sim_hex(id + 4, 16);
                snprintf(code, sizeof(code), "EZ%014llu", ++s->seq);
                snprintf(url, sizeof(url), "https://track.easypost.com/fake/%s", id);
                t->obj = jcheck(json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:n,s:n,s:n,s:n,s:s,s:[],s:[],s:n,s:s}",
                        "id", id, "object", "Tracker", "mode", "test", "tracking_code", code,
                        "carrier", s->carrier, "created_at", sim_time(now, false),
                        "signed_by", "weight", "est_delivery_date", "shipment_id",
                        "status", "unknown", "tracking_details", "fees", "carrier_detail",
                        "public_url", url));
                t->updated_s = sec - 1;
                s->created++;
        }
        st = ++t->state;
        if (sec <= t->updated_s)        /* strictly newer than the last change */
                sec = t->updated_s + 1;
        t->updated_s = sec;
        json_array_append_new(json_object_get(t->obj, "tracking_details"), jcheck(json_pack(
                "{s:s,s:s,s:s,s:s,s:s,s:o,s:s,s:s,s:{s:s,s:n,s:n,s:n,s:n}}",
                "object", "TrackingDetail", "message", sim_message[st], "description", "",
                "status", sim_status[st], "status_detail", sim_detail[st],
                "datetime", sim_time((uint64_t)sec * 1000, false), "source", s->carrier,
                "carrier_code", "", "tracking_location", "object", "TrackingLocation",
                "city", "state", "country", "zip")));
        json_object_set_new(t->obj, "status", jcheck(json_string(sim_status[st])));
        json_object_set_new(t->obj, "status_detail", jcheck(json_string(sim_detail[st])));
        json_object_set_new(t->obj, "updated_at", sim_time((uint64_t)sec * 1000, false));
        if (st == SIM_STATES - 1) {
                json_object_set_new(t->obj, "signed_by", jcheck(json_string("J DOE")));
                s->delivered++;
        }
        copy = jcheck(json_deep_copy(t->obj));
        store_put(s->f, copy);
        json_decref(copy);
        sim_event_new(s, i, prev);
}

/* One tick: the next `step` trackers not yet delivered move on. */
static void
sim_tick(struct sim *s)
{
        size_t moved = 0;

        if (s->delivered == s->ntrackers)
                return;
        s->ticks++;
        for (size_t seen = 0; seen < s->ntrackers && moved < s->step; seen++) {
                size_t i = s->cursor;
                s->cursor = (s->cursor + 1) % s->ntrackers;
                if (s->trk[i].state < SIM_STATES - 1) {
                        sim_advance(s, i);
                        moved++;
                }
        }
        sim_pump(s);
}

static void
sim_tick_cb(evutil_socket_t fd, short what, void *arg)
{
        struct sim *s = arg;

        (void)fd;
        (void)what;
        sim_tick(s);
        if (s->delivered == s->ntrackers && s->ticking) {
                event_del(s->tick);
                s->ticking = false;
        }
}

static void
sim_tick_arm(struct sim *s, bool on)
{
        struct timeval tv = { s->interval_ms / 1000, (s->interval_ms % 1000) * 1000 };

        if (s->tick == NULL || on == s->ticking)
                return;
        if (on && s->delivered < s->ntrackers)
                evtimer_add(s->tick, &tv);
        else if (!on)
                event_del(s->tick);
        s->ticking = on && s->delivered < s->ntrackers;
}

static void
sim_reap_cb(evutil_socket_t fd, short what, void *arg)
{
        struct sim *s = arg;

        (void)fd;
        (void)what;
        for (size_t i = 0; i < s->nreap; i++)
                evhttp_connection_free(s->reap[i]);
        s->nreap = 0;
}

static void
sim_free(struct sim *s)
{
        struct sim_delivery *d;

        if (s == NULL)
                return;
        if (s->reaper) {
                sim_reap_cb(-1, 0, s);
                event_free(s->reaper);
        }
        free(s->reap);
        while ((d = TAILQ_FIRST(&s->flight)) != NULL) {
                sim_dlist_remove(s, d);
                evhttp_connection_free(d->conn);        /* frees its request, no callback */
                sim_delivery_free(d);
        }
        sim_drop_pending(s);
        if (s->tick)
                event_free(s->tick);
        for (size_t i = 0; i < s->ntrackers; i++)
                json_decref(s->trk[i].obj);
        for (size_t i = 0; i < s->nevents; i++) {
                free(s->events[i].body);
                json_decref(s->events[i].payloads);
        }
        free(s->trk);
        free(s->events);
        free(s->url);
        free(s->host);
        free(s->path);
        free(s->hook_id);
        free(s->carrier);
        if (s->secret)
                OPENSSL_cleanse(s->secret, s->secret_len);
        free(s->secret);
        free(s);
}

static ssize_t
sim_event_find(const struct sim *s, const char *id)
{
        for (size_t i = 0; i < s->nevents; i++)
                if (strcmp(s->events[i].id, id) == 0)
                        return (ssize_t)i;
        return -1;
}

/* GET /v2/events/{id}/payloads for a simulated event: its attempts, none if never sent. */
static bool
sim_payloads(struct call *c, const char *id)
{
        struct sim *s = c->f->sim;
        ssize_t k = s ? sim_event_find(s, id) : -1;

        if (k < 0)
                return false;
        call_reply_json(c, 200, jcheck(json_pack("{s:O}", "payloads", s->events[k].payloads)));
        return true;
}

/* One integer setting of POST /_control/sim: absent keeps def; false on a bad value. */
static bool
sim_opt(json_t *body, const char *key, long min, long max, long def, long *out)
{
        json_t *v = json_object_get(body, key);

        *out = def;
        return v == NULL || json_int_in(v, min, max, out);
}

/* POST /_control/sim: a new simulation (replacing a running one); NULL with msg if bad. */
static struct sim *
sim_new(struct fake *f, json_t *body, char *msg, size_t msglen)
{
        static const char *const keys[] = {
                "url", "secret", "webhook_id", "webhook_url", "carrier", "trackers", "step",
                "interval_ms", "max_failures", "backoff_ms", "backoff_max_ms", "timeout_ms",
                "max_in_flight", "max_attempts", "paused", NULL,
        };
        struct sim *s = xcalloc(1, sizeof(*s));
        const char *url, *secret, *str, *key;
        struct evhttp_uri *u = NULL;
        long n, step;
        json_t *v, *hook;
        char hook_id[40] = "hook_";

        TAILQ_INIT(&s->queued);
        TAILQ_INIT(&s->waiting);
        TAILQ_INIT(&s->flight);
        s->f = f;
        if (!json_is_object(body)) {
                snprintf(msg, msglen, "the body must be a JSON object");
                goto fail;
        }
        json_object_foreach(body, key, v) {
                size_t k;
                for (k = 0; keys[k] && strcmp(keys[k], key) != 0; k++)
                        ;
                if (keys[k] == NULL) {
                        snprintf(msg, msglen, "unknown simulation setting \"%.64s\"", key);
                        goto fail;
                }
        }
        url = json_string_value(json_object_get(body, "url"));
        secret = json_string_value(json_object_get(body, "secret"));
        u = url ? evhttp_uri_parse(url) : NULL;
        if (u == NULL || evhttp_uri_get_scheme(u) == NULL ||
            strcmp(evhttp_uri_get_scheme(u), "http") != 0 || evhttp_uri_get_host(u) == NULL ||
            strlen(evhttp_uri_get_host(u)) > 255) {
                snprintf(msg, msglen, "\"url\" must be an http:// URL");
                goto fail;
        }
        if (secret == NULL || secret[0] == '\0') {
                snprintf(msg, msglen, "\"secret\" must be a non-empty string");
                goto fail;
        }
        if (!sim_opt(body, "trackers", 1, SIM_TRACKERS_MAX, 40, &n) ||
            !sim_opt(body, "step", 1, SIM_TRACKERS_MAX, 40, &step) ||
            !sim_opt(body, "interval_ms", 0, 600000, 50, &s->interval_ms) ||
            !sim_opt(body, "max_failures", 1, 1000000, 25, &s->max_failures) ||
            !sim_opt(body, "backoff_ms", 1, 600000, 50, &s->backoff_ms) ||
            !sim_opt(body, "backoff_max_ms", 1, 3600000, 2000, &s->backoff_max_ms) ||
            !sim_opt(body, "timeout_ms", 100, 600000, 10000, &s->timeout_ms) ||
            !sim_opt(body, "max_in_flight", 1, 256, 8, &s->max_in_flight) ||
            !sim_opt(body, "max_attempts", 1, 1000000, 1000, &s->max_attempts) ||
            s->backoff_max_ms < s->backoff_ms) {
                snprintf(msg, msglen, "a numeric setting is out of range");
                goto fail;
        }
        if ((v = json_object_get(body, "paused")) != NULL && !json_is_boolean(v)) {
                snprintf(msg, msglen, "\"paused\" must be true or false");
                goto fail;
        }
        s->paused = json_is_true(v);
        str = json_string_value(json_object_get(body, "webhook_id"));
        if (json_object_get(body, "webhook_id") && (str == NULL || !has_prefix(str, "hook_") ||
                                                    strchr(str, '/') || strlen(str) > 64)) {
                snprintf(msg, msglen, "\"webhook_id\" must be a hook_ id");
                goto fail;
        }
        if (str == NULL) {
                sim_hex(hook_id + 5, 16);
                str = hook_id;
        }
        s->hook_id = xstrdup(str);
        if (json_object_get(body, "webhook_url") &&
            !json_is_string(json_object_get(body, "webhook_url"))) {
                snprintf(msg, msglen, "\"webhook_url\" must be a string");
                goto fail;
        }
        str = json_string_value(json_object_get(body, "carrier"));
        s->carrier = xstrdup(str ? str : "USPS");
        s->url = xstrdup(url);
        s->host = xstrdup(evhttp_uri_get_host(u));
        s->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
        str = evhttp_uri_get_path(u);
        if (str == NULL || str[0] == '\0')
                str = "/";
        if (evhttp_uri_get_query(u)) {
                size_t m = strlen(str) + strlen(evhttp_uri_get_query(u)) + 2;
                s->path = xrealloc(NULL, m);
                snprintf(s->path, m, "%s?%s", str, evhttp_uri_get_query(u));
        } else {
                s->path = xstrdup(str);
        }
        s->secret_len = strlen(secret);
        s->secret = (unsigned char *)xstrdup(secret);
        s->ntrackers = (size_t)n;
        s->step = (size_t)step;
        s->trk = xcalloc(s->ntrackers, sizeof(*s->trk));
        for (size_t i = 0; i < s->ntrackers; i++)
                s->trk[i].state = -1;
        if (s->interval_ms > 0 && (s->tick = event_new(f->base, -1, EV_PERSIST, sim_tick_cb, s)) == NULL)
                abort();
        if ((s->reaper = event_new(f->base, -1, 0, sim_reap_cb, s)) == NULL)
                abort();
        /* the webhook EasyPost delivers through, enabled */
        str = json_string_value(json_object_get(body, "webhook_url"));
        hook = jcheck(json_pack("{s:s,s:s,s:s,s:s,s:o,s:n,s:[]}", "id", s->hook_id,
                "object", "Webhook", "mode", "test", "url", str ? str : url,
                "created_at", sim_time(clock_real_ms(), false), "disabled_at", "custom_headers"));
        store_put(f, hook);
        json_decref(hook);
        evhttp_uri_free(u);
        return s;
fail:
        if (u)
                evhttp_uri_free(u);
        sim_free(s);
        return NULL;
}

/* GET /_control/sim: the counters, then each tracker and each event. */
static json_t *
sim_state(struct sim *s)
{
        json_t *trk = jcheck(json_array()), *evs = jcheck(json_array());
        unsigned long acked = 0;

        for (size_t i = 0; i < s->ntrackers; i++) {
                const struct sim_tracker *t = &s->trk[i];
                if (t->obj == NULL)
                        continue;
                json_array_append_new(trk, jcheck(json_pack("{s:O,s:s,s:i,s:s,s:b}",
                        "id", json_object_get(t->obj, "id"), "status", sim_status[t->state],
                        "details", (int)json_array_size(json_object_get(t->obj, "tracking_details")),
                        "last_event", s->events[t->last_event].id,
                        "last_change_while_disabled", s->events[t->last_event].while_disabled)));
        }
        for (size_t i = 0; i < s->nevents; i++) {
                const struct sim_event *ev = &s->events[i];
                acked += ev->acked;
                json_array_append_new(evs, jcheck(json_pack("{s:s,s:O,s:i,s:b,s:b}",
                        "id", ev->id, "tracker", json_object_get(s->trk[ev->tracker].obj, "id"),
                        "attempts", (int)json_array_size(ev->payloads), "acked", ev->acked,
                        "while_disabled", ev->while_disabled)));
        }
        return jcheck(json_pack("{s:s,s:s,s:b,s:b,s:I,s:I,s:I,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
                                "s:I,s:b,s:I,s:I,s:o,s:o}",
                "webhook_id", s->hook_id, "url", s->url,
                "paused", s->paused, "ticking", s->ticking,
                "ticks", (json_int_t)s->ticks,
                "trackers", (json_int_t)s->ntrackers,
                "trackers_delivered", (json_int_t)s->delivered,
                "done", s->delivered == s->ntrackers && s->nqueued + s->nwaiting + s->nflight == 0,
                "events_created", (json_int_t)s->nevents,
                "events_created_while_disabled", (json_int_t)s->created_while_disabled,
                "events_acked", (json_int_t)acked,
                "deliveries_ok", (json_int_t)s->ok,
                "deliveries_failed", (json_int_t)s->failed,
                "deliveries_dropped", (json_int_t)s->dropped,
                "pending", (json_int_t)(s->nqueued + s->nwaiting + s->nflight),
                "in_flight", (json_int_t)s->nflight,
                "failures_in_a_row", (json_int_t)s->fail_run,
                "disabled", !sim_hook_enabled(s),
                "disabled_count", (json_int_t)s->disabled_count,
                "max_failures", (json_int_t)s->max_failures,
                "tracker_list", trk, "event_list", evs));
}

/* /_control/sim and /_control/sim/{step,pause,resume}. */
static void
sim_control(struct call *c)
{
        struct fake *f = c->f;
        const char *p = c->path + strlen("/_control/sim");
        enum evhttp_cmd_type m = c->cmd;
        char msg[200];

        if (*p == '\0' && m == EVHTTP_REQ_POST) {
                json_t *body = control_body(c);
                struct sim *s;
                if (body == NULL)
                        return;
                s = sim_new(f, body, msg, sizeof(msg));
                json_decref(body);
                if (s == NULL) {
                        call_reply_error(c, 422, "PARAMETER.INVALID", msg);
                        return;
                }
                sim_free(f->sim);
                f->sim = s;
                sim_tick_arm(s, !s->paused);
                call_reply_json(c, 201, jcheck(json_pack("{s:s,s:i}", "webhook_id", s->hook_id,
                                                         "trackers", (int)s->ntrackers)));
                return;
        }
        if (*p != '\0' && *p != '/') {
                call_reply_error(c, 404, "NOT_FOUND", "Unknown control path.");
                return;
        }
        if (f->sim == NULL) {
                call_reply_error(c, 404, "NOT_FOUND", "No simulation: POST /_control/sim first.");
                return;
        }
        if (*p == '\0' && m == EVHTTP_REQ_GET) {
                call_reply_json(c, 200, sim_state(f->sim));
        } else if (*p == '\0' && m == EVHTTP_REQ_DELETE) {
                sim_free(f->sim);
                f->sim = NULL;
                call_reply_json(c, 200, jcheck(json_pack("{s:b}", "stopped", 1)));
        } else if (strcmp(p, "/step") == 0 && m == EVHTTP_REQ_POST) {
                struct evbuffer *in = evhttp_request_get_input_buffer(c->req);
                long steps = 1;
                if (evbuffer_get_length(in) > 0) {
                        json_t *body = control_body(c);
                        if (body == NULL)
                                return;
                        bool ok = json_is_object(body) && sim_opt(body, "steps", 1, 100000, 1, &steps);
                        json_decref(body);
                        if (!ok) {
                                call_reply_error(c, 422, "PARAMETER.INVALID",
                                                 "\"steps\" must be an integer 1..100000");
                                return;
                        }
                }
                for (long i = 0; i < steps; i++)
                        sim_tick(f->sim);
                call_reply_json(c, 200, jcheck(json_pack("{s:I,s:I,s:I}",
                        "ticks", (json_int_t)f->sim->ticks,
                        "events_created", (json_int_t)f->sim->nevents,
                        "trackers_delivered", (json_int_t)f->sim->delivered)));
        } else if ((strcmp(p, "/pause") == 0 || strcmp(p, "/resume") == 0) && m == EVHTTP_REQ_POST) {
                f->sim->paused = p[1] == 'p';
                sim_tick_arm(f->sim, !f->sim->paused);
                call_reply_json(c, 200, jcheck(json_pack("{s:b}", "paused", f->sim->paused)));
        } else if (strcmp(p, "/step") == 0 || strcmp(p, "/pause") == 0 || strcmp(p, "/resume") == 0 ||
                   *p == '\0') {
                call_reply_error(c, 405, "METHOD.NOT_ALLOWED", "Method not allowed here.");
        } else {
                call_reply_error(c, 404, "NOT_FOUND", "Unknown control path.");
        }
}

static void
control_handle(struct fake *f, struct evhttp_request *req)
{
        struct call *c = call_new(f, req, false);
        const char *p = c->path;
        enum evhttp_cmd_type m = c->cmd;

        if (strcmp(p, "/_control/objects") == 0) {
                if (m == EVHTTP_REQ_POST)
                        control_objects_post(c);
                else if (m == EVHTTP_REQ_GET)
                        control_objects_get(c);
                else if (m == EVHTTP_REQ_DELETE)
                        call_reply_json(c, 200, jcheck(json_pack("{s:i}", "deleted", (int)store_clear(f))));
                else
                        goto method;
        } else if (strcmp(p, "/_control/faults") == 0) {
                if (m == EVHTTP_REQ_POST)
                        control_faults_post(c);
                else if (m == EVHTTP_REQ_GET)
                        call_reply_json(c, 200, faults_to_json(f));
                else if (m == EVHTTP_REQ_DELETE)
                        call_reply_json(c, 200, jcheck(json_pack("{s:i}", "cleared", (int)faults_clear(f))));
                else
                        goto method;
        } else if (strcmp(p, "/_control/stats") == 0) {
                if (m != EVHTTP_REQ_GET)
                        goto method;
                call_reply_json(c, 200, stats_to_json(f));
        } else if (strcmp(p, "/_control/trackers") == 0 && m == EVHTTP_REQ_POST) {
                control_trackers_post(c);
        } else if (strcmp(p, "/_control/sim") == 0 || has_prefix(p, "/_control/sim/")) {
                sim_control(c);
        } else if (strcmp(p, "/_control/reset") == 0) {
                if (m != EVHTTP_REQ_POST)
                        goto method;
                stats_reset(&f->st);
                call_reply_json(c, 200, jcheck(json_pack("{s:b}", "reset", 1)));
        } else {
                call_reply_error(c, 404, "NOT_FOUND", "Unknown control path.");
        }
        call_free(c);
        return;
method:
        call_reply_error(c, 405, "METHOD.NOT_ALLOWED", "Method not allowed here.");
        call_free(c);
}

static void
request_cb(struct evhttp_request *req, void *arg)
{
        struct fake *f = arg;
        const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
        const char *path = u ? evhttp_uri_get_path(u) : NULL;

        if (path == NULL)
                path = "";
        if (strcmp(path, "/v2") == 0 || has_prefix(path, "/v2/")) {
                api_begin(f, req);
        } else if (has_prefix(path, "/_control/")) {
                control_handle(f, req);
        } else {
                struct call *c = call_new(f, req, false);
                call_reply_error(c, 404, "NOT_FOUND", "The requested resource could not be found.");
                call_free(c);
        }
}

/* ---- process -------------------------------------------------------------------------- */

/* Answers every delayed call with 503: a detached request is freed only by a reply. */
static void
pending_flush(struct fake *f)
{
        struct call *c;

        while ((c = TAILQ_FIRST(&f->pending)) != NULL) {
                TAILQ_REMOVE(&f->pending, c, link);
                c->faulted = false;
                call_reply_error(c, 503, "SERVICE_UNAVAILABLE", "Fake server shutting down.");
                call_free(c);
        }
}

/*
 * Delayed clients get their 503 before we go: the loop runs a little longer so the
 * replies are written, rather than cut off by evhttp_free.
 */
static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
        struct fake *f = arg;
        struct timeval grace = { 0, 100 * 1000 };

        (void)what;
        fprintf(stderr, "fake_easypost: signal %d, exiting\n", (int)sig);
        pending_flush(f);
        event_base_loopexit(f->base, &grace);
}

/*
 * The fixture objects a test gets without seeding. A missing default directory is only
 * a warning (the fixtures live outside the repository); an explicit one must be complete.
 */
static int
fixtures_load(struct fake *f, const char *dir, bool required)
{
        static const char *const names[] = {
                "shipment_bought.json", "shipment_unpurchased.json", "tracker_retrieve.json",
        };
        char path[4096], msg[200];
        json_error_t jerr;

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                json_t *obj;

                if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >= (int)sizeof(path)) {
                        fprintf(stderr, "fake_easypost: fixtures path too long\n");
                        return -1;
                }
                obj = json_load_file(path, 0, &jerr);
                if (obj == NULL) {
                        fprintf(stderr, "fake_easypost: %s: %s: %s\n",
                                required ? "error" : "warning", path, jerr.text);
                        if (required)
                                return -1;
                        continue;
                }
                if (!store_check(obj, msg, sizeof(msg))) {
                        fprintf(stderr, "fake_easypost: %s: %s\n", path, msg);
                        json_decref(obj);
                        if (required)
                                return -1;
                        continue;
                }
                store_put(f, obj);
                json_decref(obj);
        }
        return 0;
}

/* "HOST:PORT", "[V6]:PORT"; host is written into buf. */
static int
listen_parse(const char *s, char *buf, size_t buflen, unsigned short *port)
{
        const char *colon = strrchr(s, ':');
        size_t hl;
        long p;

        if (colon == NULL || !int_parse(colon + 1, 0, 65535, &p))
                return -1;
        hl = (size_t)(colon - s);
        if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
                s++;
                hl -= 2;
        }
        if (hl == 0 || hl >= buflen)
                return -1;
        memcpy(buf, s, hl);
        buf[hl] = '\0';
        *port = (unsigned short)p;
        return 0;
}

static void
usage(FILE *out)
{
        fprintf(out,
                "usage: fake_easypost --api-key KEY [--listen HOST:PORT] [--fixtures DIR] [--no-fixtures]\n"
                "  --listen    default 127.0.0.1:0 (0 = any free port; \"port=N\" is printed first)\n"
                "  --fixtures  default $EASYPOST_FIXTURES or <srcdir>/../shared/fixtures/easypost\n"
                "  --no-fixtures  start with an empty store\n"
                "Control API: see tests/fake/fake_easypost.md\n");
}

static void
fake_fini(struct fake *f)
{
        pending_flush(f);               /* calls delayed during the grace period */
        sim_free(f->sim);               /* before the loop: it owns connections and timers */
        f->sim = NULL;
        if (f->http)
                evhttp_free(f->http);
        if (f->sigterm)
                event_free(f->sigterm);
        if (f->sigint)
                event_free(f->sigint);
        faults_clear(f);
        store_clear(f);
        free(f->events);
        json_decref(f->objects);
        stats_fini(&f->st);
        if (f->base)
                event_base_free(f->base);
}

int
main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "listen", required_argument, NULL, 'l' },
                { "fixtures", required_argument, NULL, 'f' },
                { "no-fixtures", no_argument, NULL, 'n' },
                { "api-key", required_argument, NULL, 'k' },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        struct fake f;
        const char *listen = "127.0.0.1:0", *fixtures = NULL;
        char host[256], defdir[4096];
        unsigned short port;
        bool no_fixtures = false;
        struct evhttp_bound_socket *bound;
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof(ss);
        int opt, rc = EXIT_FAILURE;

        memset(&f, 0, sizeof(f));
        while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                switch (opt) {
                case 'l': listen = optarg; break;
                case 'f': fixtures = optarg; break;
                case 'n': no_fixtures = true; break;
                case 'k': f.api_key = optarg; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return EXIT_FAILURE;
                }
        }
        if (optind != argc || f.api_key == NULL || f.api_key[0] == '\0' ||
            strlen(f.api_key) >= FAKE_AUTH_MAX / 2) {
                usage(stderr);
                return EXIT_FAILURE;
        }
        f.api_key_len = strlen(f.api_key);
        if (listen_parse(listen, host, sizeof(host), &port) != 0) {
                fprintf(stderr, "fake_easypost: bad --listen %s\n", listen);
                return EXIT_FAILURE;
        }

        /* a client closing mid-reply must not kill us */
        signal(SIGPIPE, SIG_IGN);
        TAILQ_INIT(&f.faults);
        TAILQ_INIT(&f.pending);
        f.objects = jcheck(json_object());
        stats_init(&f.st);

        if (!no_fixtures) {
                const char *env = getenv("EASYPOST_FIXTURES");
                bool required = fixtures != NULL;

                if (fixtures == NULL) {
                        snprintf(defdir, sizeof(defdir), "%s/../shared/fixtures/easypost",
                                 EPS_SRCDIR);
                        fixtures = env && env[0] ? env : defdir;
                }
                if (fixtures_load(&f, fixtures, required) != 0)
                        goto out;
        }

        f.base = event_base_new();
        f.http = f.base ? evhttp_new(f.base) : NULL;
        if (f.http == NULL) {
                fprintf(stderr, "fake_easypost: libevent setup failed\n");
                goto out;
        }
        evhttp_set_max_body_size(f.http, FAKE_BODY_MAX);
        evhttp_set_max_headers_size(f.http, 64 * 1024);
        evhttp_set_timeout(f.http, 120);
        /* every method reaches us, so a wrong one gets a JSON 405, not libevent's page */
        evhttp_set_allowed_methods(f.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                   EVHTTP_REQ_PATCH);
        evhttp_set_gencb(f.http, request_cb, &f);
        bound = evhttp_bind_socket_with_handle(f.http, host, port);
        if (bound == NULL) {
                fprintf(stderr, "fake_easypost: cannot listen on %s\n", listen);
                goto out;
        }
        if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sslen) != 0) {
                perror("fake_easypost: getsockname");
                goto out;
        }
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);

        f.sigterm = evsignal_new(f.base, SIGTERM, signal_cb, &f);
        f.sigint = evsignal_new(f.base, SIGINT, signal_cb, &f);
        if (f.sigterm == NULL || f.sigint == NULL || evsignal_add(f.sigterm, NULL) != 0 ||
            evsignal_add(f.sigint, NULL) != 0) {
                fprintf(stderr, "fake_easypost: signal setup failed\n");
                goto out;
        }

        /* the first line a test reads; everything is ready once it is out */
        printf("port=%u\n", (unsigned)port);
        fflush(stdout);
        fprintf(stderr, "fake_easypost: listening on %s port %u, %zu objects, %zu events\n",
                host, (unsigned)port, json_object_size(f.objects), f.nevents);

        event_base_dispatch(f.base);
        rc = 0;
out:
        fake_fini(&f);
        libevent_global_shutdown();
        return rc;
}
