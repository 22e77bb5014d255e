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
 * must fit numeric (jsonb refuses the body otherwise).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epevent.h"
#include "fuzz_common.h"

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
