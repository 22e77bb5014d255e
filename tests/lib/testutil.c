/* testutil.c - fixture lookup and temporary files for the Check suites. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

char *
tmpfile_with(const char *text)
{
        char *path = xstrdup("/tmp/eps-test-XXXXXX");
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

void
rewrite(const char *path, const char *text)
{
        char tmp[300];
        snprintf(tmp, sizeof(tmp), "%s.new", path);
        FILE *f = fopen(tmp, "w");
        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        fclose(f);
        ck_assert_int_eq(rename(tmp, path), 0);
}
