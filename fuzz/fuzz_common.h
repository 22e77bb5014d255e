/*
 * fuzz_common.h - checks shared by the epevent targets (header-only: each
 * target is one translation unit plus the project's sources).
 */
#ifndef EPS_FUZZ_COMMON_H
#define EPS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "epevent.h"

/* True when the JSON text s holds a \u0000 escape (not an escaped backslash
 * followed by "u0000"): PostgreSQL's jsonb refuses those. */
static inline bool
fuzz_has_nul_escape(const char *s, size_t n)
{
        for (size_t i = 0; i + 1 < n; i++) {
                if (s[i] != '\\')
                        continue;
                if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
                        return true;
                i++; /* skip the escaped character */
        }
        return false;
}

static inline size_t
fuzz_strnlen(const char *s, size_t cap)
{
        const char *z = memchr(s, '\0', cap);
        if (z == NULL)
                abort(); /* a fixed-size field left unterminated */
        return (size_t)(z - s);
}

/* The invariants of a successfully parsed event. */
static inline void
fuzz_check_event(const struct epevent *ev)
{
        size_t n = fuzz_strnlen(ev->id, sizeof(ev->id));
        if (n == 0 || n > EPEVENT_ID_MAX)
                abort();
        n = fuzz_strnlen(ev->description, sizeof(ev->description));
        if (n == 0 || n > EPEVENT_DESC_MAX)
                abort();
        fuzz_strnlen(ev->mode, sizeof(ev->mode));
        fuzz_strnlen(ev->object_id, sizeof(ev->object_id));
        fuzz_strnlen(ev->created_at, sizeof(ev->created_at));
        if (ev->created_at[0] && !epevent_valid_time(ev->created_at))
                abort();
        if (ev->has_nul) {
                if (ev->clean == NULL ||
                    fuzz_has_nul_escape(ev->clean, strlen(ev->clean)))
                        abort();
        } else if (ev->clean != NULL) {
                abort();
        }
}

/* True when every number in the valid JSON text s fits PostgreSQL's numeric,
 * which jsonb uses: at most 16383 digits after the point once the exponent is
 * applied (dscale); "value overflows numeric format" otherwise. (The weight
 * limit, 131072 integer digits, is out of reach of any number epevent takes.) */
static inline bool
fuzz_numbers_fit_numeric(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '"') {
                        for (i++; i < n && s[i] != '"'; i++)
                                if (s[i] == '\\')
                                        i++;
                        continue;
                }
                if (s[i] != '-' && (s[i] < '0' || s[i] > '9'))
                        continue;
                long frac = 0, exp = 0;
                bool neg = false;
                if (s[i] == '-')
                        i++;
                while (i < n && s[i] >= '0' && s[i] <= '9')
                        i++;
                if (i < n && s[i] == '.')
                        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                                frac++;
                if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                        i++;
                        if (i < n && (s[i] == '+' || s[i] == '-'))
                                neg = s[i++] == '-';
                        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                                if (exp < 1000000)
                                        exp = exp * 10 + (s[i] - '0');
                }
                if ((neg ? frac + exp : frac - exp) > 16383)
                        return false;
                i--;
        }
        return true;
}


#endif
