/*
 * cfg.h - configuration: built-in defaults, then an INI-style file, then the
 * environment, then command-line overrides. Parsed into a new struct cfg that
 * is validated as a whole before anyone uses it (SIGHUP: parse, validate,
 * keep the non-reloadable keys, swap). Pure: no logging, no event loop.
 */
#ifndef EPS_CFG_H
#define EPS_CFG_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define CFG_MAX_SECRETS 8

struct cfg {
        /* network */
        char *listen;                 /* host:port of the webhook listener */
        char *metrics_listen;         /* optional separate host:port for ops endpoints */
        char *webhook_path;
        long max_body_bytes;
        long max_header_bytes;
        long max_connections;
        long idle_timeout;            /* s: idle keep-alive / slow client cut-off */
        long request_timeout;         /* s: deadline for a webhook's commit */
        long db_timeout;              /* s: a batch in flight longer drops its connection */
        long api_max_retry_after;     /* s: cap on the API's Retry-After */
        long sync_max_attempts;       /* fetches of one job at most */
        char *tls_cert, *tls_key;
        char *basic_auth_user;
        char *basic_auth_password;    /* secret */
        /* database */
        char *database_url;           /* secret: may hold a password */
        long db_connections;
        long queue_limit;
        long batch_max;
        long batch_max_bytes;
        char *projection;             /* "inline" or "deferred" */
        char *sql_dir;
        long migrate_lock_timeout;    /* s: lock_timeout of --migrate's statements */
        /* webhook secrets (NFKD-normalised later by sig) */
        char *webhook_secret;         /* secret */
        char *webhook_secret_file;
        char *secrets[CFG_MAX_SECRETS]; /* resolved: webhook_secret, then the file's lines */
        size_t nsecrets;
        /* EasyPost API */
        char *api_key;                /* secret */
        char *api_key_file;
        char *api_url;
        long api_concurrency;
        long api_rate;
        long api_timeout;
        long sync_interval;
        long backfill_interval;
        long reconcile_interval, reconcile_window_days;
        /* the webhook's own health */
        char *public_url;             /* the URL EasyPost posts to; "" = every webhook */
        long webhook_check_interval;
        char *webhook_auto_enable;    /* "on" or "off" */
        /* timers */
        long analytics_interval;
        long metrics_interval;
        long metrics_retention_days;
        long event_retention_days, history_retention_days, dead_letter_retention_days;
        long sync_job_retention_days;
        /* process */
        char *log_level;
        char *log_format;
        long shutdown_timeout;
        char *instance_id;
};

enum cfg_type { CFG_STR, CFG_INT };

struct cfg_key {
        const char *name;
        enum cfg_type type;
        size_t offset;
        const char *def;
        long min, max;
        bool reloadable;
        bool secret;          /* never on argv, never logged */
        const char *help;
};

extern const struct cfg_key cfg_keys[];
extern const size_t cfg_nkeys;

/* Loads defaults, then the file at path (may be NULL), then env (a NULL-
 * terminated "NAME=value" array, usually environ), then overrides ("key=value",
 * secrets refused). NULL with err on any error. Caller frees with cfg_free. */
MUST_CHECK struct cfg *cfg_load(const char *path, char *const *env, char *const *overrides,
                                size_t noverrides, struct err *e);
void cfg_free(struct cfg *c);

enum cfg_purpose { CFG_FOR_DAEMON, CFG_FOR_MIGRATE };
/* Checks every value together (e.g. a daemon needs a webhook secret). */
MUST_CHECK int cfg_validate(const struct cfg *c, enum cfg_purpose p, struct err *e);

/* Copies the non-reloadable keys of old into next; names those that differed
 * in changed (comma-separated, empty if none). */
void cfg_keep_static(struct cfg *next, const struct cfg *old, char *changed, size_t cap);

/* Splits "host:port" / "[v6]:port". 0 on success. */
MUST_CHECK int cfg_split_hostport(const char *s, char *host, size_t hostcap, unsigned *port);

const struct cfg_key *cfg_key_find(const char *name);

#endif
