/*
 * parts.h - upkeep of the monthly partitions of webhook_events and
 * shipment_events, run at each analytics tick: partitions made ahead and
 * the ones past their retention detached and dropped, by the one replica
 * that eps_partitions_maintain() elects for the slot.
 */
#ifndef EPS_PARTS_H
#define EPS_PARTS_H

struct cfg;
struct db_conn;

/* Starts one maintenance run on c for the analytics slot, unless the last
 * one is still going or c is not up (the tick is then skipped). Its steps
 * are queued on c behind whatever it carries; the outcome is logged. */
void parts_tick(struct db_conn *c, const struct cfg *cfg, long long slot, const char *instance);

#endif
