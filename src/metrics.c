/*
 * metrics.c - counters, fixed-bucket latency histograms and a small text
 * buffer. The Prometheus page itself is assembled in ops.c from these and
 * from the gauges the I/O modules expose.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct metrics metrics;

static const double lat_bounds_ms[LAT_BUCKETS] = { 0.5, 1,   2,   5,    10,   15,   25,
                                                   50,  100, 250, 500, 1000, 2500, 10000 };

const double *
metrics_lat_bounds_ms(void)
{
        return lat_bounds_ms;
}

void
metrics_request(enum metrics_endpoint ep, int status)
{
        int cls = status / 100;

        if (cls < 1 || cls > 5)
                cls = 5;
        metrics.requests[ep][cls]++;
}

static const char *const desc_names[METRICS_NDESC] = {
        "tracker.created", "tracker.updated", "batch.created", "batch.updated",
        "scan_form.created", "scan_form.updated", "insurance.purchased", "insurance.cancelled",
        "payment.created", "payment.completed", "payment.failed", "refund.successful",
        "report.new", "report.available", "report.failed", "shipment.invoice.created",
        "shipment.invoice.updated", "claim.submitted", "claim.updated", "other",
};

const char *
metrics_desc_name(int i)
{
        return desc_names[i];
}

const char *
metrics_outcome_name(enum metrics_outcome o)
{
        static const char *const names[OUT_COUNT] = { "stored", "duplicate", "failed", "unavailable" };
        return names[o];
}

void
metrics_event(const char *description, enum metrics_outcome o)
{
        int i = 0;

        while (i < METRICS_NDESC - 1 && strcmp(desc_names[i], description) != 0)
                i++;
        metrics.events[i][o]++;
}

void
metrics_latency(struct latency_hist *h, uint64_t us)
{
        size_t i = 0;

        while (i < LAT_BUCKETS && (double)us > lat_bounds_ms[i] * 1000.0)
                i++;
        h->buckets[i]++;
        h->count++;
        h->sum_us += us;
        if (us > h->max_us)
                h->max_us = us;
}

double
metrics_quantile_ms(const struct latency_hist *h, double q)
{
        uint64_t seen = 0, want;

        if (h->count == 0)
                return 0;
        want = (uint64_t)((double)h->count * q);
        if (want < 1)
                want = 1;
        for (size_t i = 0; i <= LAT_BUCKETS; i++) {
                seen += h->buckets[i];
                if (seen >= want)
                        return i < LAT_BUCKETS ? lat_bounds_ms[i] : (double)h->max_us / 1000.0;
        }
        return (double)h->max_us / 1000.0;
}

void
strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
        va_list ap;

        for (;;) {
                size_t room = b->cap - b->len;
                va_start(ap, fmt);
                int n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
                va_end(ap);
                if (n < 0)
                        return;
                if ((size_t)n < room) {
                        b->len += (size_t)n;
                        return;
                }
                b->cap = (b->cap + (size_t)n + 1) * 2;
                b->data = xrealloc(b->data, b->cap);
        }
}

void
strbuf_free(struct strbuf *b)
{
        free(b->data);
        b->data = NULL;
        b->len = b->cap = 0;
}
