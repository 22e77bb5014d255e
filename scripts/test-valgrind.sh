#!/bin/sh
# test-valgrind.sh - memcheck over the unit suites, the integration suites
# that hold the fault tests with the daemon under valgrind, and the
# in-process state machine suites.
#
#  1. tests/unit/check_unit (every pure-module suite) in one process (CK_FORK=no)
#     under valgrind --leak-check=full --errors-for-leak-kinds=definite;
#  2. the integration suites in VG_DAEMON_SUITES with every daemon they start
#     under valgrind (TEST_DAEMON_WRAPPER, see tests/integration/itest.c): a
#     memcheck error or a definite leak makes the daemon exit 99 instead of
#     the 0 the suites demand on SIGTERM, and its valgrind log is checked here
#     as well. A daemon a test kills with SIGKILL (or a forked child that
#     execs another program) leaves a log without a summary; that is listed,
#     not counted as clean, and each suite must leave at least one clean log;
#  3. the suites in VG_INPROC_SUITES (the pacer and backfill state machines
#     and the database connection, which run in the suite's own process)
#     with check_integration itself under valgrind (TEST_RUNNER_WRAPPER).
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
vg="$vg --track-origins=yes --num-callers=30 --vgdb=no"
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

# valgrind slows the daemon ~20x: stretch the suites' Check timeouts to match
vgd="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite"
# --vgdb=no: a process killed with SIGKILL would leave its gdbserver FIFOs in /tmp
vgd="$vgd --show-leak-kinds=definite --num-callers=30 --vgdb=no"

# Runs one integration suite with the valgrind command in the wrapper
# variable WRAPVAR; CK_FORK as given (no: one process for the whole suite).
run_suite() { # SUITE WRAPVAR [CK_FORK]
        out=$logs/$1.out
        rc=0
        (cd "$b" && export "$2=$vgd --log-file=$logs/$1.%p.vg" &&
                abs_top_srcdir=$top abs_top_builddir=$b CK_RUN_SUITE=$1 \
                CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-10} CK_FORK=${3:-} \
                "$top/tests/integration/integration.sh") >"$out" 2>&1 || rc=$?
        cat "$out"
        before=$failed
        count_checks "$out" "$1"
        if [ "$rc" -ne 0 ] && [ "$failed" -eq "$before" ]; then
                failed=$((failed + 1))
                report="${report}$1: integration.sh exited $rc
"
        fi
        clean=0
        for f in "$logs/$1".*.vg; do
                [ -f "$f" ] || continue
                if ! grep -q 'ERROR SUMMARY' "$f"; then
                        report="${report}valgrind $1 $(basename "$f" .vg): no summary (killed by the test, or a child that exec'd)
"
                        continue
                fi
                check_vglog "$f" "$1 $(basename "$f" .vg)"
                clean=$((clean + 1))
        done
        if [ "$clean" -eq 0 ]; then
                failed=$((failed + 1))
                report="${report}valgrind $1: no process ran to its end under valgrind
"
        fi
}

echo
echo "== 2. integration suites with the daemon under valgrind"
for s in ${VG_DAEMON_SUITES:-ingest project sync faults hostile webhook_health reconcile}; do
        echo "-- $s"
        run_suite "$s" TEST_DAEMON_WRAPPER
done

echo
echo "== 3. in-process suites under valgrind (CK_FORK=no)"
for s in ${VG_INPROC_SUITES:-pacer backfill dbconn}; do
        echo "-- $s"
        run_suite "$s" TEST_RUNNER_WRAPPER no
done

echo
echo "== valgrind summary"
printf '%s' "$report"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
