/*
 * metrics.h - what the Prometheus page is made of: the endpoint and outcome
 * labels, fixed-bucket latency histograms and the text buffer every module
 * renders its own metrics into. The counters themselves live with the
 * module that owns them (http, webhook, ingest, pacer, ...), each of which
 * renders them; ops.c serves the page.
 */
#ifndef EPS_METRICS_H
#define EPS_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum metrics_endpoint { EP_WEBHOOK, EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_OTHER, EP_COUNT };

#define LAT_BUCKETS 14 /* upper bounds in ms: see metrics.c */

struct latency_hist {
        uint64_t buckets[LAT_BUCKETS + 1]; /* last = +Inf */
        uint64_t count;
        uint64_t sum_us;
        uint64_t max_us;
};

/* Event outcomes by description: the types this version knows (those
 * sql/functions/25_objects.sql projects, and trackers); an unknown one is
 * counted as "other", so a client cannot grow the label set. */
enum metrics_outcome { OUT_STORED, OUT_DUPLICATE, OUT_FAILED, OUT_UNAVAILABLE, OUT_COUNT };
#define METRICS_OUT_COUNT 4
#define METRICS_NDESC 29

/* Bucket bounds in ms (LAT_BUCKETS of them). */
const double *metrics_lat_bounds_ms(void);
/* The description's slot: its index, or the last ("other") for one not listed. */
int metrics_desc_index(const char *description);
/* Name of description slot i ("other" for the last). */
const char *metrics_desc_name(int i);
/* Name of an outcome label value. */
const char *metrics_outcome_name(enum metrics_outcome o);
/* Adds one observation of us microseconds. */
void metrics_latency(struct latency_hist *h, uint64_t us);
/* Quantile estimate in ms from the histogram (upper bound of the bucket). */
double metrics_quantile_ms(const struct latency_hist *h, double q);

/* Growable text buffer the renderer writes into. */
struct strbuf {
        char *data;
        size_t len, cap;
};
/* Appends formatted text, growing the buffer. */
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the text; b is empty again. */
void strbuf_free(struct strbuf *b);

/* Appends h as the Prometheus histogram `name` (seconds) with its HELP line. */
void metrics_render_hist(struct strbuf *b, const char *name, const char *help,
                         const struct latency_hist *h);

#endif
