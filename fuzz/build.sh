#!/bin/sh
# build.sh [OUTDIR] - builds the libFuzzer targets with clang, ASan and UBSan.
#
# The targets link the pure modules' sources directly (sig, epevent, cfg,
# util, log: no event loop, no libpq), compiled here with clang: the main
# build uses gcc and automake, which know nothing of libFuzzer. Output goes to
# OUTDIR (default build/fuzz, ignored by git). CC and FUZZ_CFLAGS may be set.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
out=${1:-$top/build/fuzz}
CC=${CC:-clang}

TARGETS="sig_fuzz epevent_fuzz extract_fuzz cfg_fuzz"
SOURCES="sig epevent cfg util log"

command -v "$CC" >/dev/null 2>&1 || {
        echo "build.sh: $CC not found (scripts/deps.sh installs clang and libclang-rt-14-dev)" >&2
        exit 1
}
mkdir -p "$out/obj"

# libFuzzer's runtime lives in libclang-rt-*-dev on Debian: check before the long compile.
probe="$out/obj/probe"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
        >"$probe.c"
"$CC" -fsanitize=fuzzer "$probe.c" -o "$probe" 2>"$probe.log" || {
        cat "$probe.log" >&2
        echo "build.sh: $CC cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev)" >&2
        exit 1
}

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-g -O1 -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -I$top/include $san ${FUZZ_CFLAGS:-}"
libs="-lcrypto -ljansson -lunistring -luuid"

objs=
for s in $SOURCES; do
        # fuzzer-no-link: coverage feedback in the project's code, main() from libFuzzer later
        "$CC" $cflags -fsanitize=fuzzer-no-link -c "$top/src/$s.c" -o "$out/obj/$s.o"
        objs="$objs $out/obj/$s.o"
done
for t in $TARGETS; do
        "$CC" $cflags -fsanitize=fuzzer "$here/$t.c" $objs $libs -o "$out/$t"
        echo "built $out/$t"
done
