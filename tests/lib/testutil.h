/* testutil.h - helpers shared by the Check suites: fixtures, files, env. */
#ifndef EPS_TESTUTIL_H
#define EPS_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* ../shared/fixtures/easypost beside the source tree, or $EASYPOST_FIXTURES;
 * NULL when absent (tests that need it then report "skipped"). */
const char *fixtures_dir(void);
/* Reads a fixture byte for byte; NULL if the fixtures are absent. Caller frees. */
char *fixture_read(const char *name, size_t *len);
/* Path of a file under the source tree (static buffer). */
const char *srcdir_path(const char *rel);
/* A new file in /tmp holding text (the caller unlinks and frees the path). */
char *tmpfile_with(const char *text);
/* Replaces path's content with text at once (rename). */
void rewrite(const char *path, const char *text);

#define SKIP_WITHOUT_FIXTURES()                                                       \
        do {                                                                          \
                if (fixtures_dir() == NULL) {                                         \
                        fprintf(stderr, "%s: skipped (no fixtures)\n", __func__);     \
                        return;                                                       \
                }                                                                     \
        } while (0)

Suite *sig_suite(void);
Suite *cfg_suite(void);
Suite *epevent_suite(void);
Suite *uuid7_suite(void);
Suite *httpc_suite(void);
Suite *sqlsplit_suite(void);

#endif
