/* check_cfg.c - defaults, file < env < flags, bad values, secrets, reload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfg.h"
#include "testutil.h"

START_TEST(test_defaults)
{
        struct err e;
        char *env[] = { NULL };
        struct cfg *c = cfg_load(NULL, env, NULL, 0, &e);

        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(c->listen, "127.0.0.1:8080");
        ck_assert_str_eq(c->webhook_path, "/webhooks/easypost");
        ck_assert_int_eq(c->max_body_bytes, 1048576);
        ck_assert_int_eq(c->db_connections, 2);
        ck_assert_uint_eq(c->nsecrets, 0);
        /* a daemon needs a secret; a migration does not */
        ck_assert_int_ne(cfg_validate(c, CFG_FOR_DAEMON, &e), 0);
        ck_assert_ptr_nonnull(strstr(e.msg, "secret"));
        ck_assert_int_eq(cfg_validate(c, CFG_FOR_MIGRATE, &e), 0);
        cfg_free(c);
}
END_TEST

START_TEST(test_precedence)
{
        struct err e;
        char *path = tmpfile_with("# comment\n[server]\nlisten = 127.0.0.1:1111\n"
                               "db_connections = 3\nqueue_limit=77\nlog_level = \"debug\"\n"
                               "webhook_secret = from-file\n");
        char *env[] = { "EASYPOST_SYNC_LISTEN=127.0.0.1:2222", "DATABASE_URL=dbname=x",
                        "EASYPOST_SYNC_QUEUE_LIMIT=88", "UNRELATED=1", NULL };
        char *ov[] = { "queue_limit=99" };
        struct cfg *c = cfg_load(path, env, ov, 1, &e);

        ck_assert_msg(c != NULL, "%s", e.msg);
        ck_assert_str_eq(c->listen, "127.0.0.1:2222");   /* env over file */
        ck_assert_int_eq(c->db_connections, 3);           /* file over default */
        ck_assert_int_eq(c->queue_limit, 99);             /* flag over env */
        ck_assert_str_eq(c->database_url, "dbname=x");    /* alias */
        ck_assert_str_eq(c->log_level, "debug");          /* quotes stripped */
        ck_assert_uint_eq(c->nsecrets, 1);
        ck_assert_str_eq(c->secrets[0], "from-file");
        ck_assert_int_eq(cfg_validate(c, CFG_FOR_DAEMON, &e), 0);
        cfg_free(c);
        unlink(path);
        free(path);
}
END_TEST

START_TEST(test_secret_file_rotation)
{
        struct err e;
        char *sf = tmpfile_with("new-one\r\n\nold-one\n");
        char envbuf[300];
        snprintf(envbuf, sizeof(envbuf), "EASYPOST_WEBHOOK_SECRET_FILE=%s", sf);
        char *env[] = { "EASYPOST_WEBHOOK_SECRET=primary", envbuf, NULL };
        struct cfg *c = cfg_load(NULL, env, NULL, 0, &e);

        ck_assert_msg(c != NULL, "%s", e.msg);
        ck_assert_uint_eq(c->nsecrets, 3);
        ck_assert_str_eq(c->secrets[0], "primary");
        ck_assert_str_eq(c->secrets[1], "new-one");
        ck_assert_str_eq(c->secrets[2], "old-one");
        cfg_free(c);
        unlink(sf);
        free(sf);
}
END_TEST

START_TEST(test_bad_values)
{
        struct err e;
        char *env[] = { NULL };
        char *ov1[] = { "db_connections=0" };
        char *ov2[] = { "max_body_bytes=12abc" };
        char *ov3[] = { "no_such_key=1" };
        char *ov4[] = { "webhook_secret=on-argv" };
        char *ov5[] = { "api_key=on-argv" };

        ck_assert_ptr_null(cfg_load(NULL, env, ov1, 1, &e));
        ck_assert_ptr_nonnull(strstr(e.msg, "db_connections"));
        ck_assert_ptr_null(cfg_load(NULL, env, ov2, 1, &e));
        ck_assert_ptr_null(cfg_load(NULL, env, ov3, 1, &e));
        ck_assert_ptr_null(cfg_load(NULL, env, ov4, 1, &e));
        ck_assert_ptr_nonnull(strstr(e.msg, "secret"));
        ck_assert_ptr_null(strstr(e.msg, "on-argv")); /* never echoes the value */
        ck_assert_ptr_null(cfg_load(NULL, env, ov5, 1, &e));
        char *path = tmpfile_with("listen 127.0.0.1:1\n");
        ck_assert_ptr_null(cfg_load(path, env, NULL, 0, &e));
        ck_assert_ptr_nonnull(strstr(e.msg, ":1:"));
        unlink(path);
        free(path);
        char *ov6[] = { "listen=nocolon" };
        char *env2[] = { "EASYPOST_WEBHOOK_SECRET=s", NULL };
        struct cfg *c = cfg_load(NULL, env2, ov6, 1, &e);
        ck_assert_ptr_nonnull(c);
        ck_assert_int_ne(cfg_validate(c, CFG_FOR_DAEMON, &e), 0);
        cfg_free(c);
}
END_TEST

/* The webhook health keys: defaults, accepted values, refusals. */
START_TEST(test_webhook_health_keys)
{
        struct err e;
        char *env[] = { "EASYPOST_WEBHOOK_SECRET=s", NULL };
        struct cfg *c = cfg_load(NULL, env, NULL, 0, &e);

        ck_assert_ptr_nonnull(c);
        ck_assert_int_eq(c->webhook_check_interval, 300);
        ck_assert_str_eq(c->webhook_auto_enable, "off");
        ck_assert_str_eq(c->public_url, "");
        cfg_free(c);
        char *env_ok[] = { "EASYPOST_WEBHOOK_SECRET=s", "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=on",
                           "EASYPOST_SYNC_PUBLIC_URL=https://u:p@hooks.example.test/in", NULL };
        c = cfg_load(NULL, env_ok, NULL, 0, &e);
        ck_assert_ptr_nonnull(c);
        ck_assert_int_eq(cfg_validate(c, CFG_FOR_DAEMON, &e), 0);
        cfg_free(c);
        /* public_url may carry credentials: a secret, refused on argv */
        char *ov[] = { "public_url=https://hooks.example.test/in" };
        ck_assert_ptr_null(cfg_load(NULL, env, ov, 1, &e));
        ck_assert_ptr_nonnull(strstr(e.msg, "secret"));
        char *env_bad[][3] = { { "EASYPOST_WEBHOOK_SECRET=s", "EASYPOST_SYNC_WEBHOOK_AUTO_ENABLE=yes", NULL },
                               { "EASYPOST_WEBHOOK_SECRET=s", "EASYPOST_SYNC_PUBLIC_URL=hooks.example.test", NULL } };
        for (int i = 0; i < 2; i++) {
                c = cfg_load(NULL, env_bad[i], NULL, 0, &e);
                ck_assert_ptr_nonnull(c);
                ck_assert_int_ne(cfg_validate(c, CFG_FOR_DAEMON, &e), 0);
                ck_assert_ptr_nonnull(strstr(e.msg, i == 0 ? "webhook_auto_enable" : "public_url"));
                cfg_free(c);
        }
}
END_TEST

START_TEST(test_keep_static)
{
        struct err e;
        char *env1[] = { "EASYPOST_WEBHOOK_SECRET=a", NULL };
        char *env2[] = { "EASYPOST_WEBHOOK_SECRET=b", "LISTEN=127.0.0.1:9", NULL };
        char *ov[] = { "log_level=debug" };
        struct cfg *old = cfg_load(NULL, env1, NULL, 0, &e);
        struct cfg *next = cfg_load(NULL, env2, ov, 1, &e);
        char changed[256];

        cfg_keep_static(next, old, changed, sizeof(changed));
        ck_assert_str_eq(changed, "listen");
        ck_assert_str_eq(next->listen, old->listen);
        ck_assert_str_eq(next->secrets[0], "b");     /* reloadable: new value */
        ck_assert_str_eq(next->log_level, "debug");
        cfg_free(old);
        cfg_free(next);
}
END_TEST

/* etc/easypost-sync.conf documents every key of the table. */
START_TEST(test_sample_config_documents_every_key)
{
        struct err e;
        char *text = file_read_all(srcdir_path("etc/easypost-sync.conf"), NULL, &e);

        ck_assert_msg(text != NULL, "%s", e.msg);
        for (size_t i = 0; i < cfg_nkeys; i++) {
                char pat[80];
                snprintf(pat, sizeof(pat), "\n# %s =", cfg_keys[i].name);
                char pat2[80];
                snprintf(pat2, sizeof(pat2), "\n%s =", cfg_keys[i].name);
                ck_assert_msg(strstr(text, pat) || strstr(text, pat2), "key %s not documented",
                              cfg_keys[i].name);
        }
        free(text);
}
END_TEST

Suite *
cfg_suite(void)
{
        Suite *s = suite_create("cfg");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 10);
        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_precedence);
        tcase_add_test(tc, test_secret_file_rotation);
        tcase_add_test(tc, test_bad_values);
        tcase_add_test(tc, test_webhook_health_keys);
        tcase_add_test(tc, test_keep_static);
        tcase_add_test(tc, test_sample_config_documents_every_key);
        suite_add_tcase(s, tc);
        return s;
}
