#!/bin/sh
# run.sh [SECONDS] - builds the fuzz targets and runs each for SECONDS
# (default 60), as many at once as there are cores (each fuzzer is one
# process on one core), from a seed corpus made in a temporary directory. Prints executions per target; exits 1 if any target crashed,
# leaving the reproducer in build/fuzz/artifacts/ (replay: TARGET FILE).
#
#   FUZZ_CORPUS=DIR   keep the corpus in DIR (grows across runs) instead of a temp dir
#   FUZZ_TARGETS=...  run only these (default: every target)
#   FUZZ_JOBS=N       parallel libFuzzer jobs per target (default 1)
#   FUZZ_PARALLEL=N   targets run at once (default: the number of cores)
set -eu

secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=$top/build/fuzz
art=$bin/artifacts
targets=${FUZZ_TARGETS:-sig_fuzz epevent_fuzz extract_fuzz cfg_fuzz}

"$here/build.sh" "$bin" >/dev/null
mkdir -p "$art"
tmp=$(mktemp -d /tmp/eps-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
corpus=${FUZZ_CORPUS:-$tmp/corpus}
"$here/seeds.sh" "$tmp/seeds" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# run_target T: fuzzes T, writes its summary line to $tmp/T.line and, if
# it crashed, what the log says to $tmp/T.fail
run_target() {
        t=$1
        case $t in
        cfg_fuzz) dict=$here/cfg.dict ;;
        sig_fuzz) dict= ;;
        *) dict=$here/json.dict ;;
        esac
        mkdir -p "$corpus/$t" "$tmp/$t.wd"
        log=$tmp/$t.log
        rc=0
        jobs=
        # -jobs writes fuzz-N.log into the working directory: one per target
        [ "${FUZZ_JOBS:-1}" -gt 1 ] && jobs="-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS"
        t0=$(date +%s)
        # corpus dir first (new inputs go there), seeds second (read only)
        (cd "$tmp/$t.wd" && "$bin/$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
                -rss_limit_mb=2048 $jobs -artifact_prefix="$art/$t-" ${dict:+-dict="$dict"} \
                "$corpus/$t" "$tmp/seeds/$t") >"$log" 2>&1 || rc=$?
        if [ -n "$jobs" ]; then
                cat "$tmp/$t.wd"/fuzz-*.log >>"$log" 2>/dev/null || true
        fi
        took=$(($(date +%s) - t0))
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s += $1} END {print s + 0}')
        cov=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
        if [ "$rc" -ne 0 ]; then
                {
                        echo "== $t: FAILED (exit $rc); log:"
                        grep -E 'ERROR|SUMMARY|accept|refuses|Test unit written|^    #[0-9]' "$log" | head -n 40
                } >"$tmp/$t.fail"
                cp "$log" "$art/$t.log"
                result="CRASH (see $art/$t-* and $art/$t.log)"
        else
                result=ok
        fi
        printf '%-14s %12s executions in %ss, coverage %s, corpus %s: %s\n' "$t" "$execs" \
                "$took" "${cov:-?}" "$(ls "$corpus/$t" | wc -l)" "$result" >"$tmp/$t.line"
}

par=${FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 1)}
[ "$par" -ge 1 ] 2>/dev/null || par=1
running=0
for t in $targets; do
        run_target "$t" &
        running=$((running + 1))
        if [ "$running" -ge "$par" ]; then
                wait
                running=0
        fi
done
wait

status=0
summary=
for t in $targets; do
        if [ -f "$tmp/$t.fail" ]; then
                status=1
                cat "$tmp/$t.fail"
        fi
        line=$(cat "$tmp/$t.line" 2>/dev/null || echo "$t: no result")
        [ -f "$tmp/$t.line" ] || status=1
        echo "$line"
        summary="$summary$line
"
done
echo
echo "== fuzz summary (${secs}s per target)"
printf '%s' "$summary"
exit $status
