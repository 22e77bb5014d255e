/*
 * epevent.c - jansson-based validation of an EasyPost Event.
 *
 * Rules: a JSON object (no duplicate keys, valid UTF-8, nesting within
 * jansson's limit), "object" == "Event", string "id" and "description" of
 * sane length. Everything else in the document is kept as sent.
 */
#include "epevent.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int
copy_str(char *dst, size_t cap, json_t *v)
{
        size_t n = json_string_length(v);

        if (n >= cap || memchr(json_string_value(v), '\0', n) != NULL)
                return -1;
        memcpy(dst, json_string_value(v), n);
        dst[n] = '\0';
        return 0;
}

/* Removes U+0000 from every string in the tree; true if any was found. */
static bool
strip_nul(json_t *v)
{
        bool found = false;

        if (json_is_string(v)) {
                size_t n = json_string_length(v);
                const char *s = json_string_value(v);
                if (memchr(s, '\0', n) == NULL)
                        return false;
                char *buf = xmalloc(n);
                size_t k = 0;
                for (size_t i = 0; i < n; i++)
                        if (s[i] != '\0')
                                buf[k++] = s[i];
                json_string_setn(v, buf, k);
                free(buf);
                return true;
        }
        if (json_is_object(v)) {
                const char *key;
                json_t *child;
                json_object_foreach(v, key, child)
                        found |= strip_nul(child);
        } else if (json_is_array(v)) {
                size_t i;
                json_t *child;
                json_array_foreach(v, i, child)
                        found |= strip_nul(child);
        }
        return found;
}

static bool
digits(const char *s, int n)
{
        for (int i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

static int
num(const char *s, int n)
{
        int v = 0;

        for (int i = 0; i < n; i++)
                v = v * 10 + (s[i] - '0');
        return v;
}

bool
epevent_valid_time(const char *s)
{
        static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        size_t n = strlen(s);

        /* YYYY-MM-DDTHH:MM:SS[.fff][Z|+hh:mm|-hh:mm] */
        if (n < 19 || n > 35 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) ||
            s[7] != '-' || !digits(s + 8, 2) || (s[10] != 'T' && s[10] != ' ') ||
            !digits(s + 11, 2) || s[13] != ':' || !digits(s + 14, 2) || s[16] != ':' ||
            !digits(s + 17, 2))
                return false;
        int y = num(s, 4), mo = num(s + 5, 2), d = num(s + 8, 2);
        if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
            num(s + 11, 2) > 23 || num(s + 14, 2) > 59 || num(s + 17, 2) > 59)
                return false;
        if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
                return false;
        const char *p = s + 19;
        if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                        return false;
                while (*p >= '0' && *p <= '9')
                        p++;
        }
        if (*p == '\0' || (p[0] == 'Z' && p[1] == '\0'))
                return true;
        if ((*p == '+' || *p == '-') && digits(p + 1, 2) &&
            ((p[3] == ':' && digits(p + 4, 2) && p[6] == '\0') ||
             (digits(p + 3, 2) && p[5] == '\0') || p[3] == '\0'))
                return num(p + 1, 2) <= 15;
        return false;
}

int
epevent_parse(const void *body, size_t len, struct epevent *ev, struct err *e)
{
        json_error_t jerr;
        json_t *root, *v, *result;
        int rc = -1;

        memset(ev, 0, sizeof(*ev));
        if (len == 0) {
                err_set(e, 400, "empty body");
                return -1;
        }
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        if (root == NULL) {
                err_set(e, 400, "invalid JSON at byte %d: %s", jerr.position, jerr.text);
                return -1;
        }
        if (!json_is_object(root)) {
                err_set(e, 400, "body is not a JSON object");
                goto out;
        }
        v = json_object_get(root, "object");
        if (!json_is_string(v) || strcmp(json_string_value(v), "Event") != 0) {
                err_set(e, 400, "not an EasyPost Event: \"object\" must be \"Event\"");
                goto out;
        }
        v = json_object_get(root, "id");
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            copy_str(ev->id, sizeof(ev->id), v) != 0) {
                err_set(e, 400, "\"id\" must be a non-empty string of at most %d bytes",
                        EPEVENT_ID_MAX);
                goto out;
        }
        v = json_object_get(root, "description");
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            copy_str(ev->description, sizeof(ev->description), v) != 0) {
                err_set(e, 400, "\"description\" must be a non-empty string of at most %d bytes",
                        EPEVENT_DESC_MAX);
                goto out;
        }
        v = json_object_get(root, "mode");
        if (json_is_string(v) && copy_str(ev->mode, sizeof(ev->mode), v) != 0)
                ev->mode[0] = '\0';
        v = json_object_get(root, "created_at");
        if (json_is_string(v) && copy_str(ev->created_at, sizeof(ev->created_at), v) == 0 &&
            !epevent_valid_time(ev->created_at))
                ev->created_at[0] = '\0';
        result = json_object_get(root, "result");
        if (json_is_object(result)) {
                v = json_object_get(result, "id");
                if (json_is_string(v) && copy_str(ev->object_id, sizeof(ev->object_id), v) != 0)
                        ev->object_id[0] = '\0';
        }
        /* Cheap pre-check on the raw bytes; the tree walk confirms. */
        if (memmem(body, len, "\\u0000", 6) != NULL && strip_nul(root)) {
                ev->has_nul = true;
                ev->clean = json_dumps(root, JSON_COMPACT);
                if (ev->clean == NULL)
                        abort();
                ev->clean_len = strlen(ev->clean);
        }
        rc = 0;
out:
        json_decref(root);
        return rc;
}

void
epevent_fini(struct epevent *ev)
{
        free(ev->clean);
        ev->clean = NULL;
}
