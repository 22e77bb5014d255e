#!/bin/sh
# test-sanitizers.sh - the whole test suite under AddressSanitizer,
# LeakSanitizer and UBSan: configures build/asan with --enable-sanitizers,
# runs `make check` there (unit suites, then the integration suites, whose
# daemons are the sanitized easypost-syncd) and prints the logs.
#
# A sanitizer finding fails the run twice over: the process aborts (so a
# daemon's exit status is not the 0 the integration tests demand on SIGTERM,
# and a Check test that leaks fails), and every report is also written under
# build/asan/sanitizer-reports/, printed at the end and counted here, so a
# report from a process nobody waits for (e.g. a daemon killed by a test)
# still fails the run. Like scripts/test, it needs an unconfigured source
# tree (it runs `make distclean` in the source directory if needed).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

scripts/deps.sh --test
[ -x configure ] || autoreconf -fi
[ -f config.status ] && make distclean >/dev/null # builds live in build/

b=build/asan
reports=$top/$b/sanitizer-reports
mkdir -p "$b"
rm -rf "$reports"
mkdir -p "$reports"

# abort_on_error: an error or a leak kills the process with SIGABRT, never a
# quiet exit(0). Reports go to files (one per process) so none is lost with a
# test's temporary directory.
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$reports/asan"
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$reports/ubsan"
export ASAN_OPTIONS UBSAN_OPTIONS

status=0
(
        cd "$b" &&
                ASAN_OPTIONS=detect_leaks=0 "$top/configure" -q --enable-sanitizers &&
                ASAN_OPTIONS=detect_leaks=0 make -j"$(nproc)" >/dev/null &&
                make -j"$(nproc)" check >/dev/null
) || status=1

echo
echo "== test logs ($b) =="
for f in "$b"/tests/*/*.log; do
        [ -f "$f" ] || continue
        echo "--- $f"
        cat "$f"
done
[ -f "$b/test-suite.log" ] && grep -E '^# (TOTAL|PASS|FAIL|ERROR|SKIP)' "$b/test-suite.log"

nrep=0
for f in "$reports"/*; do
        [ -f "$f" ] || continue
        nrep=$((nrep + 1))
        echo "--- sanitizer report $f"
        cat "$f"
done
echo
if [ "$nrep" -gt 0 ]; then
        echo "test-sanitizers: $nrep sanitizer report(s) (above)"
        status=1
fi
if [ "$status" -eq 0 ]; then
        echo "test-sanitizers: PASS (make check clean under ASan + LSan + UBSan)"
else
        echo "test-sanitizers: FAIL"
fi
exit $status
