/*
 * main.c - command line: options, then one of --migrate, --status,
 * --reconcile, --find, --check-config, --replay, --reproject, --send-test-event,
 * --version, --help, or the daemon (app_init / app_run / app_fini).
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "cfg.h"
#include "db_migrate.h"
#include "find.h"
#include "log.h"
#include "reconcile.h"
#include "replay.h"
#include "reproject.h"
#include "status.h"
#include "testevent.h"

extern char **environ;

static void
usage(FILE *f)
{
        fprintf(f,
                "usage: easypost-syncd [-c FILE] [--KEY=VALUE ...]\n"
                "                      [--migrate | --status [--json] | --reconcile [--since DATE] |\n"
                "                       --find TEXT | --check-config |\n"
                "                       --replay failed|queued|ID | --reproject [--batch N] |\n"
                "                       --send-test-event [URL] | --version | --help]\n"
                "\n"
                "Receives EasyPost webhooks and keeps PostgreSQL in sync. Runs in the foreground.\n"
                "\n"
                "  -c, --config FILE   configuration file (INI style: key = value)\n"
                "  --migrate           apply pending migrations from sql/ and exit\n"
                "  --status [--json]   report the pipeline's state from the database and exit:\n"
                "                      0 healthy, 1 something needs attention, 2 error\n"
                "  --reconcile [--since DATE]  list EasyPost's trackers created since DATE (default:\n"
                "                      reconcile_window_days ago) and bring the database up to them,\n"
                "                      progress on stderr (a stopped run resumes first): 0 nothing\n"
                "                      to change, 1 trackers changed or created, 2 error\n"
                "  --find TEXT         print the shipments whose tracking code, reference, or\n"
                "                      recipient's name, company, street or city contains TEXT\n"
                "                      (3 characters or more; case and accents ignored), one per\n"
                "                      line: shipment, tracker, tracking code, reference, status,\n"
                "                      recipient, matched fields (tab-separated; at most 50):\n"
                "                      0 found, 1 none, 2 error\n"
                "  --check-config      validate the configuration and exit\n"
                "  --replay failed|ID  re-run the projection of failed events (or one event) and exit\n"
                "  --replay queued     project the events queued by a deferred daemon (projection_queue),\n"
                "                      e.g. after switching to inline, and exit\n"
                "  --reproject [--batch N]  rebuild trackers, history and the other tables from the\n"
                "                      stored events, online, N trackers or events per transaction\n"
                "                      (default 100); progress on stderr; a stopped run resumes:\n"
                "                      0 done, 1 some could not be projected, 2 error\n"
                "  --send-test-event [URL]  post one signed sample event to a running daemon\n"
                "  --KEY=VALUE         set any non-secret key (e.g. --listen=127.0.0.1:9000)\n"
                "  --version           print the version and exit\n"
                "  --help              this text; the keys are listed below\n"
                "\n"
                "Every key can also be set in the environment as EASYPOST_SYNC_<KEY>; also read:\n"
                "DATABASE_URL, EASYPOST_WEBHOOK_SECRET, EASYPOST_WEBHOOK_SECRET_FILE,\n"
                "EASYPOST_API_KEY, EASYPOST_API_KEY_FILE, LISTEN. Secrets never go on argv.\n"
                "\nkeys (default):\n");
        for (size_t i = 0; i < cfg_nkeys; i++)
                fprintf(f, "  %-24s %s (%s)%s\n", cfg_keys[i].name, cfg_keys[i].help,
                        cfg_keys[i].def[0] ? cfg_keys[i].def : "empty",
                        cfg_keys[i].reloadable ? "" : " [restart]");
}

/* YYYY-MM-DD, optionally followed by a time as EasyPost writes it. */
static bool
date_ok(const char *s)
{
        static const char shape[] = "dddd-dd-dd";

        for (size_t i = 0; i < sizeof(shape) - 1; i++)
                if (shape[i] == 'd' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != shape[i])
                        return false;
        return s[10] == '\0' || s[10] == 'T' || s[10] == ' ';
}

int
main(int argc, char **argv)
{
        const char *cfg_path = NULL;
        bool migrate = false, check = false, status = false, json = false;
        const char *replay = NULL, *send_url = NULL, *since = NULL, *find = NULL;
        bool reconcile = false, reproject = false;
        long batch = 0;
        char **overrides = calloc((size_t)argc, sizeof(char *));
        size_t nover = 0;
        struct err e = { 0 };
        struct cfg *cfg;
        int rc = EXIT_FAILURE;

        if (overrides == NULL)
                return EXIT_FAILURE;
        for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], "--reconcile") == 0 || strcmp(argv[i], "--reproject") == 0)
                        rc = RECONCILE_EXIT_ERROR; /* 1 means "changed" there, "some failed" here */
                else if (strcmp(argv[i], "--find") == 0)
                        rc = FIND_ERROR; /* 1 means "nothing found" there */
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
                        if (++i == argc) {
                                fprintf(stderr, "easypost-syncd: %s needs a file\n", a);
                                goto out;
                        }
                        cfg_path = argv[i];
                } else if (strncmp(a, "--config=", 9) == 0) {
                        cfg_path = a + 9;
                } else if (strcmp(a, "--migrate") == 0) {
                        migrate = true;
                } else if (strcmp(a, "--status") == 0) {
                        status = true;
                } else if (strcmp(a, "--reconcile") == 0) {
                        reconcile = true;
                } else if (strcmp(a, "--since") == 0) {
                        if (++i == argc || !date_ok(argv[i])) {
                                fprintf(stderr, "easypost-syncd: --since needs a date (YYYY-MM-DD or "
                                                "YYYY-MM-DDTHH:MM:SSZ)\n");
                                goto out;
                        }
                        since = argv[i];
                } else if (strcmp(a, "--reproject") == 0) {
                        reproject = true;
                } else if (strcmp(a, "--batch") == 0) {
                        char *end = NULL;
                        if (++i < argc)
                                batch = strtol(argv[i], &end, 10);
                        if (end == NULL || *end != '\0' || batch < 1 || batch > 100000) {
                                fprintf(stderr, "easypost-syncd: --batch needs a number from 1 to 100000\n");
                                goto out;
                        }
                } else if (strcmp(a, "--find") == 0) {
                        if (++i == argc) {
                                fprintf(stderr, "easypost-syncd: --find needs the text to search\n");
                                goto out;
                        }
                        find = argv[i];
                } else if (strcmp(a, "--json") == 0) {
                        json = true;
                } else if (strcmp(a, "--replay") == 0) {
                        if (++i == argc) {
                                fprintf(stderr, "easypost-syncd: --replay needs \"failed\", \"queued\" or an event id\n");
                                goto out;
                        }
                        replay = argv[i];
                } else if (strcmp(a, "--send-test-event") == 0) {
                        send_url = i + 1 < argc && argv[i + 1][0] != '-'
                                           ? argv[++i]
                                           : "http://127.0.0.1:8080/webhooks/easypost";
                } else if (strcmp(a, "--check-config") == 0) {
                        check = true;
                } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
                        printf("easypost-syncd %s\n", PACKAGE_VERSION);
                        rc = EXIT_SUCCESS;
                        goto out;
                } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
                        usage(stdout);
                        rc = EXIT_SUCCESS;
                        goto out;
                } else if (strncmp(a, "--", 2) == 0 && strchr(a, '=') != NULL) {
                        overrides[nover++] = argv[i] + 2;
                } else {
                        fprintf(stderr, "easypost-syncd: unknown argument \"%s\" (try --help)\n", a);
                        goto out;
                }
        }

        if (json && !status) {
                fprintf(stderr, "easypost-syncd: --json goes with --status\n");
                goto out;
        }
        if (since && !reconcile) {
                fprintf(stderr, "easypost-syncd: --since goes with --reconcile\n");
                goto out;
        }
        if (batch && !reproject) {
                fprintf(stderr, "easypost-syncd: --batch goes with --reproject\n");
                goto out;
        }
        if (status)
                rc = STATUS_ERROR;
        if (reconcile)
                rc = RECONCILE_EXIT_ERROR;
        if (find)
                rc = FIND_ERROR; /* 1 means "nothing found" there */
        cfg = cfg_load(cfg_path, environ, overrides, nover, &e);
        if (cfg == NULL ||
            cfg_validate(cfg, migrate || replay || status || reconcile || reproject || find ? CFG_FOR_MIGRATE
                                                                                        : CFG_FOR_DAEMON,
                         &e) != 0) {
                fprintf(stderr, "easypost-syncd: configuration: %s\n", e.msg);
                cfg_free(cfg);
                goto out;
        }
        if (check) {
                printf("configuration ok\n");
                cfg_free(cfg);
                rc = EXIT_SUCCESS;
                goto out;
        }
        log_configure((enum log_level)log_level_parse(cfg->log_level),
                      (enum log_format)log_format_parse(cfg->log_format));
        if (send_url) {
                curl_global_init(CURL_GLOBAL_DEFAULT);
                rc = testevent_send(cfg, send_url) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
                curl_global_cleanup();
                cfg_free(cfg);
                goto out;
        }
        if (status) {
                rc = (int)status_run(cfg, json, stdout, &e);
                if (rc == STATUS_ERROR)
                        fprintf(stderr, "easypost-syncd: status: %s\n", e.msg);
                cfg_free(cfg);
                goto out;
        }
        if (find) {
                rc = (int)find_run(cfg->database_url, find, stdout, stderr, &e);
                if (rc == FIND_ERROR)
                        fprintf(stderr, "easypost-syncd: find: %s\n", e.msg);
                cfg_free(cfg);
                goto out;
        }
        if (reconcile) {
                curl_global_init(CURL_GLOBAL_DEFAULT);
                rc = reconcile_cli(cfg, since);
                curl_global_cleanup();
                cfg_free(cfg);
                goto out;
        }
        if (reproject) {
                struct reproject_totals t;
                if (reproject_run(cfg->database_url, batch ? (int)batch : REPROJECT_BATCH_DEFAULT,
                                  stderr, &t, &e) != 0) {
                        log_err("reproject", "stopped (run --reproject again to resume): %s", e.msg);
                } else {
                        fprintf(stderr, "reproject: done: %lld tracker(s) rebuilt from %lld event(s), "
                                        "history %lld row(s) before and %lld after, %lld orphan row(s) "
                                        "removed, %lld tracker fetch(es) queued, %lld other event(s) "
                                        "projected, %lld failed, %lld tracker(s) without events kept\n",
                                t.trackers, t.events, t.history_deleted, t.history_inserted, t.orphans,
                                t.refetch, t.objects, t.failed, t.kept);
                        rc = t.failed > 0 ? 1 : EXIT_SUCCESS;
                }
                cfg_free(cfg);
                goto out;
        }
        if (replay) {
                long ok = 0, bad = 0;
                if (replay_run(cfg->database_url, replay, &ok, &bad, &e) != 0) {
                        log_err("replay", "%s", e.msg);
                } else {
                        log_info("replay", "%ld event(s) replayed: %ld ok, %ld still failed",
                                 ok + bad, ok, bad);
                        rc = EXIT_SUCCESS;
                }
                cfg_free(cfg);
                goto out;
        }
        if (migrate) {
                int applied = 0, fn_applied = 0;
                const char *dir = db_migrate_dir(cfg->sql_dir);
                if (db_migrate_run(cfg->database_url, dir, cfg->migrate_lock_timeout, &applied,
                                   &fn_applied, &e) != 0) {
                        log_err("migrate", "%s", e.msg);
                } else {
                        log_info("migrate", "%d migration(s) and %d function file(s) applied from %s; "
                                 "schema is current", applied, fn_applied, dir);
                        rc = EXIT_SUCCESS;
                }
                cfg_free(cfg);
                goto out;
        }

        curl_global_init(CURL_GLOBAL_DEFAULT);
        struct app app = { 0 };
        app.cfg_path = cfg_path;
        app.overrides = overrides;
        app.noverrides = nover;
        if (app_init(&app, cfg, &e) != 0) {
                log_err("app", "cannot start: %s", e.msg);
        } else {
                rc = app_run(&app) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
                log_info("app", "stopped");
        }
        app_fini(&app);
        curl_global_cleanup();
out:
        free(overrides);
        return rc;
}
