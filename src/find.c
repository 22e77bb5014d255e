/*
 * find.c - see find.h.
 *
 * One blocking connection, one read-only transaction (its statement_timeout
 * is SET LOCAL, so nothing stays on a connection PgBouncer hands on), two
 * statements: whether the text is long enough to search a part of, then
 * eps_find_shipments() asked for one row more than it prints, which tells
 * whether there were more. The search itself, its index and its order are
 * the SQL function's (sql/functions/90_search.sql); this file only prints.
 *
 * What the database holds came from EasyPost (a recipient typed by anyone),
 * so each field is printed on its line with control characters replaced:
 * one match is always one line of seven tab-separated fields.
 */
#include "find.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#define SQL_LONG_ENOUGH "SELECT eps_search_pattern($1) IS NOT NULL"
#define SQL_FIND                                                                                   \
        "SELECT easypost_id, tracker_id, tracking_code, reference, status, recipient,"            \
        " array_to_string(matched, ',') FROM eps_find_shipments($1, $2::integer)"
#define FIND_FIELDS 7

/* The first line of a libpq message, for err_set's "%.*s". */
static int
line_len(const char *m)
{
        return (int)strcspn(m, "\n");
}

/* One field: "-" when NULL or empty; a tab, a line break or another control
 * character (C0, DEL, C1 in UTF-8) becomes a space. */
static void
put_field(FILE *out, const PGresult *r, int row, int col)
{
        const unsigned char *s = (const unsigned char *)PQgetvalue(r, row, col);
        size_t n = (size_t)PQgetlength(r, row, col);

        if (PQgetisnull(r, row, col) || n == 0) {
                fputc('-', out);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                if (s[i] < 0x20 || s[i] == 0x7f) {
                        fputc(' ', out);
                } else if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] < 0xa0) {
                        fputc(' ', out);
                        i++;
                } else {
                        fputc(s[i], out);
                }
        }
}

/* A statement failed: e says what it was doing, and how to fix a schema
 * without the search (undefined function or table). */
static void
query_failed(const PGresult *r, const char *doing, struct err *e)
{
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        const char *m = PQresultErrorMessage(r);

        if (state && (strcmp(state, "42883") == 0 || strcmp(state, "42P01") == 0))
                err_set(e, -1, "the database has no search yet (migration 12): run easypost-syncd "
                               "--migrate (%.*s)", line_len(m), m);
        else
                err_set(e, -1, "%s: %.*s", doing, line_len(m), m);
}

enum find_result
find_run(const char *conninfo, const char *text, FILE *out, FILE *err, struct err *e)
{
        const char *keys[] = { "connect_timeout", "dbname", "fallback_application_name",
                               "client_encoding", NULL };
        const char *vals[] = { "10", conninfo, "easypost-syncd-find", "UTF8", NULL };
        char limit[16];
        const char *params[2] = { text, limit };
        enum find_result rc = FIND_ERROR;
        PGresult *r = NULL;
        PGconn *pq = PQconnectdbParams(keys, vals, 1);

        snprintf(limit, sizeof(limit), "%d", FIND_LIMIT + 1);
        if (PQstatus(pq) != CONNECTION_OK) {
                const char *m = PQerrorMessage(pq);
                err_set(e, -1, "cannot connect to the database: %.*s", line_len(m), m);
                goto out;
        }
        r = PQexec(pq, "BEGIN READ ONLY; SET LOCAL statement_timeout = '60s'");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                query_failed(r, "starting the search's transaction", e);
                goto out;
        }
        PQclear(r);
        r = PQexecParams(pq, SQL_LONG_ENOUGH, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                query_failed(r, "reading the text to search", e);
                goto out;
        }
        if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
                err_set(e, -1, "the text to search needs at least 3 letters or digits");
                goto out;
        }
        PQclear(r);
        r = PQexecParams(pq, SQL_FIND, 2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQnfields(r) != FIND_FIELDS) {
                query_failed(r, "searching", e);
                goto out;
        }
        int n = PQntuples(r);
        for (int i = 0; i < n && i < FIND_LIMIT; i++)
                for (int c = 0; c < FIND_FIELDS; c++) {
                        put_field(out, r, i, c);
                        fputc(c + 1 < FIND_FIELDS ? '\t' : '\n', out);
                }
        if (n > FIND_LIMIT)
                fprintf(err, "easypost-syncd: more than %d matches, the first %d shown: a longer "
                             "text finds fewer\n", FIND_LIMIT, FIND_LIMIT);
        if (fflush(out) != 0) {
                err_set(e, -1, "writing the matches failed");
                goto out;
        }
        rc = n > 0 ? FIND_FOUND : FIND_NONE;
out:
        PQclear(r);
        PQfinish(pq);
        return rc;
}
