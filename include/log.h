/*
 * log.h - leveled, one-line-per-event logger (logfmt or JSON) to stderr.
 *
 * The macros test the level before their arguments are evaluated, so a
 * disabled debug line costs one comparison. Never pass a secret, a signature
 * value or a whole payload to these.
 */
#ifndef EPS_LOG_H
#define EPS_LOG_H

#include <stdbool.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
enum log_format { LOG_FMT_LOGFMT = 0, LOG_FMT_JSON };

extern enum log_level log_level_cur;

void log_configure(enum log_level level, enum log_format fmt);
/* Parses "error|warn|info|debug" / "logfmt|json"; -1 when unknown. */
int log_level_parse(const char *s);
int log_format_parse(const char *s);

/* rid may be NULL. Writes one line with ts, lvl, mod, rid and msg. */
void log_write(enum log_level lvl, const char *mod, const char *rid, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

#define log_at(lvl, mod, rid, ...)                                                \
        do {                                                                      \
                if ((lvl) <= log_level_cur)                                       \
                        log_write((lvl), (mod), (rid), __VA_ARGS__);              \
        } while (0)

#define log_err(mod, ...)   log_at(LOG_LVL_ERROR, mod, NULL, __VA_ARGS__)
#define log_warn(mod, ...)  log_at(LOG_LVL_WARN, mod, NULL, __VA_ARGS__)
#define log_info(mod, ...)  log_at(LOG_LVL_INFO, mod, NULL, __VA_ARGS__)
#define log_debug(mod, ...) log_at(LOG_LVL_DEBUG, mod, NULL, __VA_ARGS__)
#define log_warn_req(mod, rid, ...) log_at(LOG_LVL_WARN, mod, rid, __VA_ARGS__)
#define log_info_req(mod, rid, ...) log_at(LOG_LVL_INFO, mod, rid, __VA_ARGS__)
#define log_debug_req(mod, rid, ...) log_at(LOG_LVL_DEBUG, mod, rid, __VA_ARGS__)

#endif
