/*
 * schema.h - the schema version behind /readyz: on every (re)connect of a
 * connection of its own, reads the highest applied migration and warns when
 * it is behind this build's DB_SCHEMA_VERSION.
 */
#ifndef EPS_SCHEMA_H
#define EPS_SCHEMA_H

#include <event2/event.h>
#include <stdbool.h>

struct schema;

/* A checker with its own connection to conninfo; with check_queue (an
 * inline daemon) it also warns, once, when projection_queue holds events. */
struct schema *schema_new(struct event_base *base, const char *conninfo, bool check_queue);
/* Connects; the check runs on each connect. */
void schema_start(struct schema *s);
/* Closes the connection and frees. */
void schema_free(struct schema *s);
/* Highest applied migration; -1 until known, 0 without schema_migrations. */
int schema_version(const struct schema *s);

#endif
