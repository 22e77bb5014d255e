/*
 * httpc.c - libcurl multi <-> libevent glue.
 *
 * curl tells us which sockets to watch (socket callback) and when to call
 * back (timer callback); those callbacks only (re)arm events. Our events
 * call curl_multi_socket_action and then collect finished transfers; the
 * completion callbacks run there, outside curl, so they may start new
 * requests. Socket state is per socket (curl_multi_assign), since
 * connections outlive transfers.
 */
#include "httpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct httpc {
        struct event_base *base;
        CURLM *multi;
        struct event *timer;
        char *user_agent;
        unsigned active;
        struct hc_req *reqs; /* in flight, for cancellation at free */
};

struct hc_sock {
        struct event *ev;
        struct httpc *h;
};

struct hc_req {
        struct hc_req *next, *prev;
        CURL *easy;
        char *body;
        size_t len, cap;
        struct curl_slist *headers; /* request headers of a request with a body */
        long retry_after;
        char request_id[80];
        char errbuf[CURL_ERROR_SIZE];
        httpc_done_fn fn;
        void *arg;
        uint64_t answered_us; /* first header line read */
};

static void
req_unlink(struct httpc *h, struct hc_req *r)
{
        if (r->prev)
                r->prev->next = r->next;
        else
                h->reqs = r->next;
        if (r->next)
                r->next->prev = r->prev;
}

static void
req_finish(struct httpc *h, struct hc_req *r, CURLcode rc)
{
        struct httpc_resp resp = { 0 };
        long status = 0;

        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(h->multi, r->easy);
        req_unlink(h, r);
        h->active--;
        resp.rc = rc;
        resp.status = rc == CURLE_OK ? status : 0;
        resp.body = r->body ? r->body : "";
        resp.len = r->len;
        resp.retry_after_s = r->retry_after;
        resp.answered_us = r->answered_us;
        resp.request_id = r->request_id;
        resp.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        r->fn(&resp, r->arg);
        curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->headers);
        free(r->body);
        free(r);
}

static void
collect(struct httpc *h)
{
        CURLMsg *m;
        int left;

        while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
                if (m->msg != CURLMSG_DONE)
                        continue;
                struct hc_req *r = NULL;
                CURLcode rc = m->data.result; /* copy out: m dies at remove */
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
                req_finish(h, r, rc);
        }
}

static void
event_cb(evutil_socket_t fd, short what, void *arg)
{
        struct hc_sock *hs = arg;
        struct httpc *h = hs->h; /* hs may be freed inside socket_action */
        int running;
        int mask = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);

        curl_multi_socket_action(h->multi, fd, mask, &running);
        collect(h);
}

static void
timeout_cb(evutil_socket_t fd, short what, void *arg)
{
        struct httpc *h = arg;
        int running;

        (void)fd;
        (void)what;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        collect(h);
}

static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *sockp)
{
        struct httpc *h = userp;
        struct hc_sock *hs = sockp;

        (void)easy;
        if (what == CURL_POLL_REMOVE) {
                if (hs) {
                        event_free(hs->ev);
                        free(hs);
                }
                return 0;
        }
        short flags = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                      ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
        if (hs == NULL) {
                hs = xcalloc(1, sizeof(*hs));
                hs->h = h;
                hs->ev = event_new(h->base, s, flags, event_cb, hs);
                curl_multi_assign(h->multi, s, hs);
        } else {
                event_del(hs->ev);
                event_assign(hs->ev, h->base, s, flags, event_cb, hs);
        }
        event_add(hs->ev, NULL);
        return 0;
}

static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
        struct httpc *h = userp;

        (void)multi;
        if (timeout_ms < 0) {
                evtimer_del(h->timer);
                return 0;
        }
        struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
        evtimer_add(h->timer, &tv);
        return 0;
}

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
        struct hc_req *r = arg;
        size_t n = size * nmemb;

        if (r->len + n > HTTPC_MAX_BODY)
                return 0; /* aborts the transfer: response too large */
        if (r->len + n + 1 > r->cap) {
                r->cap = (r->len + n + 1) * 2;
                r->body = xrealloc(r->body, r->cap);
        }
        memcpy(r->body + r->len, ptr, n);
        r->len += n;
        r->body[r->len] = '\0';
        return n;
}

long
httpc_retry_after(const char *value, time_t now)
{
        const char *p = value;
        long v = 0;

        while (*p == ' ' || *p == '\t')
                p++;
        if (*p >= '0' && *p <= '9') {
                /* delay-seconds, saturating instead of overflowing */
                for (; *p >= '0' && *p <= '9'; p++)
                        v = v >= HTTPC_RETRY_AFTER_MAX ? v : v * 10 + (*p - '0');
                while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
                        p++;
                if (*p != '\0')
                        return -1;
                return v > HTTPC_RETRY_AFTER_MAX ? HTTPC_RETRY_AFTER_MAX : v;
        }
        /* an HTTP-date (IMF-fixdate, RFC 850 or asctime): curl parses all three */
        char date[64];
        size_t n = strcspn(p, "\r\n");
        if (n == 0 || n >= sizeof(date))
                return -1;
        memcpy(date, p, n);
        date[n] = '\0';
        time_t t = curl_getdate(date, &now);
        if (t == (time_t)-1)
                return -1;
        if (t <= now)
                return 0;
        return t - now > HTTPC_RETRY_AFTER_MAX ? HTTPC_RETRY_AFTER_MAX : (long)(t - now);
}

static size_t
header_cb(char *buf, size_t size, size_t nitems, void *arg)
{
        struct hc_req *r = arg;
        size_t n = size * nitems;

        if (r->answered_us == 0)
                r->answered_us = clock_mono_us();
        if (n > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
                char v[96];
                snprintf(v, sizeof(v), "%.*s", (int)(n - 12 < sizeof(v) - 1 ? n - 12 : sizeof(v) - 1),
                         buf + 12);
                r->retry_after = httpc_retry_after(v, time(NULL));
        } else if (n > 18 && strncasecmp(buf, "x-ep-request-uuid:", 18) == 0) {
                const char *p = buf + 18;
                size_t k = n - 18;
                while (k && (*p == ' ' || *p == '\t')) {
                        p++;
                        k--;
                }
                while (k && (p[k - 1] == '\r' || p[k - 1] == '\n' || p[k - 1] == ' '))
                        k--;
                if (k >= sizeof(r->request_id))
                        k = sizeof(r->request_id) - 1;
                memcpy(r->request_id, p, k);
                r->request_id[k] = '\0';
        }
        return n;
}

struct httpc *
httpc_new(struct event_base *base, const char *user_agent)
{
        struct httpc *h = xcalloc(1, sizeof(*h));

        h->base = base;
        h->user_agent = xstrdup(user_agent);
        h->multi = curl_multi_init();
        if (h->multi == NULL)
                abort();
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
        h->timer = evtimer_new(base, timeout_cb, h);
        return h;
}

void
httpc_free(struct httpc *h)
{
        if (h == NULL)
                return;
        while (h->reqs)
                req_finish(h, h->reqs, CURLE_ABORTED_BY_CALLBACK);
        curl_multi_cleanup(h->multi); /* may call socket_cb: the base is still alive */
        event_free(h->timer);
        free(h->user_agent);
        free(h);
}

int
httpc_get(struct httpc *h, const char *url, const char *user, long connect_ms, long total_ms,
          httpc_done_fn fn, void *arg)
{
        return httpc_request(h, "GET", url, NULL, user, connect_ms, total_ms, fn, arg);
}

/* A JSON body goes with its Content-Length (COPYPOSTFIELDS: curl keeps a copy). */
static int
set_body(struct hc_req *r, const char *method, const char *json)
{
        if (strcmp(method, "GET") != 0)
                curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, method);
        if (json == NULL)
                return 0;
        r->headers = curl_slist_append(NULL, "Content-Type: application/json");
        if (r->headers == NULL)
                return -1;
        curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
        return curl_easy_setopt(r->easy, CURLOPT_COPYPOSTFIELDS, json) == CURLE_OK ? 0 : -1;
}

int
httpc_request(struct httpc *h, const char *method, const char *url, const char *json,
              const char *user, long connect_ms, long total_ms, httpc_done_fn fn, void *arg)
{
        struct hc_req *r = xcalloc(1, sizeof(*r));

        r->easy = curl_easy_init();
        if (r->easy == NULL) {
                free(r);
                return -1;
        }
        r->fn = fn;
        r->arg = arg;
        r->retry_after = -1;
        curl_easy_setopt(r->easy, CURLOPT_URL, url);
        curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
        curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
        curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
        curl_easy_setopt(r->easy, CURLOPT_USERAGENT, h->user_agent);
        curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
        curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, total_ms);
        curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(r->easy, CURLOPT_ACCEPT_ENCODING, "");
        if (user) {
                curl_easy_setopt(r->easy, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                curl_easy_setopt(r->easy, CURLOPT_USERNAME, user);
                curl_easy_setopt(r->easy, CURLOPT_PASSWORD, "");
        }
        if (set_body(r, method, json) != 0 || curl_multi_add_handle(h->multi, r->easy) != CURLM_OK) {
                curl_easy_cleanup(r->easy);
                curl_slist_free_all(r->headers);
                free(r);
                return -1;
        }
        r->next = h->reqs;
        if (h->reqs)
                h->reqs->prev = r;
        h->reqs = r;
        h->active++;
        return 0;
}

unsigned
httpc_active(const struct httpc *h)
{
        return h->active;
}
