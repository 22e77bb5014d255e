/*
 * procstat.h - this process as /proc shows it, for the Prometheus standard
 * process_* metrics and the system_metrics rows. Reads /proc on each call:
 * for a scrape or a timer tick, never on a request's path.
 */
#ifndef EPS_PROCSTAT_H
#define EPS_PROCSTAT_H

struct strbuf;

struct procstat {
        unsigned long rss_bytes;     /* resident set size */
        unsigned long vsize_bytes;   /* virtual memory size */
        unsigned open_fds;           /* open file descriptors */
        unsigned long max_fds;       /* RLIMIT_NOFILE (soft) */
        double cpu_seconds;          /* user + system CPU time */
        double start_time_seconds;   /* unix time the process started */
};

/* Fills out; a figure /proc does not give stays 0. */
void procstat_read(struct procstat *out);
/* Appends process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
 * process_max_fds, process_cpu_seconds_total and process_start_time_seconds to b. */
void procstat_render(struct strbuf *b);

#endif
