/*
 * ops.h - operator endpoints: GET /healthz, /readyz and /metrics. They reply
 * synchronously from in-memory state; no database query on any of them.
 */
#ifndef EPS_OPS_H
#define EPS_OPS_H

#include <event2/http.h>

struct app;
struct strbuf;

void ops_register(struct evhttp *h, struct app *a);
/* Appends the Prometheus text exposition (format 0.0.4) to b. */
void ops_render_metrics(struct app *a, struct strbuf *b);
/* Resident set size in bytes and open fd count of this process (0 if unknown). */
unsigned long ops_rss_bytes(void);
unsigned ops_open_fds(void);

#endif
