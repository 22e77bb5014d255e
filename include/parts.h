/*
 * parts.h - upkeep of the monthly partitions of webhook_events and
 * shipment_events, run at each analytics tick: partitions made ahead and
 * the ones past their retention detached and dropped, by the one replica
 * that eps_partitions_maintain() elects for the slot; and the sync jobs
 * past their retention deleted in batches (eps_sync_jobs_prune elects).
 */
#ifndef EPS_PARTS_H
#define EPS_PARTS_H

struct db_conn;
struct parts;
struct strbuf;

/* What the upkeep needs of the configuration; strings are copied. */
struct parts_settings {
        const char *instance_id;
        long event_retention_days;       /* raw webhook events; 0 keeps them */
        long history_retention_days;     /* shipment_events, by the tracker's month; 0 keeps them */
        long dead_letter_retention_days; /* a failed event's month, past event_retention_days; 0 until replayed */
        long sync_job_retention_days;    /* sync jobs that ended; 0 keeps them */
};

/* Upkeep whose steps run on c (borrowed: free the object after c, whose
 * in-flight callbacks it receives). */
struct parts *parts_new(struct db_conn *c, const struct parts_settings *st);
/* New retention settings (SIGHUP), for the next run. */
void parts_reload(struct parts *p, const struct parts_settings *st);
/* Starts one maintenance run for the analytics slot (slot: its number,
 * start_s: the unix second it starts), unless the last one is still going
 * or the connection is not up (the tick is then skipped). Its steps are
 * queued behind whatever the connection carries; the outcome is logged.
 * A run first finishes what an earlier one left (the ledger). */
void parts_tick(struct parts *p, long long slot, long long start_s);
/* easypost_sync_history_odd_dates: tracking details stored with an absurd
 * scan time, as the last run counted them. */
void parts_render_metrics(const struct parts *p, struct strbuf *b);
/* Frees (after the connection: see parts_new). */
void parts_free(struct parts *p);

#endif
