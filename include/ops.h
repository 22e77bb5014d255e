/*
 * ops.h - operator endpoints: GET /healthz, /readyz and /metrics. They reply
 * synchronously from what their owner's callbacks fill in; no database
 * query on any of them. The owner routes them (http_route) with the ops
 * object as argument.
 */
#ifndef EPS_OPS_H
#define EPS_OPS_H

#include <event2/http.h>
#include <stdbool.h>

struct ops;
struct strbuf;

/* The readiness checks, filled by the owner for each /readyz. */
struct ops_ready {
        bool db;          /* a database connection is up */
        bool room;        /* the ingest queue has room */
        bool running;     /* not draining */
        int schema;       /* applied migration, -1 unknown */
        const char *api;  /* "off", "ok" or "unauthorized" */
        const char *webhook; /* the EasyPost webhook: "off", "unknown", "ok", "disabled" or "missing" */
        const char *partitions; /* "ok", or "missing": an event lately had no partition */
};
typedef void (*ops_ready_fn)(struct ops_ready *out, void *arg);
/* Appends every module's metrics to b. */
typedef void (*ops_render_fn)(struct strbuf *b, void *arg);

/* Endpoints that ask ready and render (with arg) on each request. */
struct ops *ops_new(ops_ready_fn ready, ops_render_fn render, void *arg);
/* Frees (the routes must be gone: http_free first). */
void ops_free(struct ops *o);
/* GET /healthz: 200 while the loop runs (arg = the ops object). */
void ops_healthz_cb(struct evhttp_request *req, void *arg);
/* GET /readyz: 200 or 503 with the checks named (arg = the ops object). */
void ops_readyz_cb(struct evhttp_request *req, void *arg);
/* GET /metrics: build_info and what the render callback appends (arg = the ops object). */
void ops_metrics_cb(struct evhttp_request *req, void *arg);

#endif
