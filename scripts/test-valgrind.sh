#!/bin/sh
# test-valgrind.sh - memcheck over the unit suites and one real daemon session.
#
#  1. tests/unit/check_unit (every pure-module suite) in one process (CK_FORK=no)
#     under valgrind --leak-check=full --errors-for-leak-kinds=definite;
#  2. the ingest integration suite with the daemon itself under valgrind
#     (TEST_DAEMON_WRAPPER, see tests/integration/itest.c): a memcheck error or a definite
#     leak makes the daemon exit 99 instead of the 0 the suite demands on
#     SIGTERM, and its valgrind log is checked here as well.
#
# Builds in build/valgrind (plain -O2 -g, no sanitizers: valgrind and ASan do
# not mix). Ends with "N passed, M failed": N and M count Check tests, plus
# one failure per process whose valgrind log reports errors or definite leaks.
# Like scripts/test, it needs an unconfigured source tree (it runs `make
# distclean` in the source directory if needed).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

scripts/deps.sh --test
[ -x configure ] || autoreconf -fi
[ -f config.status ] && make distclean >/dev/null # builds live in build/

b=$top/build/valgrind
logs=$b/valgrind-logs
mkdir -p "$b"
rm -rf "$logs"
mkdir -p "$logs"
(cd "$b" && "$top/configure" -q CFLAGS="-g -O2" && make -j"$(nproc)" >/dev/null &&
        make -j"$(nproc)" tests/unit/check_unit tests/integration/check_integration >/dev/null)

vg="valgrind --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite"
vg="$vg --track-origins=yes --num-callers=30"
passed=0
failed=0
report=

# Adds a Check runner's "Checks: N, Failures: F, Errors: E" line to the totals.
count_checks() { # LOG NAME
        line=$(grep -E '^[0-9]+%: Checks: ' "$1" | tail -n 1 || true)
        if [ -z "$line" ]; then
                echo "test-valgrind: $2 printed no Check summary" >&2
                failed=$((failed + 1))
                report="$report$2: no Check summary (crashed?)
"
                return
        fi
        n=$(echo "$line" | sed -n 's/.*Checks: \([0-9]*\).*/\1/p')
        f=$(echo "$line" | sed -n 's/.*Failures: \([0-9]*\).*/\1/p')
        e=$(echo "$line" | sed -n 's/.*Errors: \([0-9]*\).*/\1/p')
        passed=$((passed + n - f - e))
        failed=$((failed + f + e))
        report="$report$2: $line
"
}

# A valgrind log with errors or definite leaks counts as one failure.
check_vglog() { # LOG NAME
        errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$1" | tail -n 1)
        lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$1" | tail -n 1 | tr -d ,)
        if [ "${errs:-x}" = x ]; then
                failed=$((failed + 1))
                report="${report}valgrind $2: no ERROR SUMMARY (killed?) - $1
"
        elif [ "$errs" -ne 0 ] || [ "${lost:-0}" -ne 0 ]; then
                failed=$((failed + 1))
                report="${report}valgrind $2: $errs error(s), ${lost:-0} bytes definitely lost - $1
"
                echo "--- $1"
                cat "$1"
        else
                report="${report}valgrind $2: clean ($1)
"
        fi
}

echo "== 1. unit suites under valgrind (CK_FORK=no)"
rc=0
(cd "$b" && abs_top_srcdir=$top abs_top_builddir=$b CK_FORK=no \
        $vg --error-exitcode=1 --log-file="$logs/check_unit.vg" tests/unit/check_unit) \
        >"$logs/check_unit.out" 2>&1 || rc=$?
cat "$logs/check_unit.out"
count_checks "$logs/check_unit.out" check_unit
check_vglog "$logs/check_unit.vg" check_unit
[ "$rc" -ne 0 ] && [ "$rc" -ne 1 ] && echo "check_unit exited $rc"

echo
echo "== 2. ingest suite with the daemon under valgrind"
# --log-file: one log per daemon (pid), kept after the suite's temp dir is gone.
TEST_DAEMON_WRAPPER="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite --num-callers=30 --log-file=$logs/daemon.%p.vg"
# valgrind slows the daemon ~20x: stretch the suite's Check timeouts to match
rc=0
(cd "$b" && abs_top_srcdir=$top abs_top_builddir=$b TEST_DAEMON_WRAPPER="$TEST_DAEMON_WRAPPER" \
        CK_RUN_SUITE=ingest CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-10} \
        "$top/tests/integration/integration.sh") >"$logs/ingest.out" 2>&1 || rc=$?
cat "$logs/ingest.out"
count_checks "$logs/ingest.out" "ingest (daemon under valgrind)"
ndaemon=0
for f in "$logs"/daemon.*.vg; do
        [ -f "$f" ] || continue
        ndaemon=$((ndaemon + 1))
        check_vglog "$f" "daemon $(basename "$f" .vg)"
done
if [ "$ndaemon" -eq 0 ]; then
        failed=$((failed + 1))
        report="${report}valgrind: no daemon ran under valgrind
"
fi

echo
echo "== valgrind summary"
printf '%s' "$report"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
