/*
 * replay.h - `easypost-syncd --replay failed|queued|ID`: re-runs the
 * projection of stored events through eps_replay(), each in its own
 * transaction, or projects the projection queue's events. Blocking libpq,
 * instead of the daemon, never in it.
 */
#ifndef EPS_REPLAY_H
#define EPS_REPLAY_H

#include "util.h"

/* what = "failed" (every failed event), "queued" (every event in
 * projection_queue) or an EasyPost event id. Counts the outcomes; -1 with err
 * if the database or the selection failed, or when an event id is unknown. */
MUST_CHECK int replay_run(const char *conninfo, const char *what, long *projected, long *failed,
                          struct err *e);

#endif
