/*
 * epevent.c - validation of an EasyPost Event and extraction of its fields.
 *
 * Rules: a JSON object (no duplicate keys, valid UTF-8, nesting at most
 * EPEVENT_MAX_DEPTH), "object" == "Event", string "id" and "description" of
 * sane length. Everything else in the document is kept as sent.
 */
#include "epevent.h"

#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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
epevent_id_plain(const char *s)
{
        if (*s == '\0')
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
                        return false;
        return true;
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
        if ((*p == '+' || *p == '-') && digits(p + 1, 2)) {
                int om;
                if (p[3] == '\0')
                        om = 0;
                else if (p[3] == ':' && digits(p + 4, 2) && p[6] == '\0')
                        om = num(p + 4, 2);
                else if (digits(p + 3, 2) && p[5] == '\0')
                        om = num(p + 3, 2);
                else
                        return false;
                /* PostgreSQL: "time zone displacement out of range" beyond 15:59 */
                return num(p + 1, 2) <= 15 && om <= 59;
        }
        return false;
}

/*
 * The scanner: one pass over the raw bytes that validates the whole document
 * as strict JSON (UTF-8, escapes and surrogate pairs, no control characters
 * in strings, numbers PostgreSQL's numeric can hold, nesting at most
 * EPEVENT_MAX_DEPTH, no duplicate keys in any object) and copies out only
 * the fields ingest needs. No tree is built: PostgreSQL parses the body once
 * more into jsonb anyway, and a DOM here was the largest cost per event.
 */
#define EPEVENT_MAX_DEPTH 512
#define EPEVENT_MAX_NUM_DIGITS 10000

enum field { F_NONE, F_ID, F_OBJECT, F_DESC, F_MODE, F_CREATED, F_RESULT_ID };

/* Which object the scanner is in: only these three have fields it keeps. */
enum ctx { CTX_OTHER, CTX_TOP, CTX_RESULT, CTX_DETAIL };

struct scan {
        const unsigned char *start, *p, *end;
        struct epevent *ev;
        struct err *e;
        bool has_nul;
        bool object_is_event;
        int seen;                 /* bitmask of F_* captured */
        struct eptracker *t;      /* the typed snapshot being filled */
        bool result_object;       /* "result" is an object */
        bool untyped;             /* something the typed snapshot cannot say exactly */
        size_t detail;            /* the detail object being scanned: its index in t->d */
        uint64_t *keys;           /* key hashes of the open objects, a stack */
        size_t nkeys, capkeys;
};

static int
fail(struct scan *s, const char *what)
{
        if (s->e->code == 0)
                err_set(s->e, 400, "invalid JSON at byte %ld: %s", (long)(s->p - s->start), what);
        return -1;
}

static void
skip_ws(struct scan *s)
{
        while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
                s->p++;
}

static int
hexval(unsigned char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static int
hex4(struct scan *s, unsigned *out)
{
        unsigned v = 0;

        if (s->end - s->p < 4)
                return -1;
        for (int i = 0; i < 4; i++) {
                int h = hexval(s->p[i]);
                if (h < 0)
                        return -1;
                v = (v << 4) | (unsigned)h;
        }
        s->p += 4;
        *out = v;
        return 0;
}

/* Appends a decoded byte: into out while it fits, into the hash always. */
static inline void
emit(unsigned char c, char *out, size_t cap, size_t *n, uint64_t *h)
{
        if (out && *n + 1 < cap)
                out[*n] = (char)c;
        (*n)++;
        *h = (*h ^ c) * 0x100000001b3ULL;
}

/* Valid UTF-8 sequence starting at p (first byte >= 0x80)? Returns its length or 0. */
static size_t
utf8_len(const unsigned char *p, const unsigned char *end)
{
        unsigned char c = p[0];
        size_t n;
        unsigned cp;

        if (c >= 0xc2 && c <= 0xdf) {
                n = 2;
                cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
                n = 3;
                cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;
                cp = c & 0x07;
        } else {
                return 0;
        }
        if ((size_t)(end - p) < n)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                return 0;
        return n;
}

/* Bytes from p that need no decoding: printable ASCII other than '"' and
 * '\\'. Sixteen at a time where SSE2 is there (every x86-64): compared as
 * signed bytes, anything at or above 0x80 is below 0x20 too. */
static inline size_t
plain_run(const unsigned char *p, const unsigned char *end)
{
        const unsigned char *q = p;
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
        const __m128i space = _mm_set1_epi8(0x20);
        while (end - q >= 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)(const void *)q);
                __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                         _mm_cmplt_epi8(v, space));
                unsigned bits = (unsigned)_mm_movemask_epi8(m);
                if (bits)
                        return (size_t)(q - p) + (size_t)__builtin_ctz(bits);
                q += 16;
        }
#endif
        while (q < end && *q >= 0x20 && *q < 0x80 && *q != '"' && *q != '\\')
                q++;
        return (size_t)(q - p);
}

/* The hash of a decoded key shorter than scan_object's buffer, a word at a
 * time. Keys of one length always take the same hash (longer keys take the
 * streaming one of scan_string), so equal keys hash equal; for keys of up to
 * eight bytes the hash is a bijection of the word, and no two collide.
 * `readable` bytes from k may be read: where eight can be, the last word is
 * one load with the bytes past the key masked off, the same word the copy
 * into a zeroed one gives on a little-endian machine. */
static inline uint64_t
hash_short(const char *k, size_t n, size_t readable)
{
        uint64_t h = 0x9e3779b97f4a7c15ULL, w;
        size_t i = 0;

        for (; n - i > 8; i += 8) {
                memcpy(&w, k + i, 8);
                h = (h ^ w) * 0xff51afd7ed558ccdULL;
                h ^= h >> 32;
        }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (readable - i >= 8) {
                memcpy(&w, k + i, 8);
                if (n - i < 8)
                        w &= (UINT64_C(1) << (8 * (n - i))) - 1;
        } else
#endif
        {
                (void)readable;
                w = 0;
                memcpy(&w, k + i, n - i);
        }
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
        return h ^ (h >> 29);
}

/*
 * A string at s->p (on the opening quote). Decoded bytes go to out (NUL-
 * terminated, truncated to cap; *len is the full decoded length) and into
 * *hash (FNV-1a), so keys compare as PostgreSQL compares them.
 */
static int
scan_string(struct scan *s, char *out, size_t cap, size_t *len, uint64_t *hash)
{
        uint64_t h = 0xcbf29ce484222325ULL;
        size_t n = 0;

        s->p++; /* opening quote */
        while (s->p < s->end) {
                {
                        /* plain ASCII runs need no decoding: copied (and hashed) whole */
                        const unsigned char *q = s->p;
                        if (hash) {
                                while (q < s->end && *q >= 0x20 && *q < 0x80 && *q != '"' && *q != '\\') {
                                        h = (h ^ *q) * 0x100000001b3ULL;
                                        q++;
                                }
                        } else {
                                q += plain_run(q, s->end);
                        }
                        size_t run = (size_t)(q - s->p);
                        if (out && n < cap)
                                memcpy(out + n, s->p, run < cap - n ? run : cap - n);
                        n += run;
                        s->p = q;
                        if (s->p >= s->end)
                                break;
                }
                unsigned char c = *s->p;
                if (c == '"') {
                        s->p++;
                        if (out && cap)
                                out[n < cap ? n : cap - 1] = '\0';
                        *len = n;
                        if (hash)
                                *hash = h;
                        return 0;
                }
                if (c < 0x20)
                        return fail(s, "control character in a string");
                if (c == '\\') {
                        if (s->end - s->p < 2)
                                break;
                        unsigned char esc = s->p[1];
                        s->p += 2;
                        switch (esc) {
                        case '"': emit('"', out, cap, &n, &h); break;
                        case '\\': emit('\\', out, cap, &n, &h); break;
                        case '/': emit('/', out, cap, &n, &h); break;
                        case 'b': emit('\b', out, cap, &n, &h); break;
                        case 'f': emit('\f', out, cap, &n, &h); break;
                        case 'n': emit('\n', out, cap, &n, &h); break;
                        case 'r': emit('\r', out, cap, &n, &h); break;
                        case 't': emit('\t', out, cap, &n, &h); break;
                        case 'u': {
                                unsigned cp, lo;
                                if (hex4(s, &cp) != 0)
                                        return fail(s, "bad \\u escape");
                                if (cp >= 0xdc00 && cp <= 0xdfff)
                                        return fail(s, "lone low surrogate");
                                if (cp >= 0xd800 && cp <= 0xdbff) {
                                        if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u')
                                                return fail(s, "high surrogate without its pair");
                                        s->p += 2;
                                        if (hex4(s, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
                                                return fail(s, "high surrogate without its pair");
                                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                                }
                                if (cp == 0)
                                        s->has_nul = true;
                                if (cp < 0x80) {
                                        emit((unsigned char)cp, out, cap, &n, &h);
                                } else if (cp < 0x800) {
                                        emit((unsigned char)(0xc0 | (cp >> 6)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | (cp & 0x3f)), out, cap, &n, &h);
                                } else if (cp < 0x10000) {
                                        emit((unsigned char)(0xe0 | (cp >> 12)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | ((cp >> 6) & 0x3f)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | (cp & 0x3f)), out, cap, &n, &h);
                                } else {
                                        emit((unsigned char)(0xf0 | (cp >> 18)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | ((cp >> 12) & 0x3f)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | ((cp >> 6) & 0x3f)), out, cap, &n, &h);
                                        emit((unsigned char)(0x80 | (cp & 0x3f)), out, cap, &n, &h);
                                }
                                break;
                        }
                        default:
                                return fail(s, "bad escape");
                        }
                        continue;
                }
                if (c < 0x80) {
                        emit(c, out, cap, &n, &h);
                        s->p++;
                        continue;
                }
                size_t k = utf8_len(s->p, s->end);
                if (k == 0)
                        return fail(s, "invalid UTF-8");
                for (size_t i = 0; i < k; i++)
                        emit(s->p[i], out, cap, &n, &h);
                s->p += k;
        }
        return fail(s, "unterminated string");
}

static int
scan_number(struct scan *s)
{
        long digits = 0, frac = 0, exp = 0;
        bool neg_exp = false;

        if (s->p < s->end && *s->p == '-')
                s->p++;
        if (s->p < s->end && *s->p == '0') {
                s->p++;
                digits = 1;
        } else if (s->p < s->end && *s->p >= '1' && *s->p <= '9') {
                while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
                        s->p++;
                        digits++;
                }
        } else {
                return fail(s, "bad number");
        }
        if (s->p < s->end && *s->p == '.') {
                s->p++;
                if (s->p >= s->end || *s->p < '0' || *s->p > '9')
                        return fail(s, "bad number");
                while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
                        s->p++;
                        digits++;
                        frac++;
                }
        }
        if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
                s->p++;
                if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
                        neg_exp = *s->p++ == '-';
                if (s->p >= s->end || *s->p < '0' || *s->p > '9')
                        return fail(s, "bad number");
                while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
                        if (exp < 1000000)
                                exp = exp * 10 + (*s->p - '0');
                        s->p++;
                }
        }
        /* beyond what PostgreSQL's numeric (and anyone's number) holds */
        /* ... and numeric keeps at most 16383 digits after the point */
        if (digits > EPEVENT_MAX_NUM_DIGITS || exp > EPEVENT_MAX_NUM_DIGITS ||
            (neg_exp && frac + exp > 16383))
                return fail(s, "number out of range");
        return 0;
}

static int
scan_literal(struct scan *s, const char *lit, size_t n)
{
        if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
                return fail(s, "unexpected character");
        s->p += n;
        return 0;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* Objects are small: insertion sort, qsort only for a big one. */
static void
sort_u64(uint64_t *a, size_t n)
{
        if (n > 24) {
                qsort(a, n, sizeof(*a), cmp_u64);
                return;
        }
        for (size_t i = 1; i < n; i++) {
                uint64_t v = a[i];
                size_t j = i;
                for (; j > 0 && a[j - 1] > v; j--)
                        a[j] = a[j - 1];
                a[j] = v;
        }
}

static int scan_value(struct scan *s, int depth, enum field f);
static int scan_object(struct scan *s, int depth, enum ctx ctx);

/* Where a key's value goes: only the top object and its "result" matter. */
static enum field
field_for(enum ctx ctx, const char *key, size_t len)
{
        if (ctx == CTX_TOP) {
                if (len == 2 && memcmp(key, "id", 2) == 0)
                        return F_ID;
                if (len == 6 && memcmp(key, "object", 6) == 0)
                        return F_OBJECT;
                if (len == 11 && memcmp(key, "description", 11) == 0)
                        return F_DESC;
                if (len == 4 && memcmp(key, "mode", 4) == 0)
                        return F_MODE;
                if (len == 10 && memcmp(key, "created_at", 10) == 0)
                        return F_CREATED;
                if (len == 6 && memcmp(key, "result", 6) == 0)
                        return F_RESULT_ID; /* the object itself; its "id" below */
        } else if (ctx == CTX_RESULT && len == 2 && memcmp(key, "id", 2) == 0) {
                return F_RESULT_ID;
        }
        return F_NONE;
}

/* A string value for the typed snapshot: decoded into the arena; null
 * leaves dst absent; any other value makes the snapshot untyped. */
static int
tcap(struct scan *s, int depth, struct epstr *dst)
{
        struct eptracker *t = s->t;

        if (s->p < s->end && *s->p == '"') {
                size_t len;
                char *out = t->arena + t->used;
                size_t cap = t->cap - t->used;
                if (scan_string(s, out, cap, &len, NULL) != 0)
                        return -1;
                if (len >= cap) { /* cannot be: decoded text is shorter than the body */
                        s->untyped = true;
                        return 0;
                }
                dst->p = out;
                dst->n = len;
                t->used += len;
                return 0;
        }
        if (s->p < s->end && *s->p == 'n')
                return scan_literal(s, "null", 4);
        s->untyped = true;
        return scan_value(s, depth, F_NONE);
}

/* A value kept as its JSON text (PostgreSQL casts it to jsonb). */
static int
tspan(struct scan *s, int depth, struct epstr *dst)
{
        struct eptracker *t = s->t;
        const unsigned char *from = s->p;

        if (scan_value(s, depth, F_NONE) != 0)
                return -1;
        size_t n = (size_t)(s->p - from);
        if (n >= t->cap - t->used) {
                s->untyped = true;
                return 0;
        }
        memcpy(t->arena + t->used, from, n);
        dst->p = t->arena + t->used;
        dst->n = n;
        t->used += n;
        return 0;
}

static bool
key_is(const char *key, size_t len, const char *name)
{
        return strlen(name) == len && memcmp(key, name, len) == 0;
}

/* A field of the typed snapshot: its key and where it goes. */
struct tfield {
        const char *name;
        size_t len;
        size_t off;
};
#define TFIELD(name, type, member) { name, sizeof(name) - 1, offsetof(type, member) }

static const struct tfield *
tfield_find(const struct tfield *f, size_t n, const char *key, size_t klen)
{
        for (size_t i = 0; i < n; i++)
                if (f[i].len == klen && f[i].name[0] == key[0] && /* names are never empty */
                    memcmp(f[i].name, key, klen) == 0)
                        return &f[i];
        return NULL;
}

/* tracking_details: an array of objects, each typed (anything else: untyped). */
static int
scan_details(struct scan *s, int depth)
{
        struct eptracker *t = s->t;

        s->p++; /* [ */
        skip_ws(s);
        if (s->p < s->end && *s->p == ']') {
                s->p++;
                return 0;
        }
        for (;;) {
                skip_ws(s);
                if (depth + 1 > EPEVENT_MAX_DEPTH)
                        return fail(s, "nested too deep");
                t->ndetails++;
                if (s->p < s->end && *s->p == '{') {
                        if (t->nd == t->capd) {
                                t->capd = t->capd ? t->capd * 2 : 16;
                                t->d = xrealloc(t->d, t->capd * sizeof(*t->d));
                        }
                        memset(&t->d[t->nd], 0, sizeof(t->d[0]));
                        t->d[t->nd].pos = t->ndetails;
                        s->detail = t->nd++;
                        if (scan_object(s, depth + 1, CTX_DETAIL) != 0)
                                return -1;
                } else {
                        s->untyped = true;
                        if (scan_value(s, depth + 1, F_NONE) != 0)
                                return -1;
                }
                skip_ws(s);
                if (s->p < s->end && *s->p == ',') {
                        s->p++;
                        continue;
                }
                if (s->p < s->end && *s->p == ']') {
                        s->p++;
                        return 0;
                }
                return fail(s, "expected ',' or ']'");
        }
}

/* The value of key in an object of the typed snapshot; 1 when it is none of its fields. */
static int
scan_typed(struct scan *s, int depth, enum ctx ctx, const char *key, size_t klen)
{
        struct eptracker *t = s->t;

        if (ctx == CTX_TOP) {
                if (key_is(key, klen, "updated_at"))
                        return tcap(s, depth, &t->ev_updated);
                if (key_is(key, klen, "created_at")) {
                        /* also the event's own created_at, as capture() keeps it */
                        struct epstr v = { NULL, 0 };
                        if (tcap(s, depth, &v) != 0)
                                return -1;
                        t->ev_created = v;
                        if (v.p && v.n < sizeof(s->ev->created_at) && memchr(v.p, '\0', v.n) == NULL) {
                                memcpy(s->ev->created_at, v.p, v.n);
                                s->ev->created_at[v.n] = '\0';
                                s->seen |= 1 << F_CREATED;
                        }
                        return 0;
                }
                return 1;
        }
        if (ctx == CTX_RESULT) {
                static const struct tfield f[] = {
                        TFIELD("shipment_id", struct eptracker, shp),
                        TFIELD("mode", struct eptracker, mode),
                        TFIELD("tracking_code", struct eptracker, code),
                        TFIELD("carrier", struct eptracker, carrier),
                        TFIELD("status", struct eptracker, status),
                        TFIELD("status_detail", struct eptracker, status_detail),
                        TFIELD("est_delivery_date", struct eptracker, est),
                        TFIELD("signed_by", struct eptracker, signed_by),
                        TFIELD("public_url", struct eptracker, url),
                        TFIELD("created_at", struct eptracker, created),
                        TFIELD("updated_at", struct eptracker, updated),
                };
                const struct tfield *tf = tfield_find(f, ARRAY_LEN(f), key, klen);
                if (tf)
                        return tcap(s, depth, (struct epstr *)((char *)t + tf->off));
                if (key_is(key, klen, "carrier_detail"))
                        return tspan(s, depth, &t->cdetail);
                if (key_is(key, klen, "tracking_details")) {
                        if (s->p < s->end && *s->p == '[')
                                return scan_details(s, depth);
                        if (s->p < s->end && *s->p == 'n')
                                return scan_literal(s, "null", 4);
                        s->untyped = true;
                        return scan_value(s, depth, F_NONE);
                }
                return 1;
        }
        if (ctx == CTX_DETAIL) {
                static const struct tfield f[] = {
                        TFIELD("status", struct epdetail, status),
                        TFIELD("status_detail", struct epdetail, status_detail),
                        TFIELD("message", struct epdetail, message),
                        TFIELD("description", struct epdetail, description),
                        TFIELD("carrier_code", struct epdetail, carrier_code),
                        TFIELD("source", struct epdetail, source),
                        TFIELD("datetime", struct epdetail, datetime),
                };
                const struct tfield *tf = tfield_find(f, ARRAY_LEN(f), key, klen);
                if (tf)
                        return tcap(s, depth, (struct epstr *)((char *)&t->d[s->detail] + tf->off));
                if (key_is(key, klen, "tracking_location")) {
                        if (s->p < s->end && *s->p == '{')
                                return tspan(s, depth, &t->d[s->detail].location);
                        return scan_value(s, depth, F_NONE); /* not an object: NULL */
                }
                return 1;
        }
        return 1;
}

static int
scan_object(struct scan *s, int depth, enum ctx ctx)
{
        size_t base = s->nkeys;
        char key[32];

        s->p++; /* { */
        skip_ws(s);
        if (s->p < s->end && *s->p == '}') {
                s->p++;
                return 0;
        }
        for (;;) {
                size_t klen;
                uint64_t h;
                skip_ws(s);
                if (s->p >= s->end || *s->p != '"')
                        return fail(s, "expected a key");
                const unsigned char *kstart = s->p;
                const char *k = key;
                bool nul_before = s->has_nul;
                s->has_nul = false;
                size_t run = plain_run(s->p + 1, s->end);
                if (run < sizeof(key) && s->end - (s->p + 1) > (ptrdiff_t)run && s->p[1 + run] == '"') {
                        /* printable ASCII without escapes (nearly every key): read in place */
                        k = (const char *)s->p + 1;
                        klen = run;
                        s->p += run + 2;
                        h = hash_short(k, klen, (size_t)(s->end - (const unsigned char *)k));
                } else if (scan_string(s, key, sizeof(key), &klen, NULL) != 0) {
                        return -1;
                } else if (klen < sizeof(key)) {
                        h = hash_short(key, klen, sizeof(key));
                } else {
                        /* a long key (rare): hashed whole, in a second pass */
                        const unsigned char *after = s->p;
                        s->p = kstart;
                        if (scan_string(s, NULL, 0, &klen, &h) != 0)
                                return -1;
                        s->p = after;
                }
                if (s->has_nul)
                        return fail(s, "U+0000 in an object key (jsonb cannot hold it)");
                s->has_nul = nul_before;
                if (s->nkeys == s->capkeys) {
                        s->capkeys = s->capkeys ? s->capkeys * 2 : 64;
                        s->keys = xrealloc(s->keys, s->capkeys * sizeof(*s->keys));
                }
                s->keys[s->nkeys++] = h ^ klen;
                skip_ws(s);
                if (s->p >= s->end || *s->p != ':')
                        return fail(s, "expected ':'");
                s->p++;
                skip_ws(s);
                enum field f = klen < sizeof(key) ? field_for(ctx, k, klen) : F_NONE;
                int rc = 1;
                if (ctx == CTX_TOP && f == F_RESULT_ID) {
                        /* "result": an object whose id we want, or anything else */
                        if (s->p < s->end && *s->p == '{') {
                                if (depth + 1 > EPEVENT_MAX_DEPTH)
                                        return fail(s, "nested too deep");
                                s->result_object = true;
                                rc = scan_object(s, depth + 1, CTX_RESULT);
                        } else {
                                rc = scan_value(s, depth + 1, F_NONE);
                        }
                } else if (s->t && ctx != CTX_OTHER && klen < sizeof(key) &&
                           (f == F_NONE || f == F_CREATED)) {
                        if (depth + 1 > EPEVENT_MAX_DEPTH)
                                return fail(s, "nested too deep");
                        rc = scan_typed(s, depth + 1, ctx, k, klen);
                }
                if (rc == 1)
                        rc = scan_value(s, depth + 1, f);
                if (rc != 0)
                        return -1;
                skip_ws(s);
                if (s->p < s->end && *s->p == ',') {
                        s->p++;
                        continue;
                }
                if (s->p < s->end && *s->p == '}') {
                        s->p++;
                        break;
                }
                return fail(s, "expected ',' or '}'");
        }
        size_t n = s->nkeys - base;
        if (n > 1) {
                sort_u64(s->keys + base, n);
                for (size_t i = base + 1; i < s->nkeys; i++)
                        if (s->keys[i] == s->keys[i - 1])
                                return fail(s, "duplicate key");
        }
        s->nkeys = base;
        return 0;
}

static int
capture(struct scan *s, enum field f)
{
        char *dst = NULL;
        size_t cap = 0, len;
        char tmp[16];

        switch (f) {
        case F_ID: dst = s->ev->id; cap = sizeof(s->ev->id); break;
        case F_DESC: dst = s->ev->description; cap = sizeof(s->ev->description); break;
        case F_MODE: dst = s->ev->mode; cap = sizeof(s->ev->mode); break;
        case F_CREATED: dst = s->ev->created_at; cap = sizeof(s->ev->created_at); break;
        case F_RESULT_ID: dst = s->ev->object_id; cap = sizeof(s->ev->object_id); break;
        case F_OBJECT: dst = tmp; cap = sizeof(tmp); break;
        default: break;
        }
        bool nul_before = s->has_nul;
        s->has_nul = false;
        if (scan_string(s, dst, cap, &len, NULL) != 0)
                return -1;
        bool bad = s->has_nul || len >= cap; /* a NUL inside, or too long to keep */
        s->has_nul |= nul_before;
        if (bad) {
                if (f == F_ID || f == F_DESC)
                        s->seen |= 1 << 30; /* reported by the caller */
                dst[0] = '\0';
                return 0;
        }
        s->seen |= 1 << f;
        if (f == F_OBJECT)
                s->object_is_event = strcmp(tmp, "Event") == 0;
        return 0;
}

static int
scan_value(struct scan *s, int depth, enum field f)
{
        if (s->p >= s->end)
                return fail(s, "unexpected end");
        if (depth > EPEVENT_MAX_DEPTH)
                return fail(s, "nested too deep");
        switch (*s->p) {
        case '{':
                return scan_object(s, depth, CTX_OTHER);
        case '[':
                s->p++;
                skip_ws(s);
                if (s->p < s->end && *s->p == ']') {
                        s->p++;
                        return 0;
                }
                for (;;) {
                        skip_ws(s);
                        if (scan_value(s, depth + 1, F_NONE) != 0)
                                return -1;
                        skip_ws(s);
                        if (s->p < s->end && *s->p == ',') {
                                s->p++;
                                continue;
                        }
                        if (s->p < s->end && *s->p == ']') {
                                s->p++;
                                return 0;
                        }
                        return fail(s, "expected ',' or ']'");
                }
        case '"': {
                if (f != F_NONE)
                        return capture(s, f);
                size_t len;
                return scan_string(s, NULL, 0, &len, NULL);
        }
        case 't':
                return scan_literal(s, "true", 4);
        case 'f':
                return scan_literal(s, "false", 5);
        case 'n':
                return scan_literal(s, "null", 4);
        default:
                if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))
                        return scan_number(s);
                return fail(s, "unexpected character");
        }
}

/* Moves the strings into an arena of just their size: the snapshot lives
 * as long as its event is queued, the body-sized arena only while scanning. */
static void
tracker_shrink(struct eptracker *t)
{
        char *a = xmalloc(t->used ? t->used : 1);
        struct epstr *f[] = { &t->shp, &t->mode, &t->code, &t->carrier, &t->status,
                              &t->status_detail, &t->est, &t->signed_by, &t->url, &t->cdetail,
                              &t->created, &t->updated, &t->ev_updated, &t->ev_created };

        memcpy(a, t->arena, t->used);
        for (size_t i = 0; i < ARRAY_LEN(f); i++)
                if (f[i]->p)
                        f[i]->p = a + (f[i]->p - t->arena);
        for (size_t j = 0; j < t->nd; j++) {
                struct epdetail *d = &t->d[j];
                struct epstr *g[] = { &d->status, &d->status_detail, &d->message, &d->description,
                                      &d->carrier_code, &d->source, &d->datetime, &d->location };
                for (size_t i = 0; i < ARRAY_LEN(g); i++)
                        if (g[i]->p)
                                g[i]->p = a + (g[i]->p - t->arena);
        }
        free(t->arena);
        t->arena = a;
        if (t->capd > t->nd && t->nd > 0) {
                t->d = xrealloc(t->d, t->nd * sizeof(*t->d));
                t->capd = t->nd;
        }
        t->cap = t->used;
}

void
eptracker_free(struct eptracker *t)
{
        if (t == NULL)
                return;
        free(t->d);
        free(t->arena);
        free(t);
}

size_t
eptracker_bytes(const struct eptracker *t)
{
        return sizeof(*t) + t->cap + t->capd * sizeof(*t->d);
}

/* Rare path: a body with U+0000 in a string value (always escaped: the
 * scanner refuses a raw control byte, and one in a key) gets a copy for the
 * projection without it, for jsonb cannot hold it: the same text with each
 * \u0000 escape left out, so that every other byte, numbers included, stays
 * as EasyPost sent it. The scanner has checked the JSON. */
static void
make_clean(const char *body, size_t len, struct epevent *ev)
{
        char *out = xmalloc(len + 1);
        size_t k = 0;
        bool in_string = false;

        for (size_t i = 0; i < len; i++) {
                char c = body[i];
                if (in_string && c == '\\') {
                        if (len - i >= 6 && memcmp(body + i + 1, "u0000", 5) == 0) {
                                i += 5;
                                continue;
                        }
                        out[k++] = c;
                        out[k++] = body[++i]; /* the escaped byte: never a closing quote */
                        continue;
                }
                if (c == '"')
                        in_string = !in_string;
                out[k++] = c;
        }
        out[k] = '\0';
        ev->clean = out;
        ev->has_nul = true;
}

int
epevent_parse(const void *body, size_t len, struct epevent *ev, struct err *e)
{
        struct scan s = { .start = body, .p = body, .end = (const unsigned char *)body + len,
                          .ev = ev, .e = e };
        int rc = -1;

        memset(ev, 0, sizeof(*ev));
        e->code = 0;
        e->msg[0] = '\0';
        if (len == 0) {
                err_set(e, 400, "empty body");
                return -1;
        }
        skip_ws(&s);
        if (s.p >= s.end || *s.p != '{') {
                err_set(e, 400, "body is not a JSON object");
                goto out;
        }
        s.t = xcalloc(1, sizeof(*s.t));
        s.t->cap = len + 1;
        s.t->arena = xmalloc(s.t->cap);
        if (scan_object(&s, 1, CTX_TOP) != 0)
                goto out;
        skip_ws(&s);
        if (s.p != s.end) {
                fail(&s, "trailing data after the object");
                goto out;
        }
        if (!s.object_is_event) {
                err_set(e, 400, "not an EasyPost Event: \"object\" must be \"Event\"");
                goto out;
        }
        if (!(s.seen & (1 << F_ID)) || ev->id[0] == '\0') {
                err_set(e, 400, "\"id\" must be a non-empty string of at most %d bytes",
                        EPEVENT_ID_MAX);
                goto out;
        }
        if (!(s.seen & (1 << F_DESC)) || ev->description[0] == '\0') {
                err_set(e, 400, "\"description\" must be a non-empty string of at most %d bytes",
                        EPEVENT_DESC_MAX);
                goto out;
        }
        if (ev->created_at[0] && !epevent_valid_time(ev->created_at))
                ev->created_at[0] = '\0';
        if (s.has_nul)
                make_clean(body, len, ev);
        /* typed only while its details take at most twice the body (a real
         * detail is a few hundred bytes of JSON, its entry 136): a queued event
         * holds at most about four times its size (body, strings, details),
         * whatever a body of empty details would make of it */
        if (s.result_object && !s.untyped && !s.has_nul && s.t->nd * sizeof(*s.t->d) / 2 <= len &&
            strncmp(ev->object_id, "trk_", 4) == 0 &&
            (strcmp(ev->description, "tracker.created") == 0 ||
             strcmp(ev->description, "tracker.updated") == 0)) {
                tracker_shrink(s.t);
                ev->trk = s.t;
                s.t = NULL;
        }
        rc = 0;
out:
        free(s.keys);
        eptracker_free(s.t);
        if (rc != 0)
                ev->id[0] = '\0';
        return rc;
}

void
epevent_fini(struct epevent *ev)
{
        free(ev->clean);
        ev->clean = NULL;
        eptracker_free(ev->trk);
        ev->trk = NULL;
}
