/*
 * ops.c - health, readiness and the Prometheus page.
 *
 * /healthz answers 200 whenever the loop runs. /readyz answers 200 only when
 * a database connection is up, the schema is current, the ingest queue has
 * room and the daemon is not draining, else 503 with the failed checks
 * named. /metrics is build_info and whatever the owner's render callback
 * appends (each module renders its own counters).
 */
#include "ops.h"

#include <event2/http.h>
#include <stdlib.h>

#include "db_migrate.h"
#include "http.h"
#include "metrics.h"
#include "util.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0"
#endif

struct ops {
        ops_ready_fn ready;
        ops_render_fn render;
        void *arg;
};

struct ops *
ops_new(ops_ready_fn ready, ops_render_fn render, void *arg)
{
        struct ops *o = xcalloc(1, sizeof(*o));

        o->ready = ready;
        o->render = render;
        o->arg = arg;
        return o;
}

void
ops_free(struct ops *o)
{
        free(o);
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

void
ops_healthz_cb(struct evhttp_request *req, void *arg)
{
        (void)arg;
        if (only_get(req, EP_HEALTHZ))
                http_reply_json(req, EP_HEALTHZ, 200, "{\"status\":\"ok\"}");
}

/*
 * Ready = a database connection is up, the schema is at this build's
 * migration, the queue has room and we are not draining. A rejected API key
 * or a recently missing partition is reported but does not make the daemon
 * unready: other webhooks still commit.
 */
void
ops_readyz_cb(struct evhttp_request *req, void *arg)
{
        struct ops *o = arg;
        struct ops_ready r = { .schema = -1, .api = "off", .webhook = "off", .partitions = "ok" };
        struct strbuf b = { 0 };

        if (!only_get(req, EP_READYZ))
                return;
        o->ready(&r, o->arg);
        bool current = r.schema >= DB_SCHEMA_VERSION;
        bool ready = r.db && current && r.room && r.running;
        strbuf_printf(&b, "{\"status\":\"%s\",\"checks\":{\"database\":\"%s\",\"migrations\":\"%s\","
                          "\"queue\":\"%s\",\"state\":\"%s\",\"api\":\"%s\",\"webhook\":\"%s\","
                          "\"partitions\":\"%s\"}}",
                      ready ? "ready" : "not ready", r.db ? "ok" : "down",
                      current ? "ok" : r.schema < 0 ? "unknown" : "pending", r.room ? "ok" : "full",
                      r.running ? "ok" : "draining", r.api, r.webhook, r.partitions);
        http_reply_json(req, EP_READYZ, ready ? 200 : 503, b.data);
        strbuf_free(&b);
}

void
ops_metrics_cb(struct evhttp_request *req, void *arg)
{
        struct ops *o = arg;
        struct strbuf b = { 0 };

        if (!only_get(req, EP_METRICS))
                return;
        strbuf_printf(&b, "# HELP easypost_sync_build_info Build information.\n"
                          "# TYPE easypost_sync_build_info gauge\n"
                          "easypost_sync_build_info{version=\"%s\"} 1\n",
                      PACKAGE_VERSION);
        o->render(&b, o->arg);
        http_reply_text(req, EP_METRICS, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        strbuf_free(&b);
}
