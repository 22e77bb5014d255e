/* check_sqlsplit.c - db_sql_split: a no-transaction migration cut into its
 * statements, semicolons inside quotes, dollar quotes and comments kept. */
#include <stdlib.h>
#include <string.h>

#include "db_migrate.h"
#include "testutil.h"

/* Splits sql and checks the statements against want (NULL-terminated). */
static void
expect(const char *sql, const char *const *want, const int *lines)
{
        struct db_stmt *st;
        size_t n, nw = 0;
        struct err e;

        ck_assert_msg(db_sql_split(sql, &st, &n, &e) == 0, "%s", e.msg);
        while (want[nw])
                nw++;
        ck_assert_uint_eq(n, nw);
        for (size_t i = 0; i < n; i++) {
                ck_assert_str_eq(st[i].sql, want[i]);
                if (lines)
                        ck_assert_int_eq(st[i].line, lines[i]);
        }
        db_stmts_free(st, n);
}

START_TEST(test_plain_statements_and_lines)
{
        expect("-- eps:no-transaction\n-- a comment; not a statement\nSELECT 1;\n\n  SELECT 2 ;\nSELECT 3",
               (const char *const[]){ "-- eps:no-transaction\n-- a comment; not a statement\nSELECT 1",
                                      "\n\n  SELECT 2 ", "\nSELECT 3", NULL },
               (const int[]){ 3, 5, 6 });
        /* empty statements and trailing comments are left out */
        expect(";;  ;\n-- only a comment;\n/* and; another */\n",
               (const char *const[]){ NULL }, NULL);
}
END_TEST

START_TEST(test_semicolons_inside_quotes_and_comments)
{
        expect("SELECT 'a;b', 'it''s;', E'\\';x', \"col;\"\"n\" FROM t; SELECT 2",
               (const char *const[]){ "SELECT 'a;b', 'it''s;', E'\\';x', \"col;\"\"n\" FROM t",
                                      " SELECT 2", NULL },
               NULL);
        /* a backslash ends nothing in a standard string */
        expect("SELECT 'a\\'; SELECT 2",
               (const char *const[]){ "SELECT 'a\\'", " SELECT 2", NULL }, NULL);
        expect("SELECT 1 /* a; /* nested; */ still; */ + 1; -- x;\nSELECT 2",
               (const char *const[]){ "SELECT 1 /* a; /* nested; */ still; */ + 1",
                                      " -- x;\nSELECT 2", NULL },
               (const int[]){ 1, 2 });
}
END_TEST

START_TEST(test_dollar_quotes)
{
        expect("DO $$ BEGIN PERFORM 1; END $$; DO $body$ BEGIN RAISE NOTICE '$$;'; END $body$;"
               "SELECT $1, a$b$ FROM t",
               (const char *const[]){ "DO $$ BEGIN PERFORM 1; END $$",
                                      " DO $body$ BEGIN RAISE NOTICE '$$;'; END $body$",
                                      "SELECT $1, a$b$ FROM t", NULL },
               NULL);
}
END_TEST

START_TEST(test_unclosed_is_refused)
{
        const char *bad[] = { "SELECT 'a; SELECT 2", "DO $x$ BEGIN; END $y$;", "SELECT 1 /* x",
                              "SELECT \"a;" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct db_stmt *st = (struct db_stmt *)1;
                size_t n = 1;
                struct err e;
                ck_assert_int_eq(db_sql_split(bad[i], &st, &n, &e), -1);
                ck_assert_ptr_null(st);
                ck_assert_uint_eq(n, 0);
                ck_assert_msg(strstr(e.msg, "not closed") != NULL, "%s", e.msg);
        }
}
END_TEST

Suite *
sqlsplit_suite(void)
{
        Suite *s = suite_create("sqlsplit");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 10);
        tcase_add_test(tc, test_plain_statements_and_lines);
        tcase_add_test(tc, test_semicolons_inside_quotes_and_comments);
        tcase_add_test(tc, test_dollar_quotes);
        tcase_add_test(tc, test_unclosed_is_refused);
        suite_add_tcase(s, tc);
        return s;
}
