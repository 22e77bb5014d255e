/* testutil.c - fixture lookup for the Check suites. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "util.h"

static const char *
top_srcdir(void)
{
        const char *s = getenv("abs_top_srcdir");
        return s && s[0] ? s : EPS_SRCDIR;
}

const char *
srcdir_path(const char *rel)
{
        static char buf[4096];

        snprintf(buf, sizeof(buf), "%s/%s", top_srcdir(), rel);
        return buf;
}

const char *
fixtures_dir(void)
{
        static char buf[4096];
        struct stat st;
        const char *env = getenv("EASYPOST_FIXTURES");

        if (env && env[0])
                snprintf(buf, sizeof(buf), "%s", env);
        else
                snprintf(buf, sizeof(buf), "%s/../shared/fixtures/easypost", top_srcdir());
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
                return NULL;
        return buf;
}

char *
fixture_read(const char *name, size_t *len)
{
        char path[4200];
        struct err e;
        const char *dir = fixtures_dir();

        if (dir == NULL)
                return NULL;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *p = file_read_all(path, len, &e);
        ck_assert_msg(p != NULL, "fixture %s: %s", name, e.msg);
        return p;
}
