/*
 * extract_fuzz.c - libFuzzer target for the C side of the projection's input:
 * epevent_valid_time and epevent_parse's U+0000 stripping. (The projection
 * itself runs in SQL, eps_project_tracker in sql/0002_shipments.sql.)
 *
 * Byte 0 picks the part:
 *  even - the rest is a timestamp. Whatever epevent_valid_time accepts goes to
 *         PostgreSQL as a timestamptz parameter, so it is checked against a
 *         reference of what PostgreSQL 15 accepts for this grammar (offset
 *         hours 0..15, minutes 0..59, a real calendar date, 1970 or later).
 *         A rejected valid-looking time only costs created_at, so the check
 *         is one-sided: accepted => PostgreSQL accepts.
 *  odd  - the rest is a JSON value placed in an otherwise valid Event
 *         ({"id":..,"object":"Event","description":..,"x": VALUE}). When it
 *         parses, has_nul must say exactly whether a string held U+0000, and
 *         `clean` must equal the same tree with every U+0000 removed.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epevent.h"
#include "fuzz_common.h"

static bool
dig(const char *s, int n)
{
        for (int i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

static int
val(const char *s, int n)
{
        int v = 0;
        for (int i = 0; i < n; i++)
                v = v * 10 + s[i] - '0';
        return v;
}

/* PostgreSQL's view of YYYY-MM-DD[T ]HH:MM:SS[.f*][Z|(+|-)HH[[:]MM]] (the
 * grammar epevent_valid_time claims), written independently of it. */
static bool
pg_accepts(const char *s, bool any_minutes)
{
        static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        size_t n = strlen(s);

        if (n < 19 || !dig(s, 4) || s[4] != '-' || !dig(s + 5, 2) || s[7] != '-' ||
            !dig(s + 8, 2) || (s[10] != 'T' && s[10] != ' ') || !dig(s + 11, 2) || s[13] != ':' ||
            !dig(s + 14, 2) || s[16] != ':' || !dig(s + 17, 2))
                return false;
        int y = val(s, 4), mo = val(s + 5, 2), d = val(s + 8, 2);
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap))
                return false;
        if (val(s + 11, 2) > 23 || val(s + 14, 2) > 59 || val(s + 17, 2) > 59)
                return false;
        const char *p = s + 19;
        if (*p == '.')
                for (p++; *p >= '0' && *p <= '9'; p++)
                        ;
        if (*p == '\0' || strcmp(p, "Z") == 0)
                return true;
        if ((*p != '+' && *p != '-') || !dig(p + 1, 2))
                return false;
        int oh = val(p + 1, 2), om = 0;
        if (p[3] == '\0')
                om = 0;
        else if (p[3] == ':' && dig(p + 4, 2) && p[6] == '\0')
                om = val(p + 4, 2);
        else if (dig(p + 3, 2) && p[5] == '\0')
                om = val(p + 3, 2);
        else
                return false;
        return oh <= 15 && (om <= 59 || any_minutes);
}

/* Copy of v with U+0000 removed from every string; *found if any was. */
static json_t *
without_nul(json_t *v, bool *found)
{
        if (json_is_string(v)) {
                size_t n = json_string_length(v), k = 0;
                const char *s = json_string_value(v);
                char *buf = xmalloc(n + 1);
                for (size_t i = 0; i < n; i++) {
                        if (s[i] == '\0')
                                *found = true;
                        else
                                buf[k++] = s[i];
                }
                json_t *out = json_stringn(buf, k);
                free(buf);
                return out;
        }
        if (json_is_object(v)) {
                json_t *out = json_object();
                const char *key;
                json_t *child;
                json_object_foreach(v, key, child)
                        json_object_set_new(out, key, without_nul(child, found));
                return out;
        }
        if (json_is_array(v)) {
                json_t *out = json_array();
                size_t i;
                json_t *child;
                json_array_foreach(v, i, child)
                        json_array_append_new(out, without_nul(child, found));
                return out;
        }
        return json_incref(v);
}

static void
check_time(const uint8_t *data, size_t size)
{
        char s[64];

        if (size >= sizeof(s))
                size = sizeof(s) - 1;
        memcpy(s, data, size);
        s[size] = '\0';
        if (epevent_valid_time(s) && !pg_accepts(s, false)) {
                fprintf(stderr, "epevent_valid_time accepts \"%s\", which PostgreSQL refuses\n", s);
                abort();
        }
}

static void
check_nul(const uint8_t *data, size_t size)
{
        static const char pre[] = "{\"id\":\"evt_fuzz\",\"object\":\"Event\","
                                  "\"description\":\"fuzz.test\",\"x\":";
        size_t n = sizeof(pre) - 1 + size + 1;
        char *body = xmalloc(n);
        struct epevent ev;
        struct err e;

        memcpy(body, pre, sizeof(pre) - 1);
        memcpy(body + sizeof(pre) - 1, data, size);
        body[n - 1] = '}';
        if (epevent_parse(body, n, &ev, &e) == 0) {
                fuzz_check_event(&ev);
                json_error_t jerr;
                json_t *orig = json_loadb(body, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
                if (orig == NULL) {
                        /* only a number beyond jansson's range (fine for jsonb) may differ */
                        if (json_error_code(&jerr) != json_error_numeric_overflow)
                                abort();
                        epevent_fini(&ev);
                        free(body);
                        return;
                }
                bool found = false;
                json_t *want = without_nul(orig, &found);
                if (found != ev.has_nul)
                        abort();
                if (found) {
                        json_t *got =
                                json_loadb(ev.clean, strlen(ev.clean), JSON_REJECT_DUPLICATES, NULL);
                        if (got == NULL || !json_equal(got, want))
                                abort();
                        json_decref(got);
                }
                json_decref(want);
                json_decref(orig);
                epevent_fini(&ev);
        }
        free(body);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        if (data[0] % 2 == 0)
                check_time(data + 1, size - 1);
        else
                check_nul(data + 1, size - 1);
        return 0;
}
