/*
 * procstat.c - /proc/self/stat (CPU time, start, memory), /proc/self/fd and
 * /proc/stat (boot time) read into the process_* figures Prometheus client
 * libraries export under the same names.
 */
#include "procstat.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "metrics.h"

static unsigned
open_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        unsigned n = 0;

        if (d == NULL)
                return 0;
        while ((de = readdir(d)) != NULL)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n > 0 ? n - 1 : 0; /* minus the directory's own fd */
}

static double
boot_time(void)
{
        FILE *f = fopen("/proc/stat", "r");
        char line[256];
        double btime = 0;

        if (f == NULL)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "btime %lf", &btime) == 1)
                        break;
        fclose(f);
        return btime;
}

/* Fields 14-15 (utime, stime), 22 (starttime), 23 (vsize), 24 (rss) of /proc/self/stat. */
static void
read_stat(struct procstat *out)
{
        FILE *f = fopen("/proc/self/stat", "r");
        char buf[1024];
        unsigned long long utime, stime, start, vsize;
        long rss;

        if (f == NULL)
                return;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
        if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu"
                                       " %*d %*d %*d %*d %*d %*d %llu %llu %ld",
                                &utime, &stime, &start, &vsize, &rss) != 5)
                return;
        double tick = (double)sysconf(_SC_CLK_TCK);
        out->cpu_seconds = (double)(utime + stime) / tick;
        out->start_time_seconds = boot_time() + (double)start / tick;
        out->vsize_bytes = (unsigned long)vsize;
        out->rss_bytes = (unsigned long)rss * (unsigned long)sysconf(_SC_PAGESIZE);
}

void
procstat_read(struct procstat *out)
{
        struct rlimit rl;

        memset(out, 0, sizeof(*out));
        read_stat(out);
        out->open_fds = open_fds();
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
                out->max_fds = (unsigned long)rl.rlim_cur;
}

void
procstat_render(struct strbuf *b)
{
        struct procstat p;

        procstat_read(&p);
        strbuf_printf(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                         "# TYPE process_resident_memory_bytes gauge\n"
                         "process_resident_memory_bytes %lu\n"
                         "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                         "# TYPE process_virtual_memory_bytes gauge\n"
                         "process_virtual_memory_bytes %lu\n"
                         "# HELP process_open_fds Number of open file descriptors.\n"
                         "# TYPE process_open_fds gauge\n"
                         "process_open_fds %u\n"
                         "# HELP process_max_fds Maximum number of open file descriptors.\n"
                         "# TYPE process_max_fds gauge\n"
                         "process_max_fds %lu\n"
                         "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                         "# TYPE process_cpu_seconds_total counter\n"
                         "process_cpu_seconds_total %.2f\n"
                         "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                         "# TYPE process_start_time_seconds gauge\n"
                         "process_start_time_seconds %.2f\n",
                      p.rss_bytes, p.vsize_bytes, p.open_fds, p.max_fds, p.cpu_seconds,
                      p.start_time_seconds);
}
