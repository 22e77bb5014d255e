/*
 * log.c - formats one line per call and writes it to stderr with a single
 * write(2), so lines from a crash or a concurrent process never interleave.
 * Messages are escaped for the chosen format; callers never quote.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_level_cur = LOG_LVL_INFO;
static enum log_format log_fmt = LOG_FMT_LOGFMT;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void
log_configure(enum log_level level, enum log_format fmt)
{
        log_level_cur = level;
        log_fmt = fmt;
}

int
log_level_parse(const char *s)
{
        for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
                if (strcmp(s, level_names[i]) == 0)
                        return (int)i;
        return -1;
}

int
log_format_parse(const char *s)
{
        if (strcmp(s, "logfmt") == 0)
                return LOG_FMT_LOGFMT;
        if (strcmp(s, "json") == 0)
                return LOG_FMT_JSON;
        return -1;
}

/* Appends s escaped for a double-quoted logfmt or JSON string. */
static size_t
put_escaped(char *out, size_t pos, size_t cap, const char *s)
{
        for (; *s && pos + 7 < cap; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\') {
                        out[pos++] = '\\';
                        out[pos++] = (char)c;
                } else if (c == '\n') {
                        out[pos++] = '\\';
                        out[pos++] = 'n';
                } else if (c < 0x20) {
                        pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
                } else {
                        out[pos++] = (char)c;
                }
        }
        return pos;
}

static size_t
put_raw(char *out, size_t pos, size_t cap, const char *s)
{
        size_t n = strlen(s);

        if (pos + n >= cap)
                n = cap - pos - 1;
        memcpy(out + pos, s, n);
        return pos + n;
}

void
log_write(enum log_level lvl, const char *mod, const char *rid, const char *fmt, ...)
{
        char msg[1024], line[2400], ts[64];
        struct timeval tv;
        struct tm tm;
        size_t pos = 0, cap = sizeof(line) - 2;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (long)(tv.tv_usec / 1000));

        if (log_fmt == LOG_FMT_JSON) {
                pos = put_raw(line, pos, cap, "{\"ts\":\"");
                pos = put_raw(line, pos, cap, ts);
                pos = put_raw(line, pos, cap, "\",\"lvl\":\"");
                pos = put_raw(line, pos, cap, level_names[lvl]);
                pos = put_raw(line, pos, cap, "\",\"mod\":\"");
                pos = put_escaped(line, pos, cap, mod);
                if (rid) {
                        pos = put_raw(line, pos, cap, "\",\"rid\":\"");
                        pos = put_escaped(line, pos, cap, rid);
                }
                pos = put_raw(line, pos, cap, "\",\"msg\":\"");
                pos = put_escaped(line, pos, cap, msg);
                pos = put_raw(line, pos, cap, "\"}");
        } else {
                pos = put_raw(line, pos, cap, "ts=");
                pos = put_raw(line, pos, cap, ts);
                pos = put_raw(line, pos, cap, " lvl=");
                pos = put_raw(line, pos, cap, level_names[lvl]);
                pos = put_raw(line, pos, cap, " mod=");
                pos = put_raw(line, pos, cap, mod);
                if (rid) {
                        pos = put_raw(line, pos, cap, " rid=");
                        pos = put_raw(line, pos, cap, rid);
                }
                pos = put_raw(line, pos, cap, " msg=\"");
                pos = put_escaped(line, pos, cap, msg);
                pos = put_raw(line, pos, cap, "\"");
        }
        line[pos++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, pos);
        (void)w;
}
