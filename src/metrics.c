/*
 * metrics.c - label names, fixed-bucket latency histograms and the text
 * buffer the modules render their Prometheus lines into.
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const double lat_bounds_ms[LAT_BUCKETS] = { 0.5, 1,   2,   5,    10,   15,   25,
                                                   50,  100, 250, 500, 1000, 2500, 10000 };

const double *
metrics_lat_bounds_ms(void)
{
        return lat_bounds_ms;
}

static const char *const desc_names[METRICS_NDESC] = {
        "tracker.created", "tracker.updated", "batch.created", "batch.updated",
        "scan_form.created", "scan_form.updated", "insurance.purchased", "insurance.cancelled",
        "payment.created", "payment.completed", "payment.failed", "refund.successful",
        "report.new", "report.available", "report.failed", "shipment.invoice.created",
        "shipment.invoice.updated", "claim.submitted", "claim.updated", "claim.cancelled",
        "claim.rejected", "claim.approved", "claims.submitted", "claims.updated", "claims.cancelled",
        "claims.rejected", "claims.approved", "report.empty", "other",
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

int
metrics_desc_index(const char *description)
{
        int i = 0;

        while (i < METRICS_NDESC - 1 && strcmp(desc_names[i], description) != 0)
                i++;
        return i;
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

void
metrics_render_hist(struct strbuf *b, const char *name, const char *help, const struct latency_hist *h)
{
        uint64_t cum = 0;

        strbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
        for (int i = 0; i <= LAT_BUCKETS; i++) {
                cum += h->buckets[i];
                if (i < LAT_BUCKETS)
                        strbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, lat_bounds_ms[i] / 1000.0,
                                      (unsigned long long)cum);
                else
                        strbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        }
        strbuf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, (double)h->sum_us / 1e6, name,
                      (unsigned long long)h->count);
}
