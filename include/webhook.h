/*
 * webhook.h - POST <webhook_path>: checks in the documented order (405, 413
 * by evhttp, 415, 401, 400, 503), then hands the event to ingest and replies
 * only when its transaction has committed (or 503 when it cannot).
 */
#ifndef EPS_WEBHOOK_H
#define EPS_WEBHOOK_H

#include <event2/http.h>

void webhook_cb(struct evhttp_request *req, void *app);

#endif
