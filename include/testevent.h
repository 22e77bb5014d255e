/*
 * testevent.h - `easypost-syncd --send-test-event URL`: posts one signed
 * sample tracker.updated event to a running daemon, signed with the first
 * configured webhook secret. Blocking; used instead of the daemon, never in it.
 */
#ifndef EPS_TESTEVENT_H
#define EPS_TESTEVENT_H

#include "cfg.h"

/* Returns 0 when the daemon answered 2xx; prints the answer to stdout. */
int testevent_send(const struct cfg *c, const char *url);

#endif
