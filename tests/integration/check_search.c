/*
 * check_search.c - search over shipments: eps_find_shipments() and
 * `easypost-syncd --find`. Each test works in a schema of its own (search_path
 * in the connection string, migrated by the binary), so no other suite's rows
 * are found and the plan test's rows stay its own. Shipments arrive through
 * the sync worker's own function (eps_sync_shipment, which writes the search
 * row) and trackers through the projection (eps_project_trackers), as the
 * daemon stores them.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "util.h"

struct run {
        int code;  /* exit status, -1 when killed */
        char *out; /* stdout */
        char *err; /* stderr */
};

/* Runs easypost-syncd with DATABASE_URL=url and arguments; collects stdout and stderr. */
static struct run
run_syncd(const char *url, const char *const *args)
{
        char outp[ITEST_PATH], errp[ITEST_PATH];
        struct run r = { 0 };

        r.code = syncd_wait(syncd_spawn(url, NULL, args, outp, errp));
        r.out = itest_slurp(outp);
        r.err = itest_slurp(errp);
        unlink(outp);
        unlink(errp);
        return r;
}

static void
run_free(struct run *r)
{
        free(r->out);
        free(r->err);
}

/* One statement of the form fmt % name on the test database, without its notices. */
static void
admin_exec(const char *fmt, const char *name)
{
        char sql[512];
        PGconn *c = db_open();

        db_exec(c, "SET client_min_messages = warning");
        snprintf(sql, sizeof(sql), fmt, name, name);
        db_exec(c, sql);
        PQfinish(c);
}

static void
migrate(const char *url)
{
        char sqldir[600];

        snprintf(sqldir, sizeof(sqldir), "--sql_dir=%s", srcdir_path("sql"));
        struct run m = run_syncd(url, (const char *const[]){ "--migrate", sqldir, NULL });
        ck_assert_msg(m.code == 0, "migrate: %s", m.err);
        run_free(&m);
}

/* A fresh schema, migrated by the binary; returns a connection inside it,
 * with t_ship(): a fetched shipment stored by the sync worker's function. */
static PGconn *
schema_new(const char *name, char *url, size_t n)
{
        admin_exec("DROP SCHEMA IF EXISTS %s CASCADE", name);
        admin_exec("CREATE SCHEMA %s", name);
        snprintf(url, n, "%s options='-csearch_path=%s'", getenv("TEST_PG_CONNINFO"), name);
        migrate(url);
        PGconn *c = PQconnectdb(url);
        ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
        db_exec(c, "SET client_min_messages = warning");
        db_exec(c, "CREATE FUNCTION t_ship(p_id text, p_code text, p_ref text, p_name text, p_company text,"
                   " p_street1 text, p_street2 text, p_city text) RETURNS void LANGUAGE sql AS $$"
                   " SELECT eps_sync_shipment(jsonb_build_object('id', p_id, 'object', 'Shipment',"
                   " 'mode', 'test', 'tracking_code', p_code, 'reference', p_ref,"
                   " 'created_at', '2025-05-01T10:00:00Z', 'updated_at', '2025-05-01T10:05:00Z',"
                   " 'from_address', jsonb_build_object('id', 'adr_f' || p_id, 'name', 'Sender Müller',"
                   "   'city', 'Sender City'),"
                   " 'to_address', jsonb_build_object('id', 'adr_t' || p_id, 'name', p_name,"
                   "   'company', p_company, 'street1', p_street1, 'street2', p_street2, 'city', p_city,"
                   "   'country', 'DE'),"
                   " 'selected_rate', jsonb_build_object('carrier', 'DHL', 'service', 'Paket')))"
                   " $$");
        /* a tracker event as the webhook projects it (shp may be NULL) */
        db_exec(c, "CREATE FUNCTION t_tracker(p_trk text, p_code text, p_shp text, p_status text)"
                   " RETURNS void LANGUAGE sql AS $$"
                   " SELECT eps_project_trackers(ARRAY[NULL::uuid], ARRAY[jsonb_build_object('result',"
                   " jsonb_build_object('id', p_trk, 'object', 'Tracker', 'tracking_code', p_code,"
                   " 'carrier', 'DHL', 'status', p_status, 'shipment_id', p_shp,"
                   " 'updated_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
                   " 'tracking_details', '[]'::jsonb))])"
                   " $$");
        return c;
}

/* The matches of eps_find_shipments(text) as "easypost_id:matched;..." in order. */
static char *
found(PGconn *c, const char *text)
{
        return db_text(c, "SELECT coalesce(string_agg(coalesce(easypost_id, tracker_id) || ':'"
                          " || array_to_string(matched, ','), ';'), '')"
                          " FROM eps_find_shipments($1)",
                          text);
}

/* db_text(c, sql, param) must equal want. */
#define ck_text(c, sql, param, want)                                                               \
        do {                                                                                       \
                const char *param_ = (param);                                                      \
                char *got_ = db_text(c, sql, param_);                                              \
                ck_assert_msg(strcmp(got_, want) == 0, "%s [%s]: got \"%s\", want \"%s\"", sql,    \
                              param_ ? param_ : "-", got_, want);                                  \
                free(got_);                                                                        \
        } while (0)

#define ck_found(c, text, want)                                                                    \
        do {                                                                                       \
                char *got_ = found(c, text);                                                       \
                ck_assert_msg(strcmp(got_, want) == 0, "search \"%s\": got \"%s\", want \"%s\"",   \
                              text, got_, want);                                                   \
                free(got_);                                                                        \
        } while (0)

START_TEST(test_each_field_ignores_case_and_accents)
{
        char url[1024];
        PGconn *c = schema_new("search_fields", url, sizeof(url));

        db_exec(c, "SELECT t_ship('shp_a', '1Z999AA10123456784', 'Bestellung-Øre-42', 'Jürgen Müller',"
                   " 'Société Générale', 'Hauptstraße 5', 'Hinterhaus', 'Kraków')");
        db_exec(c, "SELECT t_ship('shp_b', '9400111899223197428490', 'ORDX1', 'Ana Núñez', NULL,"
                   " 'Calle Mayor 1', NULL, 'Sevilla')");
        /* the name, whatever its case or accents; the sender's Müller is not the recipient */
        ck_found(c, "muller", "shp_a:name");
        ck_found(c, "MULLER", "shp_a:name");
        ck_found(c, "Müller", "shp_a:name");
        ck_found(c, "MÜLLER", "shp_a:name");
        ck_found(c, "jurgen mUller", "shp_a:name");
        ck_found(c, "nunez", "shp_b:name");
        ck_found(c, "societe GENERALE", "shp_a:company");
        ck_found(c, "HAUPTSTRASSE", "shp_a:street");
        ck_found(c, "hinterhaus", "shp_a:street");
        ck_found(c, "KRAKOW", "shp_a:city");
        ck_found(c, "sévilla", "shp_b:city");
        ck_found(c, "bestellung-ore", "shp_a:reference");
        /* tracking codes: any part, any case */
        ck_found(c, "10123456", "shp_a:tracking_code");
        ck_found(c, "1z999aa", "shp_a:tracking_code");
        ck_found(c, "9400111899223197428490", "shp_b:tracking_code");
        /* LIKE's own characters are searched as themselves */
        ck_found(c, "ord_1", "");
        ck_found(c, "%%%", "");
        ck_found(c, "nobody", "");
        /* two fields at once, both named */
        db_exec(c, "SELECT t_ship('shp_c', 'EZ3000000003', 'ref-c', 'Sevilla Tours', NULL, 'Plaza 2', NULL,"
                   " 'Sevilla')");
        ck_found(c, "SEVILLA", "shp_b:city;shp_c:name,city");
        /* what is printed is the stored text, not its normalised form */
        ck_text(c, "SELECT recipient FROM eps_find_shipments($1)", "krakow", "Jürgen Müller, Société Générale, Hauptstraße 5 Hinterhaus, Kraków");
        /* a shipment fetched again with another recipient is found by the new one only */
        db_exec(c, "SELECT eps_sync_shipment(jsonb_set(jsonb_set(jsonb_build_object('id', 'shp_b',"
                   " 'tracking_code', '9400111899223197428490', 'updated_at', '2025-05-02T10:00:00Z'),"
                   " '{to_address}', jsonb_build_object('id', 'adr_new', 'name', 'Zoë Lefèvre',"
                   " 'city', 'Besançon')), '{reference}', '\"ORDX1\"'))");
        ck_found(c, "nunez", "");
        ck_found(c, "lefevre", "shp_b:name");
        ck_found(c, "besancon", "shp_b:city");
        PQfinish(c);
}
END_TEST

/* A tracker whose shipment is not fetched yet, or that has none, is found by
 * its whole tracking code; once fetched, the shipment is one match. The
 * webhook path writes no search row. */
START_TEST(test_trackers_by_whole_tracking_code)
{
        char url[1024];
        PGconn *c = schema_new("search_trackers", url, sizeof(url));

        db_exec(c, "SELECT t_tracker('trk_1', 'EZ1000000001', 'shp_1', 'in_transit')");
        db_exec(c, "SELECT t_tracker('trk_2', 'EZ2000000002', NULL, 'delivered')");
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM shipment_search", NULL), 0);
        ck_found(c, "EZ1000000001", "shp_1:tracking_code");
        ck_found(c, "ez1000000001", "shp_1:tracking_code");
        ck_found(c, " EZ 1000 0000 01 ", "shp_1:tracking_code");
        ck_found(c, "ez2000000002", "trk_2:tracking_code");
        ck_text(c, "SELECT concat_ws('|', shipment_id IS NULL, tracker_id, status)"
                                    " FROM eps_find_shipments($1)", "EZ2000000002", "t|trk_2|delivered");
        ck_text(c, "SELECT concat_ws('|', tracker_id, status, recipient IS NULL)"
                                    " FROM eps_find_shipments($1)", "EZ1000000001", "trk_1|in_transit|t");

        /* fetched: one row, with its recipient, found by any part now */
        db_exec(c, "SELECT t_ship('shp_1', 'EZ1000000001', 'R-1', 'Björn Øster', NULL, 'Elm Street 3', NULL,"
                   " 'Malmö')");
        ck_found(c, "EZ1000000001", "shp_1:tracking_code");
        ck_found(c, "1000000", "shp_1:tracking_code");
        ck_found(c, "malmo", "shp_1:city");
        ck_text(c, "SELECT concat_ws('|', tracker_id, status) FROM eps_find_shipments($1)",
                                 "oster", "trk_1|in_transit");

        /* a tracker update rewrites the shipments row but not its search row */
        char *before = db_text(c, "SELECT xmin::text FROM shipment_search", NULL);
        db_exec(c, "SELECT t_tracker('trk_1', 'EZ1000000001', 'shp_1', 'delivered')");
        ck_text(c, "SELECT status FROM shipments WHERE easypost_id = 'shp_1'", NULL, "delivered");
        char *after = db_text(c, "SELECT xmin::text FROM shipment_search", NULL);
        ck_assert_str_eq(before, after);
        free(before);
        free(after);
        ck_text(c, "SELECT status FROM eps_find_shipments($1)", "malmo", "delivered");
        PQfinish(c);
}
END_TEST

/* Two fetched shipments that send to one address: a later fetch of either
 * that changes the address rewrites both search rows, and a fetch that
 * changes nothing searched rewrites neither. */
START_TEST(test_shared_address_rewrites_every_row)
{
        char url[1024];
        PGconn *c = schema_new("search_shared", url, sizeof(url));

        db_exec(c, "CREATE FUNCTION t_ship_to(p_id text, p_updated text, p_name text, p_phone text)"
                   " RETURNS void LANGUAGE sql AS $$"
                   " SELECT eps_sync_shipment(jsonb_build_object('id', p_id, 'object', 'Shipment',"
                   " 'tracking_code', 'EZ' || p_id, 'updated_at', p_updated,"
                   " 'created_at', CASE p_id WHEN 'shp_1' THEN '2025-05-01T09:00:00Z' ELSE '2025-04-01T09:00:00Z' END,"
                   " 'to_address', jsonb_build_object('id', 'adr_shared', 'name', p_name,"
                   "   'phone', p_phone, 'city', 'Graz')))"
                   " $$");
        db_exec(c, "SELECT t_ship_to('shp_1', '2025-05-01T10:00:00Z', 'Hofer Lager', '1')");
        db_exec(c, "SELECT t_ship_to('shp_2', '2025-05-01T11:00:00Z', 'Hofer Lager', '1')");
        ck_found(c, "hofer", "shp_1:name;shp_2:name");

        /* a field search does not read: no search row written */
        char *before = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY shipment_id) FROM shipment_search", NULL);
        db_exec(c, "SELECT t_ship_to('shp_2', '2025-05-02T10:00:00Z', 'Hofer Lager', '2')");
        char *after = db_text(c, "SELECT string_agg(xmin::text, ',' ORDER BY shipment_id) FROM shipment_search", NULL);
        ck_assert_str_eq(before, after);
        free(before);
        free(after);

        /* the name changes in shp_2's fetch: shp_1 is found by the new name too */
        db_exec(c, "SELECT t_ship_to('shp_2', '2025-05-03T10:00:00Z', 'Lager Süd', '2')");
        ck_found(c, "hofer", "");
        ck_found(c, "lager sud", "shp_1:name;shp_2:name");
        ck_text(c, "SELECT string_agg(recipient, '|' ORDER BY easypost_id) FROM eps_find_shipments($1)",
                "graz", "Lager Süd, Graz|Lager Süd, Graz");
        PQfinish(c);
}
END_TEST

/* The plan the daemon's own query gets (eps_find_shipments with bound
 * parameters, as --find sends it) on a table large enough that a sequential
 * scan is the planner's alternative, with default settings: the trigram
 * index. VACUUM ANALYZE is what autovacuum does to a table this size after
 * the inserts (the GIN index's statistics come from VACUUM). */
START_TEST(test_plan_uses_the_trigram_index)
{
        char url[1024];
        PGconn *c = schema_new("search_plan", url, sizeof(url));

        db_exec(c, "INSERT INTO addresses (id, easypost_id, name, company, street1, city)"
                   " SELECT md5('a' || i)::uuid, 'adr_' || i, 'Person ' || i, 'Company ' || (i % 97),"
                   " (i % 500) || ' Oak Avenue', 'City ' || (i % 300)"
                   " FROM generate_series(1, 30000) i");
        db_exec(c, "INSERT INTO shipments (id, easypost_id, tracking_code, reference, to_address_id,"
                   " synced_at, created_at)"
                   " SELECT md5('s' || i)::uuid, 'shp_' || i, '1Z' || upper(substr(md5('t' || i), 1, 16)),"
                   " 'ORD-' || i, md5('a' || i)::uuid, now(), now() - make_interval(secs => i)"
                   " FROM generate_series(1, 30000) i");
        db_exec(c, "INSERT INTO trackers (easypost_id, tracking_code, shipment_easypost_id, shipment_id)"
                   " SELECT 'trk_' || i, '1Z' || upper(substr(md5('t' || i), 1, 16)), 'shp_' || i,"
                   " md5('s' || i)::uuid FROM generate_series(1, 30000) i");
        db_exec(c, "UPDATE addresses SET name = 'Jürgen Müller' WHERE easypost_id IN ('adr_7', 'adr_7007')");
        db_exec(c, "SELECT eps_search_refresh(easypost_id) FROM shipments");
        db_exec(c, "VACUUM ANALYZE shipment_search");
        db_exec(c, "VACUUM ANALYZE trackers");

        const char *const queries[] = { "muller", "MÜLLER", "1Z" /* too short: index not needed */ };
        for (size_t i = 0; i < 2; i++) {
                char *plan = db_text(c, "EXPLAIN (FORMAT JSON) SELECT * FROM eps_find_shipments($1, 51)",
                                     queries[i]);
                ck_assert_msg(strstr(plan, "\"Index Name\": \"shipment_search_doc\"") != NULL,
                              "search \"%s\" does not use the trigram index:\n%s", queries[i], plan);
                ck_assert_msg(strstr(plan, "\"Relation Name\": \"shipment_search\"") != NULL &&
                                      strstr(plan, "\"Node Type\": \"Seq Scan\"") == NULL,
                              "search \"%s\" scans a table:\n%s", queries[i], plan);
                free(plan);
        }
        char *plan = db_text(c, "EXPLAIN (FORMAT JSON) SELECT * FROM eps_find_shipments($1, 51)", queries[2]);
        ck_assert_msg(strstr(plan, "\"Node Type\": \"Seq Scan\"") == NULL, "short text scans:\n%s", plan);
        free(plan);
        ck_found(c, "muller", "shp_7:name;shp_7007:name");
        PQfinish(c);
}
END_TEST

START_TEST(test_find_command)
{
        char url[1024];
        PGconn *c = schema_new("search_cli", url, sizeof(url));

        db_exec(c, "SELECT t_ship('shp_cli1', '1Z999AA10123456784', 'Order 77', 'Jürgen Müller', 'Ünïcode AG',"
                   " 'Hauptstraße 5', NULL, 'München')");
        db_exec(c, "SELECT t_tracker('trk_cli1', '1Z999AA10123456784', 'shp_cli1', 'out_for_delivery')");
        /* a recipient with a tab and a line break stays on its line */
        db_exec(c, "SELECT t_ship('shp_cli2', 'EZ42', NULL, E'Tab\\tNew\\nLine', NULL, NULL, NULL, 'Köln')");

        struct run r = run_syncd(url, (const char *const[]){ "--find", "MULLER", NULL });
        ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
        ck_assert_str_eq(r.out, "shp_cli1\ttrk_cli1\t1Z999AA10123456784\tOrder 77\tout_for_delivery\t"
                                "Jürgen Müller, Ünïcode AG, Hauptstraße 5, München\tname\n");
        ck_assert_str_eq(r.err, "");
        run_free(&r);

        r = run_syncd(url, (const char *const[]){ "--find", "koln", NULL });
        ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
        ck_assert_str_eq(r.out, "shp_cli2\t-\tEZ42\t-\t-\tTab New Line, Köln\tcity\n");
        run_free(&r);

        r = run_syncd(url, (const char *const[]){ "--find", "nobody here", NULL });
        ck_assert_int_eq(r.code, 1);
        ck_assert_str_eq(r.out, "");
        run_free(&r);

        r = run_syncd(url, (const char *const[]){ "--find", "é ", NULL });
        ck_assert_int_eq(r.code, 2);
        ck_assert_str_eq(r.out, "");
        ck_assert_msg(strstr(r.err, "at least 3") != NULL, "%s", r.err);
        run_free(&r);

        r = run_syncd(url, (const char *const[]){ "--find", NULL });
        ck_assert_int_eq(r.code, 2);
        ck_assert_msg(strstr(r.err, "--find needs") != NULL, "%s", r.err);
        run_free(&r);

        r = run_syncd(url, (const char *const[]){ "--find", "muller", "--bogus", NULL });
        ck_assert_int_eq(r.code, 2);
        run_free(&r);

        /* more than 50: the first 50 and a note */
        db_exec(c, "SELECT t_ship('shp_many' || i, 'MANY' || i, NULL, 'Many Namesake', NULL, NULL, NULL, 'Ulm')"
                   " FROM generate_series(1, 60) i");
        r = run_syncd(url, (const char *const[]){ "--find", "namesake", NULL });
        ck_assert_int_eq(r.code, 0);
        int lines = 0;
        for (const char *p = r.out; *p; p++)
                lines += *p == '\n';
        ck_assert_int_eq(lines, 50);
        ck_assert_msg(strstr(r.err, "more than 50") != NULL, "%s", r.err);
        run_free(&r);

        /* a database without the search: the way out is named */
        db_exec(c, "DROP FUNCTION eps_find_shipments(text, integer)");
        r = run_syncd(url, (const char *const[]){ "--find", "muller", NULL });
        ck_assert_int_eq(r.code, 2);
        ck_assert_msg(strstr(r.err, "--migrate") != NULL, "%s", r.err);
        run_free(&r);
        PQfinish(c);

        /* no database */
        r = run_syncd("host=127.0.0.1 port=1 connect_timeout=2", (const char *const[]){ "--find", "muller", NULL });
        ck_assert_int_eq(r.code, 2);
        ck_assert_msg(strstr(r.err, "cannot connect") != NULL, "%s", r.err);
        run_free(&r);
}
END_TEST

/* pg_trgm and unaccent are trusted: the owner of a database, no superuser,
 * migrates it and searches. */
START_TEST(test_migrate_without_superuser)
{
        char url[1024];

        admin_exec("DROP DATABASE IF EXISTS %s", "search_owner_db");
        admin_exec("DROP ROLE IF EXISTS %s", "search_owner");
        admin_exec("CREATE ROLE %s LOGIN NOSUPERUSER", "search_owner");
        admin_exec("CREATE DATABASE %s_db OWNER %s", "search_owner");
        snprintf(url, sizeof(url), "%s user=search_owner dbname=search_owner_db", getenv("TEST_PG_CONNINFO"));
        migrate(url);
        PGconn *c = PQconnectdb(url);
        ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_roles WHERE rolname = current_user AND rolsuper",
                                 NULL), 0);
        ck_assert_int_eq(db_long(c, "SELECT count(*) FROM pg_extension WHERE extname IN ('pg_trgm', 'unaccent')"
                                    " AND extowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
                                 NULL), 2);
        db_exec(c, "SELECT eps_sync_shipment('{\"id\": \"shp_o\", \"to_address\": {\"id\": \"adr_o\","
                   " \"name\": \"Zoë Ångström\"}}')");
        ck_found(c, "angstrom", "shp_o:name");
        PQfinish(c);
        admin_exec("DROP DATABASE %s_db", "search_owner");
        admin_exec("DROP ROLE %s", "search_owner");
}
END_TEST

Suite *
search_suite(void)
{
        Suite *s = suite_create("search");
        TCase *tc = tcase_create("search");

        tcase_set_timeout(tc, 240);
        tcase_add_test(tc, test_each_field_ignores_case_and_accents);
        tcase_add_test(tc, test_trackers_by_whole_tracking_code);
        tcase_add_test(tc, test_shared_address_rewrites_every_row);
        tcase_add_test(tc, test_plan_uses_the_trigram_index);
        tcase_add_test(tc, test_find_command);
        tcase_add_test(tc, test_migrate_without_superuser);
        suite_add_tcase(s, tc);
        return s;
}
