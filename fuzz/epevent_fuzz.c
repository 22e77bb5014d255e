/*
 * epevent_fuzz.c - libFuzzer target for epevent_parse on arbitrary bodies.
 *
 * A parsed event must satisfy the field invariants (terminated, bounded,
 * created_at valid or empty, a NUL-free `clean` exactly when has_nul), and its
 * `clean` document must parse again to the same id and description without
 * any U+0000 left (created_at, mode and result.id may differ: a value that
 * held U+0000 was dropped from the original and is clean in the copy). A
 * refusal must carry a message. Differential: whatever epevent accepts, jansson
 * (strict JSON, duplicates refused) must accept too, unless jansson only
 * refuses a number's range (it stops at 64-bit integers and doubles; numbers
 * up to PostgreSQL's numeric are fine for jsonb), and every number it accepts
 * must fit numeric (jsonb refuses the body otherwise). A typed tracker
 * snapshot (ev.trk) must say exactly what jansson's tree says: each field the
 * string there (NULL for null or absent, never for another type), the
 * details in order, carrier_detail and tracking_location the same JSON.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epevent.h"
#include "fuzz_common.h"

/* v is the string s says, or s is NULL and v is null or absent. */
static void
same_str(struct epstr s, json_t *v)
{
        if (s.p == NULL) {
                if (v != NULL && !json_is_null(v))
                        abort();
                return;
        }
        if (!json_is_string(v) || json_string_length(v) != s.n || memcmp(json_string_value(v), s.p, s.n) != 0)
                abort();
}

/* s is the JSON text of v (or both absent). */
static void
same_json(struct epstr s, json_t *v)
{
        if (s.p == NULL) {
                if (v != NULL)
                        abort();
                return;
        }
        json_t *w = json_loadb(s.p, s.n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (w == NULL || !json_equal(w, v))
                abort();
        json_decref(w);
}

static void
check_tracker(const struct epevent *ev, json_t *root)
{
        const struct eptracker *t = ev->trk;
        json_t *r = json_object_get(root, "result");

        if (!json_is_object(r) || strncmp(ev->object_id, "trk_", 4) != 0)
                abort();
        same_str(t->ev_updated, json_object_get(root, "updated_at"));
        same_str(t->ev_created, json_object_get(root, "created_at"));
        same_str(t->shp, json_object_get(r, "shipment_id"));
        same_str(t->mode, json_object_get(r, "mode"));
        same_str(t->code, json_object_get(r, "tracking_code"));
        same_str(t->carrier, json_object_get(r, "carrier"));
        same_str(t->status, json_object_get(r, "status"));
        same_str(t->status_detail, json_object_get(r, "status_detail"));
        same_str(t->est, json_object_get(r, "est_delivery_date"));
        same_str(t->signed_by, json_object_get(r, "signed_by"));
        same_str(t->url, json_object_get(r, "public_url"));
        same_str(t->created, json_object_get(r, "created_at"));
        same_str(t->updated, json_object_get(r, "updated_at"));
        same_json(t->cdetail, json_object_get(r, "carrier_detail"));
        json_t *d = json_object_get(r, "tracking_details");
        size_t n = json_is_array(d) ? json_array_size(d) : 0;
        if ((d != NULL && !json_is_null(d) && !json_is_array(d)) || t->ndetails != n || t->nd != n)
                abort();
        for (size_t i = 0; i < n; i++) {
                json_t *o = json_array_get(d, i);
                const struct epdetail *x = &t->d[i];
                if (!json_is_object(o) || x->pos != i + 1)
                        abort();
                same_str(x->status, json_object_get(o, "status"));
                same_str(x->status_detail, json_object_get(o, "status_detail"));
                same_str(x->message, json_object_get(o, "message"));
                same_str(x->description, json_object_get(o, "description"));
                same_str(x->carrier_code, json_object_get(o, "carrier_code"));
                same_str(x->source, json_object_get(o, "source"));
                same_str(x->datetime, json_object_get(o, "datetime"));
                json_t *loc = json_object_get(o, "tracking_location");
                same_json(x->location, json_is_object(loc) ? loc : NULL);
        }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct epevent ev, again;
        struct err e = { 0 };

        if (epevent_parse(data, size, &ev, &e) != 0) {
                if (e.msg[0] == '\0' || ev.clean != NULL)
                        abort();
                return 0;
        }
        fuzz_check_event(&ev);
        json_error_t jerr;
        json_t *root = json_loadb((const char *)data, size,
                                  JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        if (root == NULL && json_error_code(&jerr) != json_error_numeric_overflow) {
                fprintf(stderr, "epevent accepted what jansson refuses: %s\n", jerr.text);
                abort();
        }
        if (ev.trk && root)
                check_tracker(&ev, root);
        json_decref(root);
        bool fits = fuzz_numbers_fit_numeric((const char *)data, size);
        if (!fits) {
                fprintf(stderr, "epevent accepted a number PostgreSQL's numeric cannot hold\n");
                abort();
        }
        if (ev.has_nul) {
                if (epevent_parse(ev.clean, strlen(ev.clean), &again, &e) != 0)
                        abort(); /* the projection's copy must still be an Event */
                if (again.has_nul || strcmp(again.id, ev.id) != 0 ||
                    strcmp(again.description, ev.description) != 0)
                        abort();
                epevent_fini(&again);
        }
        epevent_fini(&ev);
        return 0;
}
