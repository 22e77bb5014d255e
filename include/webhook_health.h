/*
 * webhook_health.h - the EasyPost webhook's own health: EasyPost may disable
 * an endpoint that keeps failing (e.g. every delivery answered 503 during a
 * long database outage), and then nothing arrives. Every interval one
 * replica (elected through the database, on a connection of its own) lists
 * GET /webhooks, reports the daemon's webhooks (public_url) that are
 * disabled, and with auto_enable re-enables them once the daemon is healthy
 * (PATCH /webhooks/{id}) and starts a backfill run for the events of the
 * disabled window. Runs only with an API key; every request goes through
 * the pacer.
 */
#ifndef EPS_WEBHOOK_HEALTH_H
#define EPS_WEBHOOK_HEALTH_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

struct backfill;
struct ingest;
struct pacer;
struct strbuf;
struct webhook_health;

/* What the check needs of the configuration; strings are copied. */
struct webhook_health_settings {
        const char *public_url; /* the URL EasyPost posts to; "" = every webhook of the account */
        long interval;          /* seconds between checks, <= 0: off */
        bool auto_enable;       /* re-enable a disabled webhook once healthy */
};

/* Counters and the state for /metrics and /readyz. */
struct webhook_health_stats {
        unsigned disabled; /* disabled webhooks of this daemon at the last check (0 if not checked) */
        uint64_t checks_ok, checks_failed, reenabled;
        /* "off" (no API key or interval 0), "unknown" (not checked yet), "ok",
         * "disabled", or "missing" (no webhook posts to public_url) */
        const char *state;
};

/* The check with its own connection to conninfo; pacer, backfill and ingest are borrowed. */
struct webhook_health *webhook_health_new(struct event_base *base, const char *conninfo,
                                          struct pacer *pacer, struct backfill *backfill,
                                          const struct ingest *ingest,
                                          const struct webhook_health_settings *st);
/* Connects; the first check comes two seconds later, then on every interval boundary. */
void webhook_health_start(struct webhook_health *w);
/* New settings (SIGHUP; the pacer may have a new key): checks again soon. */
void webhook_health_reload(struct webhook_health *w, const struct webhook_health_settings *st);
/* Stops the timer (drain); requests in flight are cancelled by pacer_free. */
void webhook_health_stop(struct webhook_health *w);
/* Closes the connection and frees; after pacer_free (its cancelled answers still reach w). */
void webhook_health_free(struct webhook_health *w);
/* Fills the counters and the state. */
void webhook_health_snapshot(const struct webhook_health *w, struct webhook_health_stats *out);
/* Called when a disabled webhook is enabled again (by this daemon or by
 * someone else), with the time EasyPost disabled it ("" if unknown). */
typedef void (*webhook_reenabled_fn)(const char *disabled_at, void *arg);
void webhook_health_on_reenabled(struct webhook_health *w, webhook_reenabled_fn fn, void *arg);
/* Appends the easypost_sync_webhook_* metrics to b. */
void webhook_health_render_metrics(const struct webhook_health *w, struct strbuf *b);

#endif
