/*
 * loadgen.c - load generator for the webhook endpoint: signed EasyPost
 * tracker.updated events sent over keep-alive evhttp client connections.
 *
 * Two profiles. unique: every event is a new tracker with its whole history
 * (the projection's worst case). progressive: K trackers advance in turn, each
 * delivery the tracker's history so far plus one detail, as EasyPost sends
 * them, with a few non-tracker events and exact redeliveries mixed in.
 *
 * Every body is generated and signed before the clock starts, so the timed
 * part only queues bytes that already exist. Closed loop (-c C): each of C
 * connections keeps one request in flight. Open loop (--rate R): a 1 ms
 * ticker starts requests on a fixed schedule whatever the answers; a request
 * that finds no free connection is "late", waits in a backlog, and its latency
 * counts from its scheduled start, so a stalled server cannot hide its stall
 * (coordinated omission). Afterwards --db checks in PostgreSQL that every
 * event answered 2xx is stored exactly once, byte for byte.
 *
 * Requests are only ever started from the pump event or the ticker, never
 * from inside an evhttp callback, so libevent is never re-entered.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>
#include <openssl/evp.h>

#include "sig.h"
#include "util.h"

#define LG_USER_AGENT "easypost-sync-loadgen/1"
#define LG_NONE SIZE_MAX
#define LG_RETRY_DELAY_US 250000       /* a 503 says Retry-After: 1; a quarter is enough locally */
#define LG_OPEN_TICK_US 1000
#define LG_CLOSED_TICK_US 10000
#define LG_SAMPLE_US 100000
/* evhttp_request_error values, then "connect": libevent 2.1.12 reports a failed
 * connect through the callback alone (response code 0, no error callback) */
#define LG_NERR 7
#define LG_HIST_N 2048
#define LG_HI_SALT 0x632be59bd9b4e019ULL  /* keeps an id's two halves from coinciding */

/* One generated event: where its body lives in the arena, and what became of it. */
struct msg {
        size_t off;
        uint32_t len;
        uint16_t status;                /* last HTTP status, 0 = none yet or connection error */
        uint16_t attempts;
        bool ok;                        /* answered 2xx at least once */
        char id[37];                    /* evt_ + 32 hex */
        char sig[SIG_HEADER_LEN + 1];
        size_t dup_of;                  /* a redelivery: the message it repeats; else LG_NONE */
};

/* One client connection; at most one request in flight on it. */
struct conn {
        struct lg *g;
        struct evhttp_connection *evcon;
        struct conn *next_free;
        size_t msg;                     /* in flight, LG_NONE when idle */
        uint64_t t0_us;                 /* send time, or scheduled start when it was late */
        int err;                        /* evhttp_request_error seen for this request, -1 none */
};

enum profile { PROFILE_UNIQUE, PROFILE_PROGRESSIVE };

static const char *const profile_names[] = { "unique", "progressive" };

struct opts {
        const char *url, *secret, *db, *json, *label;
        size_t n;
        enum profile profile;
        size_t trackers;                /* progressive: trackers advancing in turn */
        unsigned conns;
        double rate;
        double duration;
        double retry_window;
        int timeout;
        bool retry, quiet;
        uint64_t seed;
        bool seeded;
        long pid, pg_pid;
        long dump;                      /* print event #dump and its signature, then exit */
        const char *dump_dir;           /* write every event and its signature there, then exit */
};

/* Counters sampled from another process (the daemon, PostgreSQL) around the timed part. */
struct watch {
        long pid, pg_pid;
        long long cpu0, cpu1, pg0, pg1; /* clock ticks */
        long rss0_kb, rss_peak_kb;
};

struct lg {
        struct opts o;
        struct event_base *base;
        struct event *pump, *ticker, *progress, *sampler, *sigint;
        char host[256], host_header[300], path[1024];
        int port;

        struct msg *msgs;
        size_t n;
        char *arena;
        size_t arena_len;
        size_t distinct;                /* distinct event ids (messages minus redeliveries) */
        size_t redeliveries, others;    /* progressive: exact repeats, non-tracker events */
        size_t tracker_ids;             /* distinct tracker ids in the bodies */

        struct conn *conns;
        struct conn *free_list;
        unsigned nfree;
        size_t inflight;

        size_t limit;                   /* fresh events that may still be started */
        size_t next;                    /* fresh events started so far */
        size_t released;                /* open loop: fresh events whose start time has come */
        size_t *rq_idx;                 /* retry ring, ordered by due time */
        uint64_t *rq_due;
        size_t rq_head, rq_len;
        uint64_t retry_until;
        bool stopping;

        uint64_t t_start, t_end, t_last_progress;
        uint64_t sent, ok, non2xx, errors, late, retries, closes;
        uint64_t err_kind[LG_NERR];
        uint64_t status_count[600];
        uint64_t prog_done;             /* answers (any kind) at the last progress line */

        uint32_t *lat;                  /* microseconds, every answered request */
        size_t nlat, lat_cap;
        uint64_t hist[LG_HIST_N];
        uint64_t nhist;

        struct watch w;
        struct rusage ru0, ru1;
};

struct db_result {
        bool done;
        long long checked, stored, lost, duplicated, mismatched, extra;
};

/* ---- small helpers ---- */

static uint64_t
splitmix(uint64_t *s)
{
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static unsigned
below(uint64_t *s, unsigned n)
{
        return (unsigned)(splitmix(s) % n);
}

struct arena {
        char *p;
        size_t len, cap;
};

static void arena_printf(struct arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
arena_printf(struct arena *a, const char *fmt, ...)
{
        for (;;) {
                va_list ap;
                size_t room = a->cap - a->len;

                va_start(ap, fmt);
                int k = vsnprintf(a->p + a->len, room, fmt, ap);
                va_end(ap);
                if (k < 0)
                        abort();
                if ((size_t)k < room) {
                        a->len += (size_t)k;
                        return;
                }
                a->cap = a->cap * 2 + (size_t)k + 1;
                a->p = xrealloc(a->p, a->cap);
        }
}

/* A JSON string or null; callers only pass text without quotes or backslashes. */
static void
put_str(struct arena *a, const char *s)
{
        if (s == NULL)
                arena_printf(a, "null");
        else
                arena_printf(a, "\"%s\"", s);
}

static void
fmt_time(char *out, size_t cap, int64_t t, int ms)
{
        time_t tt = (time_t)t;
        struct tm tm;
        char base[32];

        gmtime_r(&tt, &tm);
        strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
        if (ms >= 0)
                snprintf(out, cap, "%s.%03dZ", base, ms);
        else
                snprintf(out, cap, "%sZ", base);
}

static void
fmt_date(char *out, size_t cap, int64_t t)
{
        time_t tt = (time_t)t;
        struct tm tm;

        gmtime_r(&tt, &tm);
        strftime(out, cap, "%Y-%m-%d", &tm);
}

static void
hex_id(char *out, size_t cap, const char *prefix, uint64_t hi, uint64_t lo)
{
        snprintf(out, cap, "%s%016" PRIx64 "%016" PRIx64, prefix, hi, lo);
}

/* A bijection on 64 bits, so distinct counters give distinct, random-looking ids. */
static uint64_t
mix64(uint64_t z)
{
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* ---- realistic tracker.updated events ---- */

enum code_kind { CODE_USPS, CODE_UPS, CODE_FEDEX, CODE_DHL, CODE_CANADAPOST };

struct carrier {
        const char *name;       /* EasyPost carrier string */
        const char *brand;      /* how the carrier names itself in messages */
        const char *service;
        const char *label_msg;
        enum code_kind kind;
        unsigned lo, hi;        /* its region: places[lo..hi) */
};

static const struct carrier carriers[] = {
        { "USPS", "USPS", "Priority", "Shipping Label Created, USPS Awaiting Item", CODE_USPS, 0,
          16 },
        { "USPS", "USPS", "GroundAdvantage", "Pre-Shipment Info Sent to USPS, USPS Awaiting Item",
          CODE_USPS, 0, 16 },
        { "UPS", "UPS", "Ground", "Shipper created a label, UPS has not received the package yet.",
          CODE_UPS, 0, 16 },
        { "FedEx", "FedEx", "FEDEX_GROUND", "Shipment information sent to FedEx", CODE_FEDEX, 0, 16 },
        { "FedEx", "FedEx", "FEDEX_2_DAY", "Shipment information sent to FedEx", CODE_FEDEX, 0, 16 },
        { "DHLExpress", "DHL", "ExpressWorldwideNonDoc", "Shipment information received", CODE_DHL,
          0, 20 },
        { "CanadaPost", "Canada Post", "ExpeditedParcel", "Electronic information submitted by shipper",
          CODE_CANADAPOST, 16, 18 },
};

struct place {
        const char *city, *state, *country, *zip;
};

/* US first, then Canada, then Germany: carriers pick a range (struct carrier lo/hi). */
static const struct place places[] = {
        { "ORLANDO", "FL", "US", "32809" },       { "KENLY", "NC", "US", "27542" },
        { "EDISON", "NJ", "US", "08817" },        { "MEMPHIS", "TN", "US", "38118" },
        { "LOUISVILLE", "KY", "US", "40209" },    { "CHICAGO", "IL", "US", "60638" },
        { "DALLAS", "TX", "US", "75261" },        { "ONTARIO", "CA", "US", "91761" },
        { "BROOKLYN", "NY", "US", "11201" },      { "SEATTLE", "WA", "US", "98108" },
        { "DENVER", "CO", "US", "80239" },        { "ATLANTA", "GA", "US", "30354" },
        { "INDIANAPOLIS", "IN", "US", "46241" },  { "SALT LAKE CITY", "UT", "US", "84104" },
        { "HARRISBURG", "PA", "US", "17112" },    { "OAKLAND", "CA", "US", "94621" },
        { "MONTRÉAL", "QC", "CA", "H4S 1Y4" },    { "MISSISSAUGA", "ON", "CA", "L5T 2T2" },
        { "LEIPZIG", "SN", "DE", "04435" },       { "MÜNCHEN", "BY", "DE", "80939" },
};

struct step {
        const char *status, *detail, *code;
        char message[96];
        const struct place *at;
        bool no_city;           /* label events often carry only zip and country */
        int64_t t;
};

static const struct place *
pick_place(const struct carrier *cr, uint64_t *r)
{
        return &places[cr->lo + below(r, cr->hi - cr->lo)];
}

static void
put_place(struct arena *a, const struct place *p, bool no_city)
{
        arena_printf(a, "{\"object\":\"TrackingLocation\",\"city\":");
        put_str(a, no_city ? NULL : p->city);
        arena_printf(a, ",\"state\":");
        put_str(a, no_city ? NULL : p->state);
        arena_printf(a, ",\"country\":");
        put_str(a, p->country);
        arena_printf(a, ",\"zip\":");
        put_str(a, p->zip);
        arena_printf(a, "}");
}

static void
tracking_code(char *out, size_t cap, enum code_kind k, uint64_t *r)
{
        static const char alnum[] = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
        char d[24];
        unsigned nd;

        switch (k) {
        case CODE_USPS:
                nd = 18;
                break;
        case CODE_UPS:
                nd = 8;
                break;
        case CODE_FEDEX:
                nd = 12;
                break;
        case CODE_DHL:
                nd = 10;
                break;
        default:
                nd = 16;
                break;
        }
        for (unsigned i = 0; i < nd; i++)
                d[i] = (char)('0' + below(r, 10));
        d[nd] = '\0';
        if (k == CODE_USPS) {
                snprintf(out, cap, "9400%s", d);
        } else if (k == CODE_UPS) {
                char s[7];
                for (unsigned i = 0; i < 6; i++)
                        s[i] = alnum[below(r, sizeof(alnum) - 1)];
                s[6] = '\0';
                snprintf(out, cap, "1Z%s03%s", s, d);
        } else {
                snprintf(out, cap, "%s", d);
        }
}

/*
 * Builds a tracking history of `want` details: label, pick-up, hub scans, and
 * when `delivered` out-for-delivery + delivered. Successive details are at
 * least 10 minutes apart, so datetimes strictly increase along the history.
 */
static unsigned
make_steps(struct step *st, unsigned cap, const struct carrier *cr, const struct place *from,
           const struct place *to, int64_t t, unsigned want, bool delivered, uint64_t *r)
{
        unsigned n = 0; /* cap is 16 and want <= 15: always room */
        unsigned hubs = want - 2 - (delivered ? 2 : 0);
        const struct place *hub = from;

        st[n] = (struct step){ "pre_transit", "label_created", "OC", "", from, true, t };
        snprintf(st[n].message, sizeof(st[n].message), "%s", cr->label_msg);
        n++;
        t += 1800 + below(r, 6 * 3600);
        st[n] = (struct step){ "in_transit", "arrived_at_facility", "PU", "Picked up", from, false, t };
        n++;
        for (unsigned i = 0; i < hubs && n < cap; i++) {
                t += 600 + below(r, 9 * 3600);
                switch (i % 3) {
                case 0:
                        hub = pick_place(cr, r);
                        st[n] = (struct step){ "in_transit", "arrived_at_facility", "AR", "", hub,
                                               false, t };
                        snprintf(st[n].message, sizeof(st[n].message), "Arrived at %s location",
                                 cr->brand);
                        break;
                case 1:
                        st[n] = (struct step){ "in_transit", "departed_facility", "DP", "", hub,
                                               false, t };
                        snprintf(st[n].message, sizeof(st[n].message), "Departed %s location",
                                 cr->brand);
                        break;
                default:
                        st[n] = (struct step){ "in_transit", "unknown", "IT", "On the way",
                                               pick_place(cr, r), false, t };
                        break;
                }
                n++;
        }
        if (delivered && n + 2 <= cap) {
                t += 3600 + below(r, 12 * 3600);
                st[n] = (struct step){ "out_for_delivery", "out_for_delivery", "OD", "", to, false, t };
                snprintf(st[n].message, sizeof(st[n].message), "On %s vehicle for delivery",
                         cr->brand);
                n++;
                t += 1800 + below(r, 6 * 3600);
                st[n] = (struct step){ "delivered", "arrived_at_destination", "DL", "Delivered", to,
                                       false, t };
                n++;
        }
        return n;
}

/* Everything one tracker.updated body shows; both profiles fill it, put_tracker_event writes it. */
struct tview {
        const struct carrier *cr;
        const struct place *from, *to;
        const struct step *st;
        unsigned n;                     /* details shown: st[0..n), n >= 1 */
        const char *evt, *user_id, *trk, *shp, *code, *b64;
        const char *ev_time;            /* the Event's created_at and updated_at */
        const char *tc, *tu, *est, *estd;
        bool prod, signed_by, is_return;
        unsigned weight_i, weight_f;
};

static void
put_tracker_event(struct arena *a, const struct tview *v)
{
        const struct carrier *cr = v->cr;
        const struct step *last = &v->st[v->n - 1], *prev = v->n > 1 ? &v->st[v->n - 2] : NULL;
        bool delivered = strcmp(last->status, "delivered") == 0;
        const char *mode = v->prod ? "production" : "test";
        char tb[40];

        arena_printf(a, "{\"description\":\"tracker.updated\",\"mode\":\"%s\",", mode);
        if (prev == NULL)
                arena_printf(a, "\"previous_attributes\":{\"status\":\"unknown\"},");
        else if (strcmp(prev->status, last->status) != 0)
                arena_printf(a, "\"previous_attributes\":{\"status\":\"%s\"},", prev->status);
        else
                arena_printf(a, "\"previous_attributes\":{\"status_detail\":\"%s\"},", prev->detail);
        arena_printf(a,
                     "\"created_at\":\"%s\",\"pending_urls\":[\"https://hooks.example.com/easypost\"],"
                     "\"completed_urls\":[],\"updated_at\":\"%s\",\"id\":\"%s\",\"user_id\":\"%s\","
                     "\"status\":\"pending\",\"object\":\"Event\",",
                     v->ev_time, v->ev_time, v->evt, v->user_id);
        arena_printf(a,
                     "\"result\":{\"id\":\"%s\",\"object\":\"Tracker\",\"mode\":\"%s\","
                     "\"tracking_code\":\"%s\",\"status\":\"%s\",\"status_detail\":\"%s\","
                     "\"created_at\":\"%s\",\"updated_at\":\"%s\",\"signed_by\":",
                     v->trk, mode, v->code, last->status, last->detail, v->tc, v->tu);
        put_str(a, delivered && v->signed_by ? "J SMITH" : NULL);
        arena_printf(a, ",\"weight\":%u.%u,\"est_delivery_date\":\"%s\",\"shipment_id\":",
                     v->weight_i, v->weight_f, v->est);
        put_str(a, v->shp);
        arena_printf(a, ",\"carrier\":\"%s\",\"tracking_details\":[", cr->name);
        for (unsigned k = 0; k < v->n; k++) {
                const struct step *s = &v->st[k];
                fmt_time(tb, sizeof(tb), s->t, -1);
                arena_printf(a,
                             "%s{\"object\":\"TrackingDetail\",\"message\":\"%s\",\"description\":\"%s\","
                             "\"status\":\"%s\",\"status_detail\":\"%s\",\"datetime\":\"%s\","
                             "\"source\":\"%s\",\"carrier_code\":\"%s\",\"tracking_location\":",
                             k ? "," : "", s->message, s->message, s->status, s->detail, tb,
                             cr->name, s->code);
                put_place(a, s->at, s->no_city);
                arena_printf(a, "}");
        }
        arena_printf(a,
                     "],\"carrier_detail\":{\"object\":\"CarrierDetail\",\"service\":\"%s\","
                     "\"container_type\":null,\"est_delivery_date_local\":\"%s\","
                     "\"est_delivery_time_local\":null,\"origin_location\":\"%s %s %s\","
                     "\"origin_tracking_location\":",
                     cr->service, v->estd, v->from->city, v->from->state, v->from->country);
        put_place(a, v->from, false);
        arena_printf(a, ",\"destination_location\":\"%s %s %s\",\"destination_tracking_location\":",
                     v->to->city, v->to->state, v->to->country);
        if (delivered)
                put_place(a, v->to, false);
        else
                arena_printf(a, "null");
        arena_printf(a, ",\"guaranteed_delivery_date\":null,\"alternate_identifier\":null,"
                        "\"initial_delivery_attempt\":");
        if (delivered) {
                fmt_time(tb, sizeof(tb), last->t, -1);
                put_str(a, tb);
        } else {
                arena_printf(a, "null");
        }
        arena_printf(a,
                     "},\"finalized\":%s,\"is_return\":%s,"
                     "\"fees\":[{\"object\":\"Fee\",\"type\":\"TrackerFee\",\"amount\":\"0.02000\","
                     "\"charged\":true,\"refunded\":false}],"
                     "\"public_url\":\"https://track.easypost.com/%s\"}}",
                     delivered ? "true" : "false", v->is_return ? "true" : "false", v->b64);
}

/* The public_url token: base64 of "v1:<trk id>", unpadded. */
static void
public_token(char *out, size_t cap, const char *trk)
{
        unsigned char b64[96];
        char raw[48];

        snprintf(raw, sizeof(raw), "v1:%s", trk);
        int nb = EVP_EncodeBlock(b64, (const unsigned char *)raw, (int)strlen(raw));
        while (nb > 0 && b64[nb - 1] == '=')
                b64[--nb] = '\0';
        snprintf(out, cap, "%s", (char *)b64);
}

/* The i-th event id and the s-th tracker id of a run: the low halves are a
 * bijection of (run, i), so unique within a run; the random run half keeps
 * runs apart. */
static void
evt_id(char *out, size_t cap, uint64_t run_hi, size_t i)
{
        hex_id(out, cap, "evt_", mix64(run_hi + 3 * (uint64_t)i + LG_HI_SALT),
               mix64(run_hi ^ (2 * (uint64_t)i)));
}

static void
trk_id(char *out, size_t cap, uint64_t run_hi, size_t s)
{
        hex_id(out, cap, "trk_", mix64(run_hi + 3 * (uint64_t)s + 1 + LG_HI_SALT),
               mix64(run_hi ^ (2 * (uint64_t)s + 1)));
}

/* --profile unique: event i about its own new tracker with 2-13 details. */
static void
gen_event(struct arena *a, struct msg *m, size_t i, uint64_t run_hi, const char *user_id,
          uint64_t *r)
{
        const struct carrier *cr = &carriers[below(r, ARRAY_LEN(carriers))];
        const struct place *from = pick_place(cr, r);
        const struct place *to = pick_place(cr, r);
        struct step st[16];
        char trk[40], shp[40], code[48], tc[40], tu[40], ec[40], est[40], estd[16], b64[96];
        int64_t t0 = 1722470400 + (int64_t)below(r, 120 * 86400); /* Aug-Nov 2024 */
        size_t start = a->len;

        evt_id(m->id, sizeof(m->id), run_hi, i);
        trk_id(trk, sizeof(trk), run_hi, i);
        hex_id(shp, sizeof(shp), "shp_", splitmix(r), splitmix(r));
        tracking_code(code, sizeof(code), cr->kind, r);
        unsigned want = 2 + below(r, 12);
        bool will_deliver = below(r, 4) == 0 && want >= 4;
        unsigned n = make_steps(st, ARRAY_LEN(st), cr, from, to, t0, want, will_deliver, r);
        const struct step *last = &st[n - 1];
        int64_t created = t0 - 60 - below(r, 3600), updated = last->t + 1 + below(r, 120);
        fmt_time(tc, sizeof(tc), created, -1);
        fmt_time(tu, sizeof(tu), updated, -1);
        fmt_time(ec, sizeof(ec), updated + 1, (int)below(r, 1000));
        int64_t eta = (t0 / 86400 + 3 + below(r, 4)) * 86400;
        fmt_time(est, sizeof(est), eta, -1);
        fmt_date(estd, sizeof(estd), eta);
        public_token(b64, sizeof(b64), trk);
        bool delivered = strcmp(last->status, "delivered") == 0;
        struct tview v = {
                .cr = cr, .from = from, .to = to, .st = st, .n = n, .evt = m->id,
                .user_id = user_id, .trk = trk, .code = code, .b64 = b64, .ev_time = ec,
                .tc = tc, .tu = tu, .est = est, .estd = estd,
        };
        /* the draws below keep the order of the original one-function generator,
         * so a --seed gives the same bodies as before the profiles existed */
        v.prod = below(r, 10) != 0;
        v.signed_by = delivered && below(r, 2);
        v.weight_f = below(r, 10);
        v.weight_i = 1 + below(r, 800);
        v.shp = below(r, 5) ? shp : NULL;
        v.is_return = below(r, 20) == 0;
        put_tracker_event(a, &v);
        m->off = start;
        m->len = (uint32_t)(a->len - start);
}

/* --profile progressive: one tracker's whole life, planned when it is created. */
struct ptrk {
        const struct carrier *cr;
        const struct place *from, *to;
        struct step st[16];
        unsigned total, shown;          /* details planned / delivered so far */
        char trk[40], shp[40], code[48], b64[96], tc[40], est[40], estd[16];
        bool prod, has_shp, signed_by, is_return;
        unsigned weight_i, weight_f;
};

static void
ptrk_new(struct ptrk *p, size_t serial, uint64_t run_hi, uint64_t *r)
{
        int64_t t0 = 1722470400 + (int64_t)below(r, 120 * 86400); /* Aug-Nov 2024 */
        uint64_t hi = splitmix(r), lo = splitmix(r);

        p->cr = &carriers[below(r, ARRAY_LEN(carriers))];
        p->from = pick_place(p->cr, r);
        p->to = pick_place(p->cr, r);
        trk_id(p->trk, sizeof(p->trk), run_hi, serial);
        hex_id(p->shp, sizeof(p->shp), "shp_", hi, lo);
        tracking_code(p->code, sizeof(p->code), p->cr->kind, r);
        /* 8-14 details, the last two out for delivery and delivered */
        p->total = make_steps(p->st, ARRAY_LEN(p->st), p->cr, p->from, p->to, t0, 8 + below(r, 7),
                              true, r);
        p->shown = 0;
        fmt_time(p->tc, sizeof(p->tc), t0 - 60 - below(r, 3600), -1);
        int64_t eta = (t0 / 86400 + 3 + below(r, 4)) * 86400;
        fmt_time(p->est, sizeof(p->est), eta, -1);
        fmt_date(p->estd, sizeof(p->estd), eta);
        public_token(p->b64, sizeof(p->b64), p->trk);
        p->prod = below(r, 10) != 0;
        p->signed_by = below(r, 2) == 0;
        p->weight_i = 1 + below(r, 800);
        p->weight_f = below(r, 10);
        p->has_shp = below(r, 5) != 0;
        p->is_return = below(r, 20) == 0;
}

/* The tracker's next detail arrives: one tracker.updated carrying the whole
 * history so far; tracker and event updated_at are that detail's datetime. */
static void
gen_progress(struct arena *a, struct msg *m, size_t i, uint64_t run_hi, const char *user_id,
             struct ptrk *p)
{
        char tu[40];
        size_t start = a->len;

        p->shown++;
        evt_id(m->id, sizeof(m->id), run_hi, i);
        fmt_time(tu, sizeof(tu), p->st[p->shown - 1].t, -1);
        struct tview v = {
                .cr = p->cr, .from = p->from, .to = p->to, .st = p->st, .n = p->shown,
                .evt = m->id, .user_id = user_id, .trk = p->trk, .shp = p->has_shp ? p->shp : NULL,
                .code = p->code, .b64 = p->b64, .ev_time = tu, .tc = p->tc, .tu = tu,
                .est = p->est, .estd = p->estd, .prod = p->prod, .signed_by = p->signed_by,
                .is_return = p->is_return, .weight_i = p->weight_i, .weight_f = p->weight_f,
        };
        put_tracker_event(a, &v);
        m->off = start;
        m->len = (uint32_t)(a->len - start);
}

/* A non-tracker event (batch.created / batch.updated / scan_form.created),
 * modelled on the EasyPost documentation payloads: its result id is no trk_. */
static void
gen_other(struct arena *a, struct msg *m, size_t i, uint64_t run_hi, const char *user_id,
          uint64_t *r)
{
        unsigned kind = below(r, 3), ns = 1 + below(r, 12);
        int64_t t = 1722470400 + (int64_t)below(r, 120 * 86400);
        bool prod = below(r, 10) != 0;
        const char *mode = prod ? "production" : "test";
        char tc[40], tu[40], batch[48], obj[48];
        size_t start = a->len;

        evt_id(m->id, sizeof(m->id), run_hi, i);
        fmt_time(tc, sizeof(tc), t, -1);
        fmt_time(tu, sizeof(tu), t + 2 + below(r, 600), -1);
        hex_id(batch, sizeof(batch), "batch_", splitmix(r), splitmix(r));
        if (kind < 2) {
                bool upd = kind == 1;
                arena_printf(a,
                             "{\"description\":\"batch.%s\",\"mode\":\"%s\",\"previous_attributes\":"
                             "{\"state\":\"%s\"},\"created_at\":\"%s\",\"pending_urls\":"
                             "[\"https://hooks.example.com/easypost\"],\"completed_urls\":[],"
                             "\"updated_at\":\"%s\",\"id\":\"%s\",\"user_id\":\"%s\","
                             "\"status\":\"pending\",\"object\":\"Event\",\"result\":{\"id\":\"%s\","
                             "\"object\":\"Batch\",\"mode\":\"%s\",\"state\":\"%s\","
                             "\"num_shipments\":%u,\"reference\":null,\"created_at\":\"%s\","
                             "\"updated_at\":\"%s\",\"scan_form\":null,\"shipments\":[",
                             upd ? "updated" : "created", mode,
                             upd ? "label_generating" : "purchasing", tu, tu, m->id, user_id, batch,
                             mode, upd ? "label_generated" : "purchased", ns, tc, tu);
                for (unsigned k = 0; k < ns; k++) {
                        uint64_t hi = splitmix(r), lo = splitmix(r);
                        hex_id(obj, sizeof(obj), "shp_", hi, lo);
                        arena_printf(a,
                                     "%s{\"batch_status\":\"postage_purchased\",\"batch_message\":null,"
                                     "\"id\":\"%s\"}",
                                     k ? "," : "", obj);
                }
                arena_printf(a,
                             "],\"status\":{\"created\":0,\"queued_for_purchase\":0,"
                             "\"creation_failed\":0,\"postage_purchased\":%u,"
                             "\"postage_purchase_failed\":0},\"pickup\":null,\"label_url\":",
                             ns);
                if (upd)
                        arena_printf(a, "\"https://easypost-files.s3-us-west-2.amazonaws.com/files/"
                                        "batch/%s.pdf\"}}",
                                     batch + 6);
                else
                        arena_printf(a, "null}}");
        } else {
                const struct place *p = &places[below(r, 16)];
                uint64_t hi = splitmix(r), lo = splitmix(r);
                hex_id(obj, sizeof(obj), "sf_", hi, lo);
                arena_printf(a,
                             "{\"result\":{\"id\":\"%s\",\"object\":\"ScanForm\",\"created_at\":\"%s\","
                             "\"updated_at\":\"%s\",\"tracking_codes\":[",
                             obj, tc, tu);
                for (unsigned k = 0; k < ns; k++) {
                        char code[48];
                        tracking_code(code, sizeof(code), CODE_USPS, r);
                        arena_printf(a, "%s\"%s\"", k ? "," : "", code);
                }
                hi = splitmix(r);
                arena_printf(a,
                             "],\"address\":{\"id\":\"adr_%016" PRIx64 "\",\"object\":\"Address\","
                             "\"created_at\":\"%s\",\"updated_at\":\"%s\",\"name\":\"Shipping Dept\","
                             "\"company\":\"Example Goods\",\"street1\":\"%u Commerce Way\","
                             "\"street2\":null,\"city\":\"%s\",\"state\":\"%s\",\"zip\":\"%s\","
                             "\"country\":\"%s\",\"phone\":null,\"email\":null,\"mode\":\"%s\","
                             "\"carrier_facility\":null,\"residential\":null,\"federal_tax_id\":null,"
                             "\"state_tax_id\":null,\"verifications\":{}},\"status\":\"created\","
                             "\"message\":null,\"form_url\":\"https://easypost-files.s3-us-west-2."
                             "amazonaws.com/files/scan_form/%s.pdf\",\"form_file_type\":null,"
                             "\"batch_id\":\"%s\",\"confirmation\":null},"
                             "\"description\":\"scan_form.created\",\"mode\":\"%s\","
                             "\"previous_attributes\":{},\"created_at\":\"%s\",\"pending_urls\":[],"
                             "\"completed_urls\":[\"https://hooks.example.com/easypost\"],"
                             "\"updated_at\":\"%s\",\"id\":\"%s\",\"user_id\":\"%s\","
                             "\"status\":\"in_queue\",\"object\":\"Event\"}",
                             hi, tc, tc, 1 + below(r, 9000), p->city, p->state, p->zip, p->country,
                             mode, obj + 3, batch, mode, tu, tu, m->id, user_id);
        }
        m->off = start;
        m->len = (uint32_t)(a->len - start);
}

/*
 * The progressive stream: K trackers advance in turn, each delivery one more
 * detail; a delivered tracker is replaced by a new id starting at 1 detail.
 * The first K start at a random point of their planned history (the stream
 * was running before the benchmark joined it), so body sizes and the share
 * of new trackers are the same from the first event to the last. About 3 %
 * are other events and 2 % exact redeliveries of one of the last 1,000.
 */
static void
gen_progressive(struct lg *g, struct arena *a, uint64_t run_hi, const char *user_id, uint64_t *r)
{
        size_t k = g->o.trackers, rr = 0, serial = 0;
        struct ptrk *tr = xcalloc(k, sizeof(*tr));

        for (size_t j = 0; j < k; j++) {
                ptrk_new(&tr[j], serial++, run_hi, r);
                tr[j].shown = below(r, tr[j].total);
        }
        for (size_t i = 0; i < g->n; i++) {
                struct msg *m = &g->msgs[i];
                unsigned u = below(r, 100);

                m->dup_of = LG_NONE;
                if (u < 2 && i > 0) {
                        size_t j = i - 1 - below(r, (unsigned)(i < 1000 ? i : 1000));
                        if (g->msgs[j].dup_of != LG_NONE)
                                j = g->msgs[j].dup_of;
                        *m = g->msgs[j];
                        m->dup_of = j;
                        g->redeliveries++;
                } else if (u < 5) {
                        gen_other(a, m, i, run_hi, user_id, r);
                        g->others++;
                } else {
                        struct ptrk *p = &tr[rr];
                        rr = (rr + 1) % k;
                        gen_progress(a, m, i, run_hi, user_id, p);
                        if (p->shown == p->total)
                                ptrk_new(p, serial++, run_hi, r);
                }
        }
        g->tracker_ids = serial;
        free(tr);
}

/* Generates and signs all events; returns 0, or -1 with err when the secret is unusable. */
static int
gen_all(struct lg *g, struct err *e)
{
        struct arena a = { 0 };
        uint64_t r = g->o.seed, run_hi;
        char user_id[40];
        const char *secrets[1] = { g->o.secret };
        struct sig_keyset *ks = sig_keyset_new(secrets, 1, e);

        if (ks == NULL)
                return -1;
        if (g->o.seeded) {
                run_hi = splitmix(&r);
        } else {
                random_fill(&run_hi, sizeof(run_hi));
                random_fill(&r, sizeof(r));
        }
        /* the same seed in the other profile must not reuse its event ids with other bodies */
        if (g->o.profile == PROFILE_PROGRESSIVE)
                run_hi = mix64(run_hi ^ 0x70726f6772657373ULL);
        hex_id(user_id, sizeof(user_id), "user_", mix64(run_hi + 7), mix64(run_hi + 8));
        a.cap = g->n * 4500 + 4096;
        a.p = xmalloc(a.cap);
        g->msgs = xcalloc(g->n, sizeof(*g->msgs));
        if (g->o.profile == PROFILE_PROGRESSIVE) {
                gen_progressive(g, &a, run_hi, user_id, &r);
        } else {
                for (size_t i = 0; i < g->n; i++) {
                        g->msgs[i].dup_of = LG_NONE;
                        gen_event(&a, &g->msgs[i], i, run_hi, user_id, &r);
                }
                g->tracker_ids = g->n;
        }
        for (size_t i = 0; i < g->n; i++) {
                struct msg *m = &g->msgs[i];
                if (m->dup_of != LG_NONE) /* a redelivery: same bytes, same signature */
                        memcpy(m->sig, g->msgs[m->dup_of].sig, sizeof(m->sig));
                else
                        sig_sign(ks, 0, a.p + m->off, m->len, m->sig);
                g->distinct += m->dup_of == LG_NONE;
        }
        sig_keyset_free(ks);
        g->arena = a.p;
        g->arena_len = a.len;
        return 0;
}

/* ---- latency bookkeeping ---- */

/* Log-linear buckets (1/64 relative precision) for the per-second progress line;
 * the final figures come from the exact, sorted array instead. */
static unsigned
hist_index(uint64_t us)
{
        if (us < 128)
                return (unsigned)us;
        unsigned b = 63 - (unsigned)__builtin_clzll(us);
        unsigned shift = b - 6;
        unsigned idx = 128 + (b - 7) * 64 + (unsigned)((us >> shift) - 64);
        return idx < LG_HIST_N ? idx : LG_HIST_N - 1;
}

static uint64_t
hist_value(unsigned idx)
{
        if (idx < 128)
                return idx;
        unsigned b = (idx - 128) / 64 + 7;
        return (uint64_t)(64 + (idx - 128) % 64) << (b - 6);
}

static double
hist_quantile_ms(const struct lg *g, double q)
{
        uint64_t want, cum = 0;

        if (g->nhist == 0)
                return 0;
        want = (uint64_t)ceil(q * (double)g->nhist);
        if (want == 0)
                want = 1;
        for (unsigned i = 0; i < LG_HIST_N; i++) {
                cum += g->hist[i];
                if (cum >= want)
                        return (double)hist_value(i) / 1000.0;
        }
        return 0;
}

static void
lat_add(struct lg *g, uint64_t us)
{
        if (g->nlat == g->lat_cap) {    /* only retries can outgrow the preallocated array */
                g->lat_cap *= 2;
                g->lat = xrealloc(g->lat, g->lat_cap * sizeof(*g->lat));
        }
        g->lat[g->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        g->hist[hist_index(us)]++;
        g->nhist++;
}

static int
cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile over the sorted array, in ms. */
static double
pct_ms(const struct lg *g, double q)
{
        if (g->nlat == 0)
                return 0;
        size_t rank = (size_t)ceil(q * (double)g->nlat);
        if (rank == 0)
                rank = 1;
        return (double)g->lat[rank - 1] / 1000.0;
}

/* ---- /proc sampling of the daemon and PostgreSQL ---- */

static long
proc_rss_kb(long pid)
{
        char path[64], line[256];
        long kb = -1;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%ld/status", pid);
        if ((f = fopen(path, "r")) == NULL)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld", &kb) == 1)
                        break;
        fclose(f);
        return kb;
}

/* utime+stime (+ cutime+cstime when children) in clock ticks; *ppid is filled. */
static long long
proc_ticks(long pid, bool children, long *ppid)
{
        char path[64], buf[1024];
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        if ((f = fopen(path, "r")) == NULL)
                return -1;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')'); /* the command name may contain spaces */
        if (p == NULL)
                return -1;
        long pp = 0;
        unsigned long long ut = 0, stm = 0;
        long long cut = 0, cst = 0;
        if (sscanf(p + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &pp,
                   &ut, &stm, &cut, &cst) != 5)
                return -1;
        if (ppid)
                *ppid = pp;
        return (long long)(ut + stm) + (children ? cut + cst : 0);
}

/*
 * CPU of a process tree one level deep (the postmaster and its backends):
 * live children count their own time, exited ones are in the root's cutime,
 * so a backend that ends mid-run is neither lost nor counted twice.
 */
static long long
tree_ticks(long root)
{
        long long sum = proc_ticks(root, true, NULL);
        DIR *d;
        struct dirent *de;

        if (sum < 0 || (d = opendir("/proc")) == NULL)
                return -1;
        while ((de = readdir(d)) != NULL) {
                char *end;
                long pid = strtol(de->d_name, &end, 10);
                long pp = 0;
                if (*end != '\0' || pid <= 0 || pid == root)
                        continue;
                long long t = proc_ticks(pid, true, &pp);
                if (t >= 0 && pp == root)
                        sum += t;
        }
        closedir(d);
        return sum;
}

static void
watch_begin(struct lg *g)
{
        struct watch *w = &g->w;

        getrusage(RUSAGE_SELF, &g->ru0);
        if (w->pid > 0) {
                w->cpu0 = proc_ticks(w->pid, false, NULL);
                w->rss0_kb = w->rss_peak_kb = proc_rss_kb(w->pid);
        }
        if (w->pg_pid > 0)
                w->pg0 = tree_ticks(w->pg_pid);
}

static void
watch_end(struct lg *g)
{
        struct watch *w = &g->w;
        long kb;

        getrusage(RUSAGE_SELF, &g->ru1);
        if (w->pid > 0) {
                w->cpu1 = proc_ticks(w->pid, false, NULL);
                if ((kb = proc_rss_kb(w->pid)) > w->rss_peak_kb)
                        w->rss_peak_kb = kb;
        }
        if (w->pg_pid > 0)
                w->pg1 = tree_ticks(w->pg_pid);
}

static double
watch_pct(long long t0, long long t1, double secs)
{
        if (t0 < 0 || t1 < 0 || secs <= 0)
                return -1;
        return 100.0 * (double)(t1 - t0) / (double)sysconf(_SC_CLK_TCK) / secs;
}

/* CPU seconds between the two samples, -1 when unknown. */
static double
watch_secs(long long t0, long long t1)
{
        if (t0 < 0 || t1 < 0)
                return -1;
        return (double)(t1 - t0) / (double)sysconf(_SC_CLK_TCK);
}

static void
sampler_cb(evutil_socket_t fd, short what, void *arg)
{
        struct lg *g = arg;
        long kb = proc_rss_kb(g->w.pid);

        (void)fd;
        (void)what;
        if (kb > g->w.rss_peak_kb)
                g->w.rss_peak_kb = kb;
}

/* ---- the request engine ---- */

static void
conn_put(struct lg *g, struct conn *c)
{
        c->msg = LG_NONE;
        c->next_free = g->free_list;
        g->free_list = c;
        g->nfree++;
}

static struct conn *
conn_take(struct lg *g)
{
        struct conn *c = g->free_list;

        if (c) {
                g->free_list = c->next_free;
                g->nfree--;
        }
        return c;
}

static void finish(struct lg *g, struct conn *c, int code, uint64_t now);

static void
req_error_cb(enum evhttp_request_error err, void *arg)
{
        struct conn *c = arg;

        c->err = (int)err;
}

static void
req_done_cb(struct evhttp_request *req, void *arg)
{
        struct conn *c = arg;
        int code = req ? evhttp_request_get_response_code(req) : 0;

        finish(c->g, c, code, clock_mono_us());
}

static void
close_cb(struct evhttp_connection *evcon, void *arg)
{
        struct conn *c = arg;

        (void)evcon;
        if (!c->g->stopping || c->g->inflight)
                c->g->closes++;
}

/* Sends message m on the free connection c; t0 is where its latency starts. */
static void
send_msg(struct lg *g, struct conn *c, size_t m, uint64_t t0)
{
        struct msg *msg = &g->msgs[m];
        struct evhttp_request *req = evhttp_request_new(req_done_cb, c);
        struct evkeyvalq *h;

        if (req == NULL)
                abort(); /* only fails when out of memory: our OOM policy */
        h = evhttp_request_get_output_headers(req);
        evhttp_request_set_error_cb(req, req_error_cb);
        evhttp_add_header(h, "Host", g->host_header);
        evhttp_add_header(h, "User-Agent", LG_USER_AGENT);
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "X-Hmac-Signature", msg->sig);
        /* the arena outlives every request, so libevent may reference it without a copy */
        evbuffer_add_reference(evhttp_request_get_output_buffer(req), g->arena + msg->off, msg->len,
                               NULL, NULL);
        c->msg = m;
        c->t0_us = t0;
        c->err = -1;
        msg->attempts++;
        if (msg->attempts > 1)
                g->retries++;
        g->sent++;
        g->inflight++;
        if (evhttp_make_request(c->evcon, req, EVHTTP_REQ_POST, g->path) != 0)
                finish(g, c, 0, clock_mono_us()); /* libevent has disposed of req */
}

static void
stop_fresh(struct lg *g)
{
        g->limit = g->next;
        g->released = g->next;
}

static void
retry_push(struct lg *g, size_t m, uint64_t due)
{
        size_t tail = (g->rq_head + g->rq_len) % g->n;

        g->rq_idx[tail] = m;
        g->rq_due[tail] = due;
        g->rq_len++;
}

static void
finish(struct lg *g, struct conn *c, int code, uint64_t now)
{
        struct msg *m = &g->msgs[c->msg];
        size_t idx = c->msg;

        g->inflight--;
        g->t_end = now;
        if (code > 0) {
                lat_add(g, now - c->t0_us);
                g->status_count[code < 600 ? code : 599]++;
                m->status = (uint16_t)code;
                if (code >= 200 && code < 300) {
                        g->ok++;
                        m->ok = true;
                } else {
                        g->non2xx++;
                }
        } else {
                m->status = 0;
                g->errors++;
                g->err_kind[c->err >= 0 && c->err < LG_NERR - 1 ? c->err : LG_NERR - 1]++;
        }
        conn_put(g, c);
        if (!m->ok && g->o.retry && !g->stopping)
                retry_push(g, idx, now + LG_RETRY_DELAY_US);
        event_active(g->pump, EV_TIMEOUT, 0);
}

/* Done when every fresh event has started, nothing is in flight, and no
 * resend is left (or the resend window, which opens with the last fresh
 * send so that endless 503s cannot keep us here, has closed). */
static bool
all_done(struct lg *g, uint64_t now)
{
        if (g->next < g->limit)
                return false;
        if (g->retry_until == UINT64_MAX)
                g->retry_until = now + (uint64_t)(g->o.retry_window * 1e6);
        if (g->inflight > 0)
                return false;
        return g->rq_len == 0 || now >= g->retry_until || g->stopping;
}

static void
pump(struct lg *g)
{
        uint64_t now = clock_mono_us();
        struct conn *c;

        if (g->o.duration > 0 && now - g->t_start >= (uint64_t)(g->o.duration * 1e6))
                stop_fresh(g);
        if (g->o.rate > 0) {
                double due_d = (double)(now - g->t_start) * g->o.rate / 1e6 + 1;
                size_t due = due_d >= (double)g->limit ? g->limit : (size_t)due_d;
                while (g->released < due) {
                        size_t k = g->released++;
                        if (g->next == k && (c = conn_take(g)) != NULL)
                                send_msg(g, c, g->next++, now);
                        else
                                g->late++;
                }
        }
        while (g->free_list) {
                if (g->o.rate > 0 && g->next < g->released) {
                        /* late: its latency runs from when it should have started */
                        uint64_t sched = g->t_start + (uint64_t)((double)g->next * 1e6 / g->o.rate);
                        c = conn_take(g);
                        send_msg(g, c, g->next++, sched);
                } else if (g->rq_len > 0 && g->rq_due[g->rq_head] <= now &&
                           (g->retry_until == UINT64_MAX || now < g->retry_until) && !g->stopping) {
                        size_t m = g->rq_idx[g->rq_head];
                        g->rq_head = (g->rq_head + 1) % g->n;
                        g->rq_len--;
                        c = conn_take(g);
                        send_msg(g, c, m, now);
                } else if (g->o.rate <= 0 && g->next < g->limit) {
                        c = conn_take(g);
                        send_msg(g, c, g->next++, now);
                } else {
                        break;
                }
        }
        if (all_done(g, now))
                event_base_loopbreak(g->base);
}

static void
pump_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        pump(arg);
}

static void
progress_cb(evutil_socket_t fd, short what, void *arg)
{
        struct lg *g = arg;
        uint64_t now = clock_mono_us();
        uint64_t done = g->ok + g->non2xx + g->errors;
        double dt = (double)(now - g->t_last_progress) / 1e6;

        (void)fd;
        (void)what;
        fprintf(stderr,
                "[%6.1fs] sent=%" PRIu64 " 2xx=%" PRIu64 " non2xx=%" PRIu64 " err=%" PRIu64
                " rate=%.0f/s p50=%.2fms p99=%.2fms inflight=%zu late=%" PRIu64 "\n",
                (double)(now - g->t_start) / 1e6, g->sent, g->ok, g->non2xx, g->errors,
                dt > 0 ? (double)(done - g->prog_done) / dt : 0.0, hist_quantile_ms(g, 0.50),
                hist_quantile_ms(g, 0.99), g->inflight, g->late);
        g->prog_done = done;
        g->t_last_progress = now;
}

static void
sigint_cb(evutil_socket_t fd, short what, void *arg)
{
        struct lg *g = arg;

        (void)fd;
        (void)what;
        if (g->stopping) {
                fprintf(stderr, "loadgen: second interrupt, abandoning %zu requests\n", g->inflight);
                event_base_loopbreak(g->base);
                return;
        }
        fprintf(stderr, "loadgen: interrupted, waiting for %zu requests in flight\n", g->inflight);
        g->stopping = true;
        stop_fresh(g);
        g->rq_len = 0;
        event_active(g->pump, EV_TIMEOUT, 0);
}

/* ---- the database check ---- */

static void
md5_hex(const void *p, size_t n, char out[33])
{
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;

        EVP_Digest(p, n, d, &dl, EVP_md5(), NULL);
        for (unsigned i = 0; i < 16; i++)
                snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/*
 * Folds redeliveries into the message they repeat: per distinct event id,
 * bit 0 = sent at least once, bit 1 = answered 2xx at least once.
 */
static unsigned char *
distinct_state(const struct lg *g)
{
        unsigned char *st = xcalloc(g->n ? g->n : 1, 1);

        for (size_t i = 0; i < g->n; i++) {
                const struct msg *m = &g->msgs[i];
                size_t root = m->dup_of == LG_NONE ? i : m->dup_of;
                st[root] |= (m->attempts > 0 ? 1 : 0) | (m->ok ? 2 : 0);
        }
        return st;
}

/*
 * One round trip: the distinct ids, their 2xx flag and body md5 go in as three arrays;
 * a lateral count per id finds lost (2xx but absent), duplicated, altered
 * and "extra" rows (committed although we never saw a 2xx, e.g. a 503 on
 * the commit deadline whose commit landed later: harmless, the retry dedups).
 */
static int
db_check(struct lg *g, struct db_result *res)
{
        static const char sql[] =
                "SELECT count(*),"
                "       count(*) FILTER (WHERE s.n >= 1),"
                "       count(*) FILTER (WHERE e.ok AND s.n = 0),"
                "       count(*) FILTER (WHERE s.n > 1),"
                "       count(*) FILTER (WHERE s.bad > 0),"
                "       count(*) FILTER (WHERE NOT e.ok AND s.n >= 1)"
                "  FROM unnest($1::text[], $2::bool[], $3::text[]) AS e(id, ok, md5)"
                "  CROSS JOIN LATERAL (SELECT count(*) AS n,"
                "                             count(*) FILTER (WHERE md5(w.raw) <> e.md5) AS bad"
                "                        FROM webhook_events w WHERE w.event_id = e.id) s";
        static const char lost_sql[] =
                "SELECT e.id FROM unnest($1::text[], $2::bool[]) AS e(id, ok)"
                " WHERE e.ok AND NOT EXISTS (SELECT 1 FROM webhook_events w WHERE w.event_id = e.id)"
                " ORDER BY 1 LIMIT 10";
        PGconn *pq = PQconnectdb(g->o.db);
        PGresult *r = NULL;
        size_t cnt = 0;
        int rc = -1;

        if (PQstatus(pq) != CONNECTION_OK) {
                fprintf(stderr, "loadgen: db check: %s", PQerrorMessage(pq));
                goto out;
        }
        unsigned char *st = distinct_state(g);
        for (size_t i = 0; i < g->n; i++)
                cnt += (st[i] & 1) != 0;
        char *ids = xmalloc(cnt * 38 + 3), *oks = xmalloc(cnt * 2 + 3), *mds = xmalloc(cnt * 33 + 3);
        size_t pi = 0, po = 0, pm = 0;
        ids[pi++] = '{';
        oks[po++] = '{';
        mds[pm++] = '{';
        for (size_t i = 0; i < g->n; i++) {
                const struct msg *m = &g->msgs[i];
                if ((st[i] & 1) == 0) /* never sent, or a redelivery (counted with its original) */
                        continue;
                if (pi > 1) {
                        ids[pi++] = ',';
                        oks[po++] = ',';
                        mds[pm++] = ',';
                }
                size_t l = strlen(m->id);
                memcpy(ids + pi, m->id, l);
                pi += l;
                oks[po++] = st[i] & 2 ? 't' : 'f';
                md5_hex(g->arena + m->off, m->len, mds + pm);
                pm += 32;
        }
        ids[pi++] = '}';
        oks[po++] = '}';
        mds[pm++] = '}';
        ids[pi] = oks[po] = mds[pm] = '\0';
        const char *params[3] = { ids, oks, mds };
        r = PQexecParams(pq, sql, 3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                fprintf(stderr, "loadgen: db check: %s", PQerrorMessage(pq));
        } else {
                res->checked = atoll(PQgetvalue(r, 0, 0));
                res->stored = atoll(PQgetvalue(r, 0, 1));
                res->lost = atoll(PQgetvalue(r, 0, 2));
                res->duplicated = atoll(PQgetvalue(r, 0, 3));
                res->mismatched = atoll(PQgetvalue(r, 0, 4));
                res->extra = atoll(PQgetvalue(r, 0, 5));
                res->done = true;
                rc = 0;
        }
        PQclear(r);
        if (rc == 0 && res->lost > 0) {
                r = PQexecParams(pq, lost_sql, 2, NULL, params, NULL, NULL, 0);
                if (PQresultStatus(r) == PGRES_TUPLES_OK)
                        for (int i = 0; i < PQntuples(r); i++)
                                fprintf(stderr, "loadgen: lost: %s\n", PQgetvalue(r, i, 0));
                PQclear(r);
        }
        free(ids);
        free(oks);
        free(mds);
        free(st);
out:
        PQfinish(pq);
        return rc;
}

/* ---- reporting ---- */

static const char *const err_names[LG_NERR] = { "timeout", "eof", "invalid_header", "buffer_error",
                                                 "cancel", "too_long", "connect" };

static void
report(FILE *f, struct lg *g, const struct db_result *db, double secs)
{
        size_t minlen = SIZE_MAX, maxlen = 0;
        double total = 0;
        double lgcpu = (double)(g->ru1.ru_utime.tv_sec - g->ru0.ru_utime.tv_sec +
                                g->ru1.ru_stime.tv_sec - g->ru0.ru_stime.tv_sec) +
                       (double)(g->ru1.ru_utime.tv_usec - g->ru0.ru_utime.tv_usec +
                                g->ru1.ru_stime.tv_usec - g->ru0.ru_stime.tv_usec) / 1e6;

        for (size_t i = 0; i < g->n; i++) {
                size_t l = g->msgs[i].len;
                minlen = l < minlen ? l : minlen;
                maxlen = l > maxlen ? l : maxlen;
                total += (double)l;
        }
        if (g->o.rate > 0)
                fprintf(f, "loadgen: open loop, %.0f events/s on up to %u connections", g->o.rate,
                        g->o.conns);
        else
                fprintf(f, "loadgen: closed loop, %u connections", g->o.conns);
        fprintf(f, ", %zu events (%.1f-%.1f KB, mean %.2f KB) to %s\n", g->n, (double)minlen / 1024,
                (double)maxlen / 1024, total / (double)g->n / 1024, g->o.url);
        if (g->o.profile == PROFILE_PROGRESSIVE)
                fprintf(f, "  profile      progressive: %zu trackers in turn, %zu tracker ids, "
                           "%zu other events, %zu redeliveries, %zu distinct event ids\n",
                        g->o.trackers, g->tracker_ids, g->others, g->redeliveries, g->distinct);
        else
                fprintf(f, "  profile      unique: every event a new tracker\n");
        fprintf(f, "  duration     %.2f s\n", secs);
        fprintf(f, "  throughput   %.1f 2xx/s   (sent %" PRIu64 ", 2xx %" PRIu64 ", non-2xx %" PRIu64
                   ", errors %" PRIu64 ", retries %" PRIu64 ", late %" PRIu64 ")\n",
                secs > 0 ? (double)g->ok / secs : 0.0, g->sent, g->ok, g->non2xx, g->errors,
                g->retries, g->late);
        fprintf(f, "  latency ms   p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (%zu answers)\n",
                pct_ms(g, 0.50), pct_ms(g, 0.90), pct_ms(g, 0.99), pct_ms(g, 0.999),
                pct_ms(g, 1.0), g->nlat);
        fprintf(f, "  status      ");
        for (int s = 0; s < 600; s++)
                if (g->status_count[s])
                        fprintf(f, " %d=%" PRIu64, s, g->status_count[s]);
        fprintf(f, "%s\n", g->nlat ? "" : " none");
        fprintf(f, "  errors      ");
        for (int k = 0; k < LG_NERR; k++)
                fprintf(f, " %s=%" PRIu64, err_names[k], g->err_kind[k]);
        fprintf(f, "  (connection closes %" PRIu64 ")\n", g->closes);
        fprintf(f, "  loadgen cpu  %.0f %%\n", secs > 0 ? 100.0 * lgcpu / secs : 0.0);
        if (g->w.pid > 0)
                fprintf(f, "  daemon       cpu %.0f %% (%.2f s)  rss %.1f MB at start, peak %.1f MB\n",
                        watch_pct(g->w.cpu0, g->w.cpu1, secs), watch_secs(g->w.cpu0, g->w.cpu1),
                        (double)g->w.rss0_kb / 1024, (double)g->w.rss_peak_kb / 1024);
        if (g->w.pg_pid > 0)
                fprintf(f, "  postgres     cpu %.0f %% (%.2f s)\n", watch_pct(g->w.pg0, g->w.pg1, secs),
                        watch_secs(g->w.pg0, g->w.pg1));
        if (db->done)
                fprintf(f, "  db check     checked=%lld stored=%lld lost=%lld duplicated=%lld "
                           "mismatched=%lld extra=%lld\n",
                        db->checked, db->stored, db->lost, db->duplicated, db->mismatched, db->extra);
        else if (g->o.db)
                fprintf(f, "  db check     FAILED to run\n");
        else
                fprintf(f, "  db check     skipped (no --db)\n");
}

static int
write_json(const char *path, struct lg *g, const struct db_result *db, double secs)
{
        FILE *f = fopen(path, "w");
        bool first = true;

        if (f == NULL) {
                fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
                return -1;
        }
        /* one key per line: bench/run.sh reads it with sed, no jq needed */
        fprintf(f, "{\n");
        fprintf(f, "  \"label\": \"");
        for (const char *p = g->o.label ? g->o.label : ""; *p; p++)
                fputc(*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 ? '_' : *p, f);
        fprintf(f, "\",\n");
        fprintf(f, "  \"mode\": \"%s\",\n", g->o.rate > 0 ? "open" : "closed");
        fprintf(f, "  \"profile\": \"%s\",\n", profile_names[g->o.profile]);
        /* unique: every event is its own tracker */
        fprintf(f, "  \"trackers\": %zu,\n",
                g->o.profile == PROFILE_PROGRESSIVE ? g->o.trackers : g->n);
        fprintf(f, "  \"tracker_ids\": %zu,\n", g->tracker_ids);
        fprintf(f, "  \"connections\": %u,\n", g->o.conns);
        fprintf(f, "  \"rate\": %.0f,\n", g->o.rate);
        fprintf(f, "  \"events\": %zu,\n", g->n);
        fprintf(f, "  \"distinct_events\": %zu,\n", g->distinct);
        fprintf(f, "  \"redeliveries\": %zu,\n", g->redeliveries);
        fprintf(f, "  \"other_events\": %zu,\n", g->others);
        fprintf(f, "  \"sent\": %" PRIu64 ",\n", g->sent);
        fprintf(f, "  \"ok\": %" PRIu64 ",\n", g->ok);
        fprintf(f, "  \"non2xx\": %" PRIu64 ",\n", g->non2xx);
        fprintf(f, "  \"errors\": %" PRIu64 ",\n", g->errors);
        fprintf(f, "  \"retries\": %" PRIu64 ",\n", g->retries);
        fprintf(f, "  \"late\": %" PRIu64 ",\n", g->late);
        fprintf(f, "  \"closes\": %" PRIu64 ",\n", g->closes);
        fprintf(f, "  \"duration_s\": %.3f,\n", secs);
        fprintf(f, "  \"throughput\": %.1f,\n", secs > 0 ? (double)g->ok / secs : 0.0);
        fprintf(f, "  \"p50_ms\": %.3f,\n", pct_ms(g, 0.50));
        fprintf(f, "  \"p90_ms\": %.3f,\n", pct_ms(g, 0.90));
        fprintf(f, "  \"p99_ms\": %.3f,\n", pct_ms(g, 0.99));
        fprintf(f, "  \"p999_ms\": %.3f,\n", pct_ms(g, 0.999));
        fprintf(f, "  \"max_ms\": %.3f,\n", pct_ms(g, 1.0));
        fprintf(f, "  \"db_checked\": %s,\n", db->done ? "true" : "false");
        fprintf(f, "  \"stored\": %lld,\n", db->stored);
        fprintf(f, "  \"lost\": %lld,\n", db->done ? db->lost : -1LL);
        fprintf(f, "  \"duplicated\": %lld,\n", db->duplicated);
        fprintf(f, "  \"mismatched\": %lld,\n", db->mismatched);
        fprintf(f, "  \"extra\": %lld,\n", db->extra);
        fprintf(f, "  \"daemon_cpu_pct\": %.1f,\n",
                g->w.pid > 0 ? watch_pct(g->w.cpu0, g->w.cpu1, secs) : -1.0);
        fprintf(f, "  \"daemon_rss_start_kb\": %ld,\n", g->w.pid > 0 ? g->w.rss0_kb : -1L);
        fprintf(f, "  \"daemon_rss_peak_kb\": %ld,\n", g->w.pid > 0 ? g->w.rss_peak_kb : -1L);
        fprintf(f, "  \"daemon_cpu_s\": %.2f,\n",
                g->w.pid > 0 ? watch_secs(g->w.cpu0, g->w.cpu1) : -1.0);
        fprintf(f, "  \"pg_cpu_pct\": %.1f,\n",
                g->w.pg_pid > 0 ? watch_pct(g->w.pg0, g->w.pg1, secs) : -1.0);
        fprintf(f, "  \"pg_cpu_s\": %.2f,\n", g->w.pg_pid > 0 ? watch_secs(g->w.pg0, g->w.pg1) : -1.0);
        fprintf(f, "  \"status\": {");
        for (int s = 0; s < 600; s++) {
                if (g->status_count[s]) {
                        fprintf(f, "%s\"%d\": %" PRIu64, first ? "" : ", ", s, g->status_count[s]);
                        first = false;
                }
        }
        fprintf(f, "}\n}\n");
        if (fclose(f) != 0) {
                fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
                return -1;
        }
        return 0;
}

/* ---- setup ---- */

/* --dump-dir: every body in its own file and an index of ids and signatures,
 * so that another client (curl, a test script) sends exactly these events. */
static int
dump_all(struct lg *g)
{
        char path[4096];
        FILE *idx;

        snprintf(path, sizeof(path), "%s/events.txt", g->o.dump_dir);
        if ((idx = fopen(path, "w")) == NULL) {
                fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
                return -1;
        }
        for (size_t i = 0; i < g->n; i++) {
                const struct msg *m = &g->msgs[i];
                FILE *f;

                snprintf(path, sizeof(path), "%s/%zu.json", g->o.dump_dir, i);
                if ((f = fopen(path, "w")) == NULL ||
                    fwrite(g->arena + m->off, 1, m->len, f) != m->len || fclose(f) != 0) {
                        fprintf(stderr, "loadgen: %s: %s\n", path, strerror(errno));
                        if (f != NULL)
                                fclose(f);
                        fclose(idx);
                        return -1;
                }
                fprintf(idx, "%zu %s %s\n", i, m->id, m->sig);
        }
        if (fclose(idx) != 0) {
                fprintf(stderr, "loadgen: %s/events.txt: %s\n", g->o.dump_dir, strerror(errno));
                return -1;
        }
        return 0;
}

static void
usage(FILE *f)
{
        fprintf(f,
                "usage: loadgen [options]\n"
                "  -u, --url URL          target (default http://127.0.0.1:8080/webhooks/easypost)\n"
                "  -n, --events N         events to generate and send (default 10000)\n"
                "  -c, --connections C    closed loop: C connections, one request in flight each;\n"
                "                         open loop: pool size (default 32)\n"
                "  -r, --rate R           open loop: start R requests/s whatever the answers\n"
                "  -s, --secret S         webhook secret (default $EASYPOST_WEBHOOK_SECRET)\n"
                "  -d, --duration SECS    stop starting new events after SECS\n"
                "      --db CONNINFO      afterwards check webhook_events in PostgreSQL\n"
                "      --retry            resend events answered non-2xx (250 ms apart)\n"
                "      --retry-window S   give up resending S seconds after the last fresh send (60)\n"
                "      --timeout SECS     per-request timeout (default 30)\n"
                "      --json FILE        write the summary as JSON\n"
                "      --label NAME       run name for the JSON\n"
                "      --seed N           deterministic events (ids included)\n"
                "      --pid PID          sample this process's CPU and RSS (the daemon)\n"
                "      --pg-pid PID       sample CPU of this postmaster and its backends\n"
                "  -q, --quiet            no progress lines\n"
                "      --dump I           print event I (0-based) and its signature header, exit\n"
                "      --dump-dir DIR     write event I to DIR/I.json and \"I id signature\" lines\n"
                "                         to DIR/events.txt, exit (for other clients)\n"
                "      --profile P        unique (default): every event a new tracker with 2-13\n"
                "                         details; progressive: K trackers advance in turn, each\n"
                "                         tracker.updated carrying the history so far plus one\n"
                "                         detail, with ~3 %% other events and ~2 %% redeliveries\n"
                "      --trackers K       progressive: trackers in flight (default n/10, at least 1)\n"
                "exit: 0 ok; 1 lost, duplicated or altered events (or undelivered with --retry);\n"
                "      2 usage, setup or database check failure\n");
}

static int
parse_num(const char *s, double lo, double hi, double *out)
{
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end != '\0' || v < lo || v > hi)
                return -1;
        *out = v;
        return 0;
}

static int
parse_opts(int argc, char **argv, struct opts *o)
{
        static const struct option lopts[] = {
                { "url", required_argument, NULL, 'u' },
                { "events", required_argument, NULL, 'n' },
                { "connections", required_argument, NULL, 'c' },
                { "rate", required_argument, NULL, 'r' },
                { "secret", required_argument, NULL, 's' },
                { "duration", required_argument, NULL, 'd' },
                { "db", required_argument, NULL, 'D' },
                { "retry", no_argument, NULL, 'R' },
                { "retry-window", required_argument, NULL, 'W' },
                { "timeout", required_argument, NULL, 'T' },
                { "json", required_argument, NULL, 'J' },
                { "label", required_argument, NULL, 'L' },
                { "seed", required_argument, NULL, 'S' },
                { "pid", required_argument, NULL, 'P' },
                { "pg-pid", required_argument, NULL, 'G' },
                { "quiet", no_argument, NULL, 'q' },
                { "dump", required_argument, NULL, 'X' },
                { "dump-dir", required_argument, NULL, 'Y' },
                { "profile", required_argument, NULL, 'F' },
                { "trackers", required_argument, NULL, 'K' },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        int ch;
        double v;

        o->url = "http://127.0.0.1:8080/webhooks/easypost";
        o->n = 10000;
        o->conns = 32;
        o->timeout = 30;
        o->retry_window = 60;
        o->dump = -1;
        o->secret = getenv("EASYPOST_WEBHOOK_SECRET");
        while ((ch = getopt_long(argc, argv, "u:n:c:r:s:d:qh", lopts, NULL)) != -1) {
                switch (ch) {
                case 'u':
                        o->url = optarg;
                        break;
                case 'n':
                        if (parse_num(optarg, 1, 50e6, &v) != 0)
                                goto bad;
                        o->n = (size_t)v;
                        break;
                case 'c':
                        if (parse_num(optarg, 1, 20000, &v) != 0)
                                goto bad;
                        o->conns = (unsigned)v;
                        break;
                case 'r':
                        if (parse_num(optarg, 0.001, 10e6, &o->rate) != 0)
                                goto bad;
                        break;
                case 's':
                        o->secret = optarg;
                        break;
                case 'd':
                        if (parse_num(optarg, 0.001, 86400, &o->duration) != 0)
                                goto bad;
                        break;
                case 'D':
                        o->db = optarg;
                        break;
                case 'R':
                        o->retry = true;
                        break;
                case 'W':
                        if (parse_num(optarg, 0, 86400, &o->retry_window) != 0)
                                goto bad;
                        break;
                case 'T':
                        if (parse_num(optarg, 1, 3600, &v) != 0)
                                goto bad;
                        o->timeout = (int)v;
                        break;
                case 'J':
                        o->json = optarg;
                        break;
                case 'L':
                        o->label = optarg;
                        break;
                case 'S':
                        if (parse_num(optarg, 0, 1.8e19, &v) != 0)
                                goto bad;
                        o->seed = (uint64_t)v;
                        o->seeded = true;
                        break;
                case 'P':
                        if (parse_num(optarg, 1, 1e9, &v) != 0)
                                goto bad;
                        o->pid = (long)v;
                        break;
                case 'G':
                        if (parse_num(optarg, 1, 1e9, &v) != 0)
                                goto bad;
                        o->pg_pid = (long)v;
                        break;
                case 'q':
                        o->quiet = true;
                        break;
                case 'X':
                        if (parse_num(optarg, 0, 50e6, &v) != 0)
                                goto bad;
                        o->dump = (long)v;
                        break;
                case 'Y':
                        o->dump_dir = optarg;
                        break;
                case 'F':
                        if (strcmp(optarg, "unique") == 0)
                                o->profile = PROFILE_UNIQUE;
                        else if (strcmp(optarg, "progressive") == 0)
                                o->profile = PROFILE_PROGRESSIVE;
                        else
                                goto bad;
                        break;
                case 'K':
                        if (parse_num(optarg, 1, 50e6, &v) != 0)
                                goto bad;
                        o->trackers = (size_t)v;
                        break;
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        usage(stderr);
                        return -1;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "loadgen: unexpected argument \"%s\"\n", argv[optind]);
                return -1;
        }
        if (o->trackers == 0)
                o->trackers = o->n / 10 > 0 ? o->n / 10 : 1;
        if (o->secret == NULL || o->secret[0] == '\0') {
                fprintf(stderr, "loadgen: no secret: use --secret or EASYPOST_WEBHOOK_SECRET\n");
                return -1;
        }
        return 0;
bad:
        for (const struct option *lo = lopts; lo->name; lo++)
                if (lo->val == ch)
                        fprintf(stderr, "loadgen: bad value \"%s\" for --%s (try --help)\n", optarg,
                                lo->name);
        return -1;
}

static int
parse_url(struct lg *g)
{
        struct evhttp_uri *u = evhttp_uri_parse(g->o.url);
        const char *scheme, *host, *path, *query;
        int rc = -1;

        if (u == NULL)
                goto out;
        scheme = evhttp_uri_get_scheme(u);
        host = evhttp_uri_get_host(u);
        if (scheme == NULL || strcmp(scheme, "http") != 0 || host == NULL || host[0] == '\0')
                goto out;
        g->port = evhttp_uri_get_port(u);
        if (g->port < 0)
                g->port = 80;
        path = evhttp_uri_get_path(u);
        query = evhttp_uri_get_query(u);
        snprintf(g->host, sizeof(g->host), "%s", host);
        if (g->port == 80)
                snprintf(g->host_header, sizeof(g->host_header), "%s", host);
        else
                snprintf(g->host_header, sizeof(g->host_header), "%s:%d", host, g->port);
        snprintf(g->path, sizeof(g->path), "%s%s%s", path && path[0] ? path : "/",
                 query ? "?" : "", query ? query : "");
        rc = 0;
out:
        if (rc != 0)
                fprintf(stderr, "loadgen: %s: only http://host[:port]/path is supported\n", g->o.url);
        if (u)
                evhttp_uri_free(u);
        return rc;
}

static void
add_timer(struct lg *g, struct event **ev, uint64_t us, event_callback_fn cb)
{
        struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };

        *ev = event_new(g->base, -1, EV_PERSIST, cb, g);
        event_add(*ev, &tv);
}

int
main(int argc, char **argv)
{
        struct lg *g = xcalloc(1, sizeof(*g));
        struct db_result db = { 0 };
        struct err e = { 0 };
        int rc = 2;

        if (parse_opts(argc, argv, &g->o) != 0 || parse_url(g) != 0)
                goto out;
        g->n = g->o.n;
        g->w.pid = g->o.pid;
        g->w.pg_pid = g->o.pg_pid;
        signal(SIGPIPE, SIG_IGN);

        uint64_t tg = clock_mono_us();
        if (gen_all(g, &e) != 0) {
                fprintf(stderr, "loadgen: secret: %s\n", e.msg);
                goto out;
        }
        if (g->o.dump >= 0) {
                struct msg *m = &g->msgs[(size_t)g->o.dump < g->n ? (size_t)g->o.dump : g->n - 1];
                if (m->dup_of != LG_NONE)
                        fprintf(stderr, "(a redelivery of event %zu)\n", m->dup_of);
                fprintf(stderr, "X-Hmac-Signature: %s\n", m->sig);
                fwrite(g->arena + m->off, 1, m->len, stdout);
                rc = 0;
                goto out;
        }
        if (g->o.dump_dir != NULL) {
                rc = dump_all(g) == 0 ? 0 : 2;
                goto out;
        }
        if (!g->o.quiet)
                fprintf(stderr, "loadgen: generated and signed %zu events (%.1f MB) in %.2f s\n",
                        g->n, (double)g->arena_len / 1048576.0,
                        (double)(clock_mono_us() - tg) / 1e6);

        g->base = event_base_new();
        if (g->base == NULL) {
                fprintf(stderr, "loadgen: event_base_new failed\n");
                goto out;
        }
        g->lat_cap = g->n;
        g->lat = xmalloc(g->lat_cap * sizeof(*g->lat));
        g->rq_idx = xmalloc(g->n * sizeof(*g->rq_idx));
        g->rq_due = xmalloc(g->n * sizeof(*g->rq_due));
        g->conns = xcalloc(g->o.conns, sizeof(*g->conns));
        for (unsigned i = g->o.conns; i-- > 0;) {
                struct conn *c = &g->conns[i];
                c->g = g;
                c->evcon = evhttp_connection_base_new(g->base, NULL, g->host, (ev_uint16_t)g->port);
                if (c->evcon == NULL) {
                        fprintf(stderr, "loadgen: cannot create a connection to %s\n", g->host);
                        goto out;
                }
                evhttp_connection_set_timeout(c->evcon, g->o.timeout);
                evhttp_connection_set_retries(c->evcon, 0);
                evhttp_connection_set_closecb(c->evcon, close_cb, c);
                conn_put(g, c);
        }
        g->limit = g->n;
        g->retry_until = UINT64_MAX;
        g->pump = event_new(g->base, -1, 0, pump_cb, g);
        g->sigint = evsignal_new(g->base, SIGINT, sigint_cb, g);
        evsignal_add(g->sigint, NULL);

        watch_begin(g);
        g->t_start = g->t_end = g->t_last_progress = clock_mono_us();
        add_timer(g, &g->ticker, g->o.rate > 0 ? LG_OPEN_TICK_US : LG_CLOSED_TICK_US, pump_cb);
        if (!g->o.quiet)
                add_timer(g, &g->progress, 1000000, progress_cb);
        if (g->w.pid > 0)
                add_timer(g, &g->sampler, LG_SAMPLE_US, sampler_cb);
        pump(g);
        event_base_dispatch(g->base);
        watch_end(g);
        g->stopping = true;

        double secs = (double)(g->t_end - g->t_start) / 1e6;
        qsort(g->lat, g->nlat, sizeof(*g->lat), cmp_u32);
        if (g->o.db && db_check(g, &db) != 0)
                rc = 2;
        else
                rc = 0;
        report(stdout, g, &db, secs);
        if (db.done && (db.lost > 0 || db.duplicated > 0 || db.mismatched > 0))
                rc = 1;
        if (g->o.retry) {
                size_t undelivered = 0;
                unsigned char *st = distinct_state(g);
                for (size_t i = 0; i < g->n; i++)
                        undelivered += st[i] == 1; /* sent, never a 2xx */
                free(st);
                fprintf(stdout, "  undelivered  %zu events never answered 2xx\n", undelivered);
                if (undelivered > 0 && rc == 0)
                        rc = 1;
        }
        if (g->o.json && write_json(g->o.json, g, &db, secs) != 0 && rc == 0)
                rc = 2;
out:
        if (g->conns)
                for (unsigned i = 0; i < g->o.conns; i++)
                        if (g->conns[i].evcon)
                                evhttp_connection_free(g->conns[i].evcon);
        if (g->pump)
                event_free(g->pump);
        if (g->ticker)
                event_free(g->ticker);
        if (g->progress)
                event_free(g->progress);
        if (g->sampler)
                event_free(g->sampler);
        if (g->sigint)
                event_free(g->sigint);
        if (g->base)
                event_base_free(g->base);
        free(g->conns);
        free(g->lat);
        free(g->rq_idx);
        free(g->rq_due);
        free(g->msgs);
        free(g->arena);
        free(g);
        libevent_global_shutdown();
        return rc;
}
