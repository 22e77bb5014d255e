/*
 * cfg_fuzz.c - libFuzzer target for the configuration parser.
 *
 * Byte 0 picks the source the rest of the input is fed through:
 *   0 - a config file (written to a memfd, read back through /proc/self/fd)
 *   1 - environment entries, one "NAME=value" per line
 *   2 - command-line overrides, one "key=value" per line
 *   3 - cfg_split_hostport on the whole input
 * A loaded cfg is validated for both purposes, diffed against the defaults
 * with cfg_keep_static and freed. Inputs naming a *_file key are skipped:
 * those make cfg_load read that file, and the fuzzer must not read (or block
 * on) arbitrary host files; the configuration is trusted input anyway.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cfg.h"

#define MAX_LINES 64

static struct cfg *defaults;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
        char *env[] = { NULL };
        struct err e;

        (void)argc;
        (void)argv;
        defaults = cfg_load(NULL, env, NULL, 0, &e);
        if (defaults == NULL)
                abort();
        return 0;
}

/* Splits text (modified) into at most MAX_LINES lines; returns the count. */
static size_t
lines(char *text, char **out)
{
        size_t n = 0;
        char *save = NULL;

        for (char *l = strtok_r(text, "\n", &save); l && n < MAX_LINES;
             l = strtok_r(NULL, "\n", &save))
                out[n++] = l;
        return n;
}

static void
check(struct cfg *c, const struct err *e)
{
        struct err ve;
        char changed[512];

        if (c == NULL) {
                if (e->msg[0] == '\0')
                        abort(); /* a refusal says why */
                return;
        }
        (void)cfg_validate(c, CFG_FOR_DAEMON, &ve);
        (void)cfg_validate(c, CFG_FOR_MIGRATE, &ve);
        for (size_t i = 0; i < cfg_nkeys; i++) {
                const struct cfg_key *k = &cfg_keys[i];
                if (k->type == CFG_INT) {
                        long v = *(const long *)((const char *)c + k->offset);
                        if (v < k->min || v > k->max)
                                abort(); /* a bound escaped the table */
                } else if (*(char *const *)((const char *)c + k->offset) == NULL) {
                        abort();
                }
        }
        cfg_keep_static(c, defaults, changed, sizeof(changed));
        if (strlen(changed) >= sizeof(changed))
                abort();
        cfg_free(c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct err e = { 0 };
        char *env0[] = { NULL };
        char *ls[MAX_LINES + 1] = { 0 };

        if (size < 1 || memmem(data, size, "_file", 5) || memmem(data, size, "_FILE", 5))
                return 0;
        uint8_t mode = data[0] % 4;
        data++;
        size--;
        char *text = xstrndup((const char *)data, size);

        switch (mode) {
        case 0: {
                char path[64];
                int fd = memfd_create("cfg_fuzz", MFD_CLOEXEC);
                if (fd < 0)
                        abort();
                if (size && write(fd, data, size) != (ssize_t)size)
                        abort();
                snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
                check(cfg_load(path, env0, NULL, 0, &e), &e);
                close(fd);
                break;
        }
        case 1:
                lines(text, ls);
                check(cfg_load(NULL, ls, NULL, 0, &e), &e);
                break;
        case 2: {
                size_t n = lines(text, ls);
                check(cfg_load(NULL, env0, ls, n, &e), &e);
                break;
        }
        case 3: {
                char host[256];
                unsigned port = 0;
                if (cfg_split_hostport(text, host, sizeof(host), &port) == 0 &&
                    (port > 65535 || host[0] == '\0' || strlen(host) >= sizeof(host)))
                        abort();
                break;
        }
        }
        free(text);
        return 0;
}
