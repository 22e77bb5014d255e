/*
 * webhook_health.h - the EasyPost webhook's own health: EasyPost may disable
 * an endpoint that keeps failing (e.g. every delivery answered 503 during a
 * long database outage), and then nothing arrives. Every
 * webhook_check_interval one replica (elected through the database) lists
 * GET /webhooks, reports the daemon's webhooks (public_url) that are
 * disabled, and with webhook_auto_enable re-enables them once the daemon is
 * healthy (PATCH /webhooks/{id}) and starts a backfill run for the events
 * of the disabled window. Runs only with an API key; every request goes
 * through the sync worker's pacer.
 */
#ifndef EPS_WEBHOOK_HEALTH_H
#define EPS_WEBHOOK_HEALTH_H

struct app;
struct strbuf;
struct webhook_health;

struct webhook_health *webhook_health_new(struct app *a);
void webhook_health_start(struct webhook_health *w);
/* Stops the timer (drain); requests in flight are cancelled by sync_free. */
void webhook_health_stop(struct webhook_health *w);
/* After sync_free and jobs_free: their cancelled callbacks still reach w. */
void webhook_health_free(struct webhook_health *w);
/* Interval, public_url or the API key may have changed (SIGHUP). */
void webhook_health_reload(struct webhook_health *w);

/* For /readyz: "off" (no API key or interval 0), "unknown" (not checked
 * yet), "ok", "disabled", or "missing" (no webhook posts to public_url). */
const char *webhook_health_state(const struct webhook_health *w);
/* Appends the easypost_sync_webhook_* metrics. */
void webhook_health_render_metrics(const struct webhook_health *w, struct strbuf *b);

#endif
