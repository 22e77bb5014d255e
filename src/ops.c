/*
 * ops.c - health, readiness and Prometheus metrics.
 *
 * /healthz answers 200 whenever the loop runs. /readyz answers 200 only when
 * a database connection is up and the ingest queue has room, else 503 with
 * the failed checks named. /metrics renders counters kept in memory.
 */
#include "ops.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "http.h"
#include "db_migrate.h"
#include "ingest.h"
#include "jobs.h"
#include "metrics.h"
#include "sync.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0"
#endif

unsigned long
ops_rss_bytes(void)
{
        FILE *f = fopen("/proc/self/statm", "r");
        unsigned long size = 0, rss = 0;

        if (f == NULL)
                return 0;
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
                rss = 0;
        fclose(f);
        return rss * (unsigned long)sysconf(_SC_PAGESIZE);
}

unsigned
ops_open_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        unsigned n = 0;

        if (d == NULL)
                return 0;
        while ((de = readdir(d)) != NULL)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n > 0 ? n - 1 : 0; /* minus the directory's own fd */
}

static bool
only_get(struct evhttp_request *req, enum metrics_endpoint ep)
{
        static const char *const paths[EP_COUNT] = { "", "/healthz", "/readyz", "/metrics", "" };
        enum evhttp_cmd_type m = evhttp_request_get_command(req);

        if (!http_path_exact(req, paths[ep])) {
                http_reply_error(req, EP_OTHER, 404, "not found");
                return false;
        }
        if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD)
                return true;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        http_reply_error(req, ep, 405, "method not allowed: GET only");
        return false;
}

static void
healthz_cb(struct evhttp_request *req, void *arg)
{
        (void)arg;
        if (only_get(req, EP_HEALTHZ))
                http_reply_json(req, EP_HEALTHZ, 200, "{\"status\":\"ok\"}");
}

/*
 * Ready = a database connection is up, the schema is at this build's
 * migration, the queue has room and we are not draining. A rejected API key
 * is reported but does not make the daemon unready: webhooks still commit.
 */
static void
readyz_cb(struct evhttp_request *req, void *arg)
{
        struct app *a = arg;
        struct strbuf b = { 0 };
        bool db = ingest_db_up(a->ingest);
        int schema = jobs_schema_version(a->jobs);
        bool current = schema >= DB_SCHEMA_VERSION;
        bool room = ingest_has_room(a->ingest);
        bool running = a->state == APP_RUNNING;
        bool ready = db && current && room && running;
        const char *parts = ingest_partition_missing(a->ingest) ? "missing" : "ok";
        const char *api = !sync_enabled(a->sync) ? "off"
                          : sync_auth_failed(a->sync) ? "unauthorized"
                                                      : "ok";

        if (!only_get(req, EP_READYZ))
                return;
        strbuf_printf(&b, "{\"status\":\"%s\",\"checks\":{\"database\":\"%s\",\"migrations\":\"%s\","
                          "\"queue\":\"%s\",\"state\":\"%s\",\"api\":\"%s\",\"partitions\":\"%s\"}}",
                      ready ? "ready" : "not ready", db ? "ok" : "down",
                      current ? "ok" : schema < 0 ? "unknown" : "pending", room ? "ok" : "full",
                      running ? "ok" : "draining", api, parts);
        http_reply_json(req, EP_READYZ, ready ? 200 : 503, b.data);
        strbuf_free(&b);
}

void
ops_render_metrics(struct app *a, struct strbuf *b)
{
        static const char *const ep_names[EP_COUNT] = { "webhook", "healthz", "readyz", "metrics",
                                                         "other" };
        const struct ingest_stats *st = ingest_stats(a->ingest);

        strbuf_printf(b, "# HELP easypost_sync_build_info Build information.\n"
                         "# TYPE easypost_sync_build_info gauge\n"
                         "easypost_sync_build_info{version=\"%s\"} 1\n",
                      PACKAGE_VERSION);
        strbuf_printf(b, "# HELP easypost_sync_http_requests_total HTTP requests answered.\n"
                         "# TYPE easypost_sync_http_requests_total counter\n");
        for (int e = 0; e < EP_COUNT; e++)
                for (int c = 1; c <= 5; c++)
                        strbuf_printf(b,
                                      "easypost_sync_http_requests_total{endpoint=\"%s\",code=\"%dxx\"} %llu\n",
                                      ep_names[e], c, (unsigned long long)metrics.requests[e][c]);
        strbuf_printf(b, "# HELP easypost_sync_events_total Events answered, by description and outcome "
                         "(failed = stored with an error, e.g. a dead letter).\n"
                         "# TYPE easypost_sync_events_total counter\n");
        for (int i = 0; i < METRICS_NDESC; i++)
                for (int o = 0; o < OUT_COUNT; o++)
                        if (metrics.events[i][o] || i == METRICS_NDESC - 1)
                                strbuf_printf(b, "easypost_sync_events_total{description=\"%s\",outcome=\"%s\"} %llu\n",
                                              metrics_desc_name(i), metrics_outcome_name((enum metrics_outcome)o),
                                              (unsigned long long)metrics.events[i][o]);
        strbuf_printf(b, "# HELP easypost_sync_dead_letters_total Events that broke their batch, stored raw.\n"
                         "# TYPE easypost_sync_dead_letters_total counter\n"
                         "easypost_sync_dead_letters_total %llu\n",
                      (unsigned long long)st->dead_letters);
        strbuf_printf(b, "# HELP easypost_sync_batch_isolations_total Batches that failed on one event's "
                         "data and were sent again one event at a time.\n"
                         "# TYPE easypost_sync_batch_isolations_total counter\n"
                         "easypost_sync_batch_isolations_total %llu\n"
                         "# HELP easypost_sync_batch_retries_total Batches sent again after a deadlock or "
                         "serialization failure.\n"
                         "# TYPE easypost_sync_batch_retries_total counter\n"
                         "easypost_sync_batch_retries_total %llu\n",
                      (unsigned long long)st->poison_splits, (unsigned long long)st->retries);
        strbuf_printf(b, "# HELP easypost_sync_partition_missing_total Events answered 503 because a "
                         "row of theirs had no partition yet.\n"
                         "# TYPE easypost_sync_partition_missing_total counter\n"
                         "easypost_sync_partition_missing_total %llu\n",
                      (unsigned long long)st->partition_missing);
        strbuf_printf(b, "# HELP easypost_sync_queue_depth Webhooks waiting for a commit.\n"
                         "# TYPE easypost_sync_queue_depth gauge\n"
                         "easypost_sync_queue_depth %u\n"
                         "# HELP easypost_sync_queue_limit Queue capacity.\n"
                         "# TYPE easypost_sync_queue_limit gauge\n"
                         "easypost_sync_queue_limit %u\n",
                      ingest_depth(a->ingest), ingest_limit(a->ingest));
        strbuf_printf(b, "# HELP easypost_sync_db_connections Ingest connections by state.\n"
                         "# TYPE easypost_sync_db_connections gauge\n"
                         "easypost_sync_db_connections{state=\"configured\"} %u\n"
                         "easypost_sync_db_connections{state=\"up\"} %u\n"
                         "easypost_sync_db_connections{state=\"busy\"} %u\n"
                         "# HELP easypost_sync_db_reconnects_total Reconnections after a loss.\n"
                         "# TYPE easypost_sync_db_reconnects_total counter\n"
                         "easypost_sync_db_reconnects_total %lu\n",
                      ingest_conns(a->ingest), ingest_conns_ready(a->ingest),
                      ingest_conns_busy(a->ingest), ingest_reconnects(a->ingest));
        strbuf_printf(b, "# HELP easypost_sync_batches_total Transactions committed or tried.\n"
                         "# TYPE easypost_sync_batches_total counter\n"
                         "easypost_sync_batches_total %llu\n",
                      (unsigned long long)st->batches);
        static const char *const bs_le[8] = { "1", "2", "4", "16", "64", "256", "1024", "+Inf" };
        uint64_t cum = 0;
        strbuf_printf(b, "# HELP easypost_sync_batch_size Events per batch.\n"
                         "# TYPE easypost_sync_batch_size histogram\n");
        for (int i = 0; i < 8; i++) {
                cum += st->batch_size_buckets[i];
                strbuf_printf(b, "easypost_sync_batch_size_bucket{le=\"%s\"} %llu\n", bs_le[i],
                              (unsigned long long)cum);
        }
        strbuf_printf(b, "easypost_sync_batch_size_sum %llu\neasypost_sync_batch_size_count %llu\n",
                      (unsigned long long)st->batch_events, (unsigned long long)st->batches);
        const double *lb = metrics_lat_bounds_ms();
        cum = 0;
        strbuf_printf(b, "# HELP easypost_sync_ack_latency_seconds Webhook receipt to answer.\n"
                         "# TYPE easypost_sync_ack_latency_seconds histogram\n");
        for (int i = 0; i <= LAT_BUCKETS; i++) {
                cum += metrics.ack.buckets[i];
                if (i < LAT_BUCKETS)
                        strbuf_printf(b, "easypost_sync_ack_latency_seconds_bucket{le=\"%g\"} %llu\n",
                                      lb[i] / 1000.0, (unsigned long long)cum);
                else
                        strbuf_printf(b, "easypost_sync_ack_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                                      (unsigned long long)cum);
        }
        strbuf_printf(b, "easypost_sync_ack_latency_seconds_sum %.6f\n"
                         "easypost_sync_ack_latency_seconds_count %llu\n",
                      (double)metrics.ack.sum_us / 1e6, (unsigned long long)metrics.ack.count);
        strbuf_printf(b, "# HELP easypost_sync_signature_matches_total Verified webhooks by secret slot.\n"
                         "# TYPE easypost_sync_signature_matches_total counter\n");
        for (size_t i = 0; i < sig_keyset_count(a->keys); i++)
                strbuf_printf(b, "easypost_sync_signature_matches_total{slot=\"%zu\"} %llu\n", i,
                              (unsigned long long)metrics.sig_matches[i]);
        strbuf_printf(b, "# HELP easypost_sync_rejected_total Webhooks refused before ingest.\n"
                         "# TYPE easypost_sync_rejected_total counter\n"
                         "easypost_sync_rejected_total{reason=\"signature\"} %llu\n"
                         "easypost_sync_rejected_total{reason=\"parse\"} %llu\n"
                         "easypost_sync_rejected_total{reason=\"auth\"} %llu\n",
                      (unsigned long long)metrics.rejected_sig,
                      (unsigned long long)metrics.rejected_parse,
                      (unsigned long long)metrics.rejected_auth);
        const struct jobs_view_stats *vs = jobs_views(a->jobs);
        strbuf_printf(b, "# HELP easypost_sync_analytics_refreshes_total View refreshes by outcome "
                         "(skipped = another replica had the slot).\n"
                         "# TYPE easypost_sync_analytics_refreshes_total counter\n");
        for (int i = 0; i < JOBS_NVIEWS; i++)
                strbuf_printf(b,
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"ok\"} %llu\n"
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"failed\"} %llu\n"
                              "easypost_sync_analytics_refreshes_total{view=\"%s\",outcome=\"skipped\"} %llu\n",
                              vs[i].name, (unsigned long long)vs[i].ok, vs[i].name,
                              (unsigned long long)vs[i].failed, vs[i].name, (unsigned long long)vs[i].skipped);
        strbuf_printf(b, "# HELP easypost_sync_analytics_refresh_duration_seconds Last refresh of each view.\n"
                         "# TYPE easypost_sync_analytics_refresh_duration_seconds gauge\n");
        for (int i = 0; i < JOBS_NVIEWS; i++)
                strbuf_printf(b, "easypost_sync_analytics_refresh_duration_seconds{view=\"%s\"} %.6f\n",
                              vs[i].name, vs[i].last_duration_ms / 1000.0);
        strbuf_printf(b, "# HELP easypost_sync_projected_deferred_total Events projected after their commit "
                         "(projection = deferred).\n"
                         "# TYPE easypost_sync_projected_deferred_total counter\n"
                         "easypost_sync_projected_deferred_total %llu\n",
                      (unsigned long long)jobs_projected(a->jobs));
        const struct sync_stats *ss = sync_stats(a->sync);
        static const char *const cls[6] = { "error", "1xx", "2xx", "3xx", "4xx", "5xx" };
        strbuf_printf(b, "# HELP easypost_sync_api_requests_total EasyPost API requests by status class "
                         "(error = no HTTP answer).\n"
                         "# TYPE easypost_sync_api_requests_total counter\n");
        for (int i = 0; i < 6; i++)
                if (i != 1 && i != 3)
                        strbuf_printf(b, "easypost_sync_api_requests_total{code=\"%s\"} %llu\n", cls[i],
                                      (unsigned long long)ss->requests_by_class[i]);
        strbuf_printf(b, "# HELP easypost_sync_api_in_flight EasyPost API requests in flight.\n"
                         "# TYPE easypost_sync_api_in_flight gauge\n"
                         "easypost_sync_api_in_flight %u\n"
                         "# HELP easypost_sync_api_authorized 0 after the API rejected the key.\n"
                         "# TYPE easypost_sync_api_authorized gauge\n"
                         "easypost_sync_api_authorized %d\n",
                      sync_in_flight(a->sync), sync_auth_failed(a->sync) ? 0 : 1);
        strbuf_printf(b, "# HELP easypost_sync_sync_jobs_total Sync jobs finished by this process, by outcome.\n"
                         "# TYPE easypost_sync_sync_jobs_total counter\n"
                         "easypost_sync_sync_jobs_total{state=\"done\"} %llu\n"
                         "easypost_sync_sync_jobs_total{state=\"retried\"} %llu\n"
                         "easypost_sync_sync_jobs_total{state=\"failed\"} %llu\n"
                         "# HELP easypost_sync_backfill_events_total Events recovered by backfill.\n"
                         "# TYPE easypost_sync_backfill_events_total counter\n"
                         "easypost_sync_backfill_events_total %llu\n"
                         "# HELP easypost_sync_backfill_unusable_total Recovered bodies that did not parse or "
                         "named another event (tried again next run).\n"
                         "# TYPE easypost_sync_backfill_unusable_total counter\n"
                         "easypost_sync_backfill_unusable_total %llu\n",
                      (unsigned long long)ss->jobs_done, (unsigned long long)ss->jobs_retried,
                      (unsigned long long)ss->jobs_failed, (unsigned long long)ss->backfill_recovered,
                      (unsigned long long)ss->backfill_unusable);
        strbuf_printf(b, "# HELP easypost_sync_process_resident_memory_bytes Resident set size.\n"
                         "# TYPE easypost_sync_process_resident_memory_bytes gauge\n"
                         "easypost_sync_process_resident_memory_bytes %lu\n"
                         "# HELP easypost_sync_http_accept_pauses_total Times max_connections paused accepting.\n"
                         "# TYPE easypost_sync_http_accept_pauses_total counter\n"
                         "easypost_sync_http_accept_pauses_total %lu\n"
                         "# HELP easypost_sync_process_open_fds Open file descriptors.\n"
                         "# TYPE easypost_sync_process_open_fds gauge\n"
                         "easypost_sync_process_open_fds %u\n",
                      ops_rss_bytes(), http_pauses(a->http), ops_open_fds());
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
        struct app *a = arg;
        struct strbuf b = { 0 };
        struct evbuffer *out;

        if (!only_get(req, EP_METRICS))
                return;
        ops_render_metrics(a, &b);
        out = evbuffer_new();
        evbuffer_add(out, b.data, b.len);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/plain; version=0.0.4; charset=utf-8");
        metrics_request(EP_METRICS, 200);
        evhttp_send_reply(req, 200, "OK", out);
        evbuffer_free(out);
        strbuf_free(&b);
}

void
ops_register(struct evhttp *h, struct app *a)
{
        evhttp_set_cb(h, "/healthz", healthz_cb, a);
        evhttp_set_cb(h, "/readyz", readyz_cb, a);
        evhttp_set_cb(h, "/metrics", metrics_cb, a);
}
