/*
 * metrics.h - process-wide counters and the Prometheus text renderer.
 *
 * Counters are plain integers bumped on the loop thread (no atomics, no
 * allocation). Gauges that other modules own are passed in a snapshot when
 * rendering, so the scrape path does no database query.
 */
#ifndef EPS_METRICS_H
#define EPS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sig.h"

enum metrics_endpoint { EP_WEBHOOK, EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_OTHER, EP_COUNT };

#define LAT_BUCKETS 14 /* upper bounds in ms: see metrics.c */

struct latency_hist {
        uint64_t buckets[LAT_BUCKETS + 1]; /* last = +Inf */
        uint64_t count;
        uint64_t sum_us;
        uint64_t max_us;
};

/* Event outcomes by description; unknown descriptions share "other" so a
 * client cannot grow the label set. */
enum metrics_outcome { OUT_STORED, OUT_DUPLICATE, OUT_FAILED, OUT_UNAVAILABLE, OUT_COUNT };
#define METRICS_NDESC 20

struct metrics {
        uint64_t requests[EP_COUNT][6]; /* by status class: [1]=1xx .. [5]=5xx */
        uint64_t rejected_sig, rejected_parse, rejected_auth;
        uint64_t sig_matches[SIG_MAX_KEYS];
        struct latency_hist ack;        /* webhook ack latency, whole run */
        struct latency_hist ack_window; /* since the last system_metrics tick */
        uint64_t events[METRICS_NDESC][OUT_COUNT];
};

extern struct metrics metrics;

const double *metrics_lat_bounds_ms(void);
void metrics_request(enum metrics_endpoint ep, int status);
void metrics_event(const char *description, enum metrics_outcome o);
/* Name of description slot i ("other" for the last). */
const char *metrics_desc_name(int i);
const char *metrics_outcome_name(enum metrics_outcome o);
void metrics_latency(struct latency_hist *h, uint64_t us);
/* Quantile estimate in ms from the histogram (upper bound of the bucket). */
double metrics_quantile_ms(const struct latency_hist *h, double q);

/* Growable text buffer the renderer writes into. */
struct strbuf {
        char *data;
        size_t len, cap;
};
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_free(struct strbuf *b);

#endif
