/*
 * cfg.c - the key table and its three sources.
 *
 * One row per key: name, type, default, bounds, reloadable, secret, help.
 * etc/easypost-sync.conf documents the same keys; a unit test keeps the two
 * in step. Secrets (webhook secrets, API key, database URL, basic-auth
 * password) may come from the file, the environment or a *_file, never argv.
 */
#include "cfg.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OFF(f) offsetof(struct cfg, f)
#define S(n, f, d, rel, sec, h) { n, CFG_STR, OFF(f), d, 0, 0, rel, sec, h }
#define I(n, f, d, lo, hi, rel, h) { n, CFG_INT, OFF(f), d, lo, hi, rel, false, h }

const struct cfg_key cfg_keys[] = {
        S("listen", listen, "127.0.0.1:8080", false, false, "host:port for webhooks (and ops endpoints unless metrics_listen is set)"),
        S("metrics_listen", metrics_listen, "", false, false, "optional host:port serving only /healthz, /readyz and /metrics"),
        S("webhook_path", webhook_path, "/webhooks/easypost", false, false, "path that receives EasyPost events"),
        I("max_body_bytes", max_body_bytes, "1048576", 1024, 64L << 20, false, "largest accepted webhook body; larger gets 413 unread"),
        I("max_header_bytes", max_header_bytes, "16384", 1024, 1L << 20, false, "largest request head (request line + headers)"),
        I("max_connections", max_connections, "4096", 1, 1000000, false, "client connections open at most; beyond it accepting pauses until one closes"),
        I("idle_timeout", idle_timeout, "30", 1, 3600, false, "seconds a client connection may stay silent (slow or idle clients)"),
        I("request_timeout", request_timeout, "10", 1, 600, true, "seconds a webhook may wait for its commit before it gets 503"),
        S("tls_cert", tls_cert, "", false, false, "PEM certificate chain: serve HTTPS (TLS 1.2+) when set with tls_key"),
        S("tls_key", tls_key, "", false, false, "PEM private key for tls_cert"),
        S("basic_auth_user", basic_auth_user, "", true, false, "require HTTP Basic auth on webhooks with this user (together with HMAC)"),
        S("basic_auth_password", basic_auth_password, "", true, true, "password for basic_auth_user"),
        S("database_url", database_url, "dbname=easypost_sync", false, true, "libpq connection string or URI"),
        I("db_connections", db_connections, "2", 1, 64, false, "ingest connections to PostgreSQL"),
        I("db_timeout", db_timeout, "30", 1, 3600, false, "seconds a batch may wait for PostgreSQL before its connection is dropped (503, reconnect); also bounds unacknowledged TCP data"),
        I("queue_limit", queue_limit, "4096", 1, 1000000, false, "webhooks waiting for a commit at most; beyond it 503 at once"),
        I("batch_max", batch_max, "256", 1, 10000, true, "events per transaction at most"),
        I("batch_max_bytes", batch_max_bytes, "67108864", 65536, 256L << 20, true, "bytes of event bodies per transaction at most (a larger event goes alone)"),
        S("projection", projection, "inline", false, false, "inline: project tracker events in the webhook's transaction; deferred: right after it, off the ack path"),
        S("sql_dir", sql_dir, "", false, false, "directory of migrations (default: the source tree's or the installed sql/)"),
        I("migrate_lock_timeout", migrate_lock_timeout, "5", 0, 3600, false, "seconds a --migrate statement may wait for a table lock before it fails (run it again); 0 waits"),
        S("webhook_secret", webhook_secret, "", true, true, "webhook secret (slot 0)"),
        S("webhook_secret_file", webhook_secret_file, "", true, false, "file with one webhook secret per line (several = rotation)"),
        S("api_key", api_key, "", true, true, "EasyPost API key; enables the sync worker and backfill"),
        S("api_key_file", api_key_file, "", true, false, "file holding the EasyPost API key"),
        S("api_url", api_url, "https://api.easypost.com/v2", true, false, "EasyPost API base URL"),
        I("api_concurrency", api_concurrency, "4", 1, 64, true, "API requests in flight at most"),
        I("api_rate", api_rate, "5", 1, 1000, true, "API requests per second at most"),
        I("api_timeout", api_timeout, "30", 1, 600, true, "seconds an API request may take"),
        I("sync_max_attempts", sync_max_attempts, "10", 1, 1000, true, "fetches of one sync job at most; then it ends failed with its last error"),
        I("api_max_retry_after", api_max_retry_after, "300", 1, 86400, true, "seconds a Retry-After from the API may hold requests back at most"),
        I("sync_interval", sync_interval, "1", 0, 86400, true, "seconds between sync-job claims; 0 disables the worker"),
        I("backfill_interval", backfill_interval, "300", 0, 86400 * 7, true, "seconds between event backfills; 0 disables"),
        I("reconcile_interval", reconcile_interval, "86400", 0, 86400 * 30, true, "seconds between scheduled tracker reconciles against the API (one replica per slot); 0 disables"),
        I("reconcile_window_days", reconcile_window_days, "30", 1, 3650, true, "a reconcile lists trackers created from this many days before the webhook was disabled (or before now)"),
        S("public_url", public_url, "", true, true, "the URL EasyPost posts to (the webhook's url); empty: every webhook of the account is checked"),
        I("webhook_check_interval", webhook_check_interval, "300", 0, 86400 * 7, true, "seconds between checks that the EasyPost webhook is not disabled (needs an API key); 0 disables"),
        S("webhook_auto_enable", webhook_auto_enable, "off", true, false, "on: re-enable a disabled EasyPost webhook once the daemon is healthy, then backfill"),
        I("analytics_interval", analytics_interval, "300", 0, 86400 * 7, true, "seconds between analytics view refreshes; 0 disables"),
        I("metrics_interval", metrics_interval, "60", 0, 86400, true, "seconds between system_metrics rows; 0 disables"),
        I("metrics_retention_days", metrics_retention_days, "30", 1, 3650, true, "days system_metrics rows are kept"),
        I("event_retention_days", event_retention_days, "90", 0, 36500, true, "days raw webhook events are kept (whole months dropped once all older); 0 keeps them"),
        I("history_retention_days", history_retention_days, "0", 0, 36500, true, "days shipment_events (tracking history) are kept, by month of the tracker's first write; 0 keeps them"),
        I("dead_letter_retention_days", dead_letter_retention_days, "30", 0, 36500, true, "days a dead letter (failed event) keeps its month past event_retention_days; 0 until replayed"),
        I("sync_job_retention_days", sync_job_retention_days, "30", 0, 36500, true, "days a sync job that ended (done or failed) is kept after its last update; 0 keeps them"),
        S("log_level", log_level, "info", true, false, "error, warn, info or debug"),
        S("log_format", log_format, "logfmt", true, false, "logfmt or json"),
        I("shutdown_timeout", shutdown_timeout, "10", 1, 600, false, "seconds SIGTERM waits for in-flight work"),
        S("instance_id", instance_id, "", false, false, "name of this replica in metrics and refresh logs (default host:pid)"),
};
const size_t cfg_nkeys = sizeof(cfg_keys) / sizeof(cfg_keys[0]);

/* Common container names, applied before the EASYPOST_SYNC_* ones. */
static const struct {
        const char *env, *key;
} aliases[] = {
        { "DATABASE_URL", "database_url" },
        { "EASYPOST_WEBHOOK_SECRET", "webhook_secret" },
        { "EASYPOST_WEBHOOK_SECRET_FILE", "webhook_secret_file" },
        { "EASYPOST_API_KEY", "api_key" },
        { "EASYPOST_API_KEY_FILE", "api_key_file" },
        { "LISTEN", "listen" },
};

const struct cfg_key *
cfg_key_find(const char *name)
{
        for (size_t i = 0; i < cfg_nkeys; i++)
                if (strcmp(cfg_keys[i].name, name) == 0)
                        return &cfg_keys[i];
        return NULL;
}

static char **
str_at(struct cfg *c, const struct cfg_key *k)
{
        return (char **)((char *)c + k->offset);
}

static long *
int_at(struct cfg *c, const struct cfg_key *k)
{
        return (long *)((char *)c + k->offset);
}

static int
set_key(struct cfg *c, const struct cfg_key *k, const char *val, struct err *e)
{
        if (k->type == CFG_STR) {
                char **p = str_at(c, k);
                free(*p);
                *p = xstrdup(val);
                return 0;
        }
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        while (*end == ' ' || *end == '\t')
                end++;
        if (errno != 0 || end == val || *end != '\0') {
                err_set(e, -1, "%s: \"%s\" is not an integer", k->name, val);
                return -1;
        }
        if (v < k->min || v > k->max) {
                err_set(e, -1, "%s: %ld is outside %ld..%ld", k->name, v, k->min, k->max);
                return -1;
        }
        *int_at(c, k) = v;
        return 0;
}

static char *
trim(char *s)
{
        while (isspace((unsigned char)*s))
                s++;
        char *end = s + strlen(s);
        while (end > s && isspace((unsigned char)end[-1]))
                *--end = '\0';
        return s;
}

static int
load_file(struct cfg *c, const char *path, struct err *e)
{
        struct err fe;
        size_t len = 0;
        char *text = file_read_all(path, &len, &fe);
        char *line, *save = NULL;
        int lineno = 0, rc = 0;

        if (text == NULL) {
                err_set(e, -1, "config %s", fe.msg);
                return -1;
        }
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                lineno++;
                char *s = trim(line);
                if (*s == '\0' || *s == '#' || *s == ';' || *s == '[')
                        continue;
                char *eq = strchr(s, '=');
                if (eq == NULL) {
                        err_set(e, -1, "%s:%d: expected key = value", path, lineno);
                        rc = -1;
                        break;
                }
                *eq = '\0';
                char *key = trim(s), *val = trim(eq + 1);
                size_t vn = strlen(val);
                if (vn >= 2 && ((val[0] == '"' && val[vn - 1] == '"') ||
                                (val[0] == '\'' && val[vn - 1] == '\''))) {
                        val[vn - 1] = '\0';
                        val++;
                }
                const struct cfg_key *k = cfg_key_find(key);
                if (k == NULL) {
                        err_set(e, -1, "%s:%d: unknown key \"%s\"", path, lineno, key);
                        rc = -1;
                        break;
                }
                struct err ke;
                if (set_key(c, k, val, &ke) != 0) {
                        err_set(e, -1, "%s:%d: %s", path, lineno, ke.msg);
                        rc = -1;
                        break;
                }
        }
        /* the buffer may have held secrets (strtok_r cut it into lines: all of it) */
        memset(text, 0, len);
        free(text);
        return rc;
}

static const char *
env_get(char *const *env, const char *name)
{
        size_t n = strlen(name);

        if (env == NULL)
                return NULL;
        for (; *env; env++)
                if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
                        return *env + n + 1;
        return NULL;
}

static int
load_env(struct cfg *c, char *const *env, struct err *e)
{
        char name[128];

        for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
                const char *v = env_get(env, aliases[i].env);
                if (v && set_key(c, cfg_key_find(aliases[i].key), v, e) != 0)
                        return -1;
        }
        for (size_t i = 0; i < cfg_nkeys; i++) {
                size_t k = (size_t)snprintf(name, sizeof(name), "EASYPOST_SYNC_");
                for (const char *p = cfg_keys[i].name; *p && k + 1 < sizeof(name); p++)
                        name[k++] = (char)toupper((unsigned char)*p);
                name[k] = '\0';
                const char *v = env_get(env, name);
                if (v && set_key(c, &cfg_keys[i], v, e) != 0)
                        return -1;
        }
        return 0;
}

static int
load_overrides(struct cfg *c, char *const *ov, size_t n, struct err *e)
{
        for (size_t i = 0; i < n; i++) {
                const char *eq = strchr(ov[i], '=');
                if (eq == NULL) {
                        err_set(e, -1, "override \"%s\" is not key=value", ov[i]);
                        return -1;
                }
                char key[64];
                size_t kn = (size_t)(eq - ov[i]);
                if (kn >= sizeof(key))
                        kn = sizeof(key) - 1;
                memcpy(key, ov[i], kn);
                key[kn] = '\0';
                for (char *p = key; *p; p++)
                        if (*p == '-')
                                *p = '_';
                const struct cfg_key *k = cfg_key_find(key);
                if (k == NULL) {
                        err_set(e, -1, "unknown option --%s", key);
                        return -1;
                }
                if (k->secret) {
                        err_set(e, -1, "%s is a secret: set it in the config file or the "
                                       "environment, never on the command line", key);
                        return -1;
                }
                if (set_key(c, k, eq + 1, e) != 0)
                        return -1;
        }
        return 0;
}

static int
add_secret(struct cfg *c, const char *s, size_t n, struct err *e)
{
        if (c->nsecrets == CFG_MAX_SECRETS) {
                err_set(e, -1, "at most %d webhook secrets", CFG_MAX_SECRETS);
                return -1;
        }
        c->secrets[c->nsecrets++] = xstrndup(s, n);
        return 0;
}

/* Resolves webhook_secret + webhook_secret_file lines and api_key_file. */
static int
resolve_secrets(struct cfg *c, struct err *e)
{
        struct err fe;

        if (c->webhook_secret[0] && add_secret(c, c->webhook_secret, strlen(c->webhook_secret), e))
                return -1;
        if (c->webhook_secret_file[0]) {
                size_t len;
                char *text = file_read_all(c->webhook_secret_file, &len, &fe);
                if (text == NULL) {
                        err_set(e, -1, "webhook_secret_file: %s", fe.msg);
                        return -1;
                }
                int rc = 0;
                for (char *p = text; *p && rc == 0;) {
                        char *nl = strchr(p, '\n');
                        size_t n = nl ? (size_t)(nl - p) : strlen(p);
                        size_t m = n;
                        while (m > 0 && (p[m - 1] == '\r' || p[m - 1] == ' ' || p[m - 1] == '\t'))
                                m--;
                        if (m > 0)
                                rc = add_secret(c, p, m, e);
                        p += n + (nl ? 1 : 0);
                }
                memset(text, 0, len);
                free(text);
                if (rc != 0)
                        return -1;
        }
        if (c->api_key_file[0]) {
                size_t len;
                char *text = file_read_all(c->api_key_file, &len, &fe);
                if (text == NULL) {
                        err_set(e, -1, "api_key_file: %s", fe.msg);
                        return -1;
                }
                free(c->api_key);
                c->api_key = xstrdup(trim(text));
                memset(text, 0, len);
                free(text);
        }
        return 0;
}

struct cfg *
cfg_load(const char *path, char *const *env, char *const *overrides, size_t noverrides,
         struct err *e)
{
        struct cfg *c = xcalloc(1, sizeof(*c));

        for (size_t i = 0; i < cfg_nkeys; i++)
                if (set_key(c, &cfg_keys[i], cfg_keys[i].def, e) != 0)
                        abort(); /* a default outside its own bounds is a bug */
        if ((path && load_file(c, path, e) != 0) || load_env(c, env, e) != 0 ||
            load_overrides(c, overrides, noverrides, e) != 0 || resolve_secrets(c, e) != 0) {
                cfg_free(c);
                return NULL;
        }
        return c;
}

static void
free_secret(char *s)
{
        if (s) {
                memset(s, 0, strlen(s));
                free(s);
        }
}

void
cfg_free(struct cfg *c)
{
        if (c == NULL)
                return;
        for (size_t i = 0; i < cfg_nkeys; i++) {
                if (cfg_keys[i].type != CFG_STR)
                        continue;
                char **p = str_at(c, &cfg_keys[i]);
                free_secret(*p);
        }
        for (size_t i = 0; i < c->nsecrets; i++)
                free_secret(c->secrets[i]);
        free(c);
}

int
cfg_split_hostport(const char *s, char *host, size_t hostcap, unsigned *port)
{
        const char *colon, *h = s;
        size_t hn;

        if (s[0] == '[') {
                const char *rb = strchr(s, ']');
                if (rb == NULL || rb[1] != ':')
                        return -1;
                h = s + 1;
                hn = (size_t)(rb - h);
                colon = rb + 1;
        } else {
                colon = strrchr(s, ':');
                if (colon == NULL)
                        return -1;
                hn = (size_t)(colon - s);
        }
        if (hn == 0 || hn >= hostcap)
                return -1;
        char *end;
        errno = 0;
        long p = strtol(colon + 1, &end, 10);
        if (errno || *end != '\0' || end == colon + 1 || p < 0 || p > 65535)
                return -1;
        memcpy(host, h, hn);
        host[hn] = '\0';
        *port = (unsigned)p;
        return 0;
}

int
cfg_validate(const struct cfg *c, enum cfg_purpose p, struct err *e)
{
        char host[256];
        unsigned port;

        if (cfg_split_hostport(c->listen, host, sizeof(host), &port) != 0) {
                err_set(e, -1, "listen: \"%s\" is not host:port", c->listen);
                return -1;
        }
        if (c->metrics_listen[0] &&
            cfg_split_hostport(c->metrics_listen, host, sizeof(host), &port) != 0) {
                err_set(e, -1, "metrics_listen: \"%s\" is not host:port", c->metrics_listen);
                return -1;
        }
        if (c->webhook_path[0] != '/') {
                err_set(e, -1, "webhook_path must start with /");
                return -1;
        }
        if (strcmp(c->log_level, "error") != 0 && strcmp(c->log_level, "warn") != 0 &&
            strcmp(c->log_level, "info") != 0 && strcmp(c->log_level, "debug") != 0) {
                err_set(e, -1, "log_level: \"%s\" is not error, warn, info or debug", c->log_level);
                return -1;
        }
        if (strcmp(c->log_format, "logfmt") != 0 && strcmp(c->log_format, "json") != 0) {
                err_set(e, -1, "log_format: \"%s\" is not logfmt or json", c->log_format);
                return -1;
        }
        if (strcmp(c->projection, "inline") != 0 && strcmp(c->projection, "deferred") != 0) {
                err_set(e, -1, "projection: \"%s\" is not inline or deferred", c->projection);
                return -1;
        }
        if ((c->tls_cert[0] != '\0') != (c->tls_key[0] != '\0')) {
                err_set(e, -1, "tls_cert and tls_key go together");
                return -1;
        }
        if (c->basic_auth_user[0] && !c->basic_auth_password[0]) {
                err_set(e, -1, "basic_auth_user needs basic_auth_password");
                return -1;
        }
        if (strchr(c->basic_auth_user, ':')) {
                err_set(e, -1, "basic_auth_user must not contain ':'");
                return -1;
        }
        if (strncmp(c->api_url, "http://", 7) != 0 && strncmp(c->api_url, "https://", 8) != 0) {
                err_set(e, -1, "api_url must start with http:// or https://");
                return -1;
        }
        if (c->public_url[0] && strncmp(c->public_url, "http://", 7) != 0 &&
            strncmp(c->public_url, "https://", 8) != 0) {
                err_set(e, -1, "public_url must start with http:// or https://");
                return -1;
        }
        if (strcmp(c->webhook_auto_enable, "on") != 0 && strcmp(c->webhook_auto_enable, "off") != 0) {
                err_set(e, -1, "webhook_auto_enable: \"%s\" is not on or off", c->webhook_auto_enable);
                return -1;
        }
        if (p == CFG_FOR_DAEMON && c->nsecrets == 0) {
                err_set(e, -1, "no webhook secret: set EASYPOST_WEBHOOK_SECRET, "
                               "EASYPOST_WEBHOOK_SECRET_FILE or webhook_secret[_file]");
                return -1;
        }
        return 0;
}

void
cfg_keep_static(struct cfg *next, const struct cfg *old, char *changed, size_t cap)
{
        size_t pos = 0;

        if (cap)
                changed[0] = '\0';
        for (size_t i = 0; i < cfg_nkeys; i++) {
                const struct cfg_key *k = &cfg_keys[i];
                if (k->reloadable)
                        continue;
                bool differs;
                if (k->type == CFG_STR) {
                        char **np = str_at(next, k);
                        char *const *op = (char *const *)((const char *)old + k->offset);
                        differs = strcmp(*np, *op) != 0;
                        if (differs) {
                                free_secret(*np);
                                *np = xstrdup(*op);
                        }
                } else {
                        long *np = int_at(next, k);
                        const long *op = (const long *)((const char *)old + k->offset);
                        differs = *np != *op;
                        *np = *op;
                }
                if (differs && pos + strlen(k->name) + 2 < cap)
                        pos += (size_t)snprintf(changed + pos, cap - pos, "%s%s", pos ? "," : "",
                                                k->name);
        }
}
