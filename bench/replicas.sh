#!/usr/bin/env bash
# replicas.sh - ingest throughput of 1 and 3 replicas of the daemon on one
# PostgreSQL, through PgBouncer (Debian's, pool_mode = transaction) and with
# direct connections (unix socket), in one run. HAProxy (round robin, the
# configuration of tests/system/replicas-lib.sh) is in front in all four cases, so
# they differ only in replicas and pooler. Each case gets a fresh database
# (DROP DATABASE ... WITH (FORCE), --migrate), its replicas start with
# --log_level=warn and the defaults otherwise, and loadgen drives them closed
# loop, then checks that every event answered 2xx is stored once (lost = 0).
# Each case also records PostgreSQL's CPU, WAL and database growth per event
# (pg_current_wal_lsn(), pg_database_size() before and after) and the events
# per commit (COMMIT records in that WAL, pg_waldump): replicas split the
# load, so each one's batches are smaller.
#
# Knobs: BENCH_N (events per case, 20000), BENCH_CONNS (loadgen connections,
# 32), BENCH_PROFILE (unique), BENCH_BUILDDIR (where easypost-syncd and
# bench/loadgen are built; default the source tree, configured and built
# there if missing), BENCH_OUT (bench/results-replicas.md), BENCH_KEEP=1
# (keep the work directory). Writes a markdown table to BENCH_OUT and stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=$(cd "$here/.." && pwd)
cd "$top_srcdir"
n=${BENCH_N:-20000}
conns=${BENCH_CONNS:-32}
profile=${BENCH_PROFILE:-unique}
out=${BENCH_OUT:-$here/results-replicas.md}
top_builddir=${BENCH_BUILDDIR:-$top_srcdir}
top_builddir=$(cd "$top_builddir" && pwd)
RL_NAME=bench/replicas.sh
# shellcheck source=tests/system/replicas-lib.sh
. "$top_srcdir/tests/system/replicas-lib.sh"

die() { rl_log "$*"; exit 1; }
log() { printf '== %s\n' "$*" >&2; }
jget() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$2"; }

for tool in pgbouncer haproxy psql curl; do
        command -v "$tool" >/dev/null || die "$tool not found (scripts/deps.sh installs it)"
done
if [ ! -x "$top_builddir/easypost-syncd" ] || [ ! -x "$top_builddir/bench/loadgen" ]; then
        if [ ! -f "$top_builddir/Makefile" ]; then
                [ -x configure ] || autoreconf -fi >/dev/null
                (cd "$top_builddir" && "$top_srcdir/configure" >/dev/null)
        fi
        make -s -C "$top_builddir" easypost-syncd bench/loadgen >/dev/null || die "build failed"
fi

rl_bench_start eps-bench-replicas
rl_port pgb_port && rl_port hap_port && rl_port d1_port && rl_port d2_port && rl_port d3_port || die "free ports"
pg_pid=$(head -n 1 "$pg_dir/data/postmaster.pid")
direct=$pg_direct
pooled="host=127.0.0.1 port=$pgb_port dbname=$db user=postgres"
rl_pgbouncer_start "$pgb_port" "$pg_dir" "$pg_port" "$db" || die "PgBouncer did not start"
EASYPOST_WEBHOOK_SECRET="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export EASYPOST_WEBHOOK_SECRET

rows=()
run_case() { # run_case direct|pgbouncer REPLICAS
        local via=$1 k=$2 url ports=() label json
        label="$via, $k replica$([ "$k" = 1 ] || echo s)"
        json=$RL_DIR/$via-$k.json
        log "$label: fresh database"
        rl_fresh_db || die "migration failed"
        [ "$via" = direct ] && url=$direct || url=$pooled
        local all=("$d1_port" "$d2_port" "$d3_port")
        ports=("${all[@]:0:$k}")
        local i=1
        for p in "${ports[@]}"; do
                DATABASE_URL=$url rl_daemon_start "replica-$i" "$p" --log_level=warn
                i=$((i + 1))
        done
        for p in "${ports[@]}"; do rl_wait 60 rl_ready "$p" || die "$label: replica on $p not ready"; done
        rl_haproxy_start "$hap_port" "${ports[@]}" || die "$label: HAProxy did not start"
        local lsn0 size0 lsn1 size1
        q "CHECKPOINT" # the WAL after it starts with fresh full-page images, as in a steady state
        lsn0=$(q "SELECT pg_current_wal_lsn()")
        size0=$(q "SELECT pg_database_size(current_database())")
        log "$label: $n events, $conns connections"
        "$top_builddir/bench/loadgen" -q -u "http://127.0.0.1:$hap_port/webhooks/easypost" -n "$n" \
                -c "$conns" --profile "$profile" --retry --db "$direct" --pg-pid "$pg_pid" \
                --label "$label" --json "$json" >"$RL_DIR/$via-$k.out" 2>&1 ||
                { cat "$RL_DIR/$via-$k.out" >&2; rows+=("| $label | failed: see $RL_DIR | | | | | | |"); }
        lsn1=$(q "SELECT pg_current_wal_lsn()")
        size1=$(q "SELECT pg_database_size(current_database())")
        rl_stop_procs
        [ -s "$json" ] || return 0
        local tp p99 cpu lost retries wal grow commits
        commits=$(rl_wal "$lsn0" "$lsn1" | awk '{ print $3 }')
        tp=$(jget throughput "$json")
        p99=$(jget p99_ms "$json")
        cpu=$(jget pg_cpu_s "$json")
        lost=$(jget lost "$json")
        retries=$(jget retries "$json")
        wal=$(q "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / $n / 1024.0, 1)")
        grow=$(q "SELECT round(($size1 - $size0) / $n / 1024.0, 1)")
        rows+=("$(awk -v l="$label" -v tp="$tp" -v p="$p99" -v c="$cpu" -v n="$n" -v w="$wal" -v g="$grow" \
                -v r="$retries" -v lo="$lost" -v k="$commits" \
                'BEGIN { printf "| %s | %.0f | %.1f | %.0f | %.1f | %s | %s | %s | %s |", l, tp, p, c * 1e6 / n, n / k, w, g, r, lo }')")
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for via in direct pgbouncer; do
        for k in 1 3; do run_case "$via" "$k"; done
done
{
        echo "Replicas, $profile profile, $n events per case, loadgen closed loop c=$conns through HAProxy;"
        echo "$(nproc) cores, load average before: $load0; $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo
        echo "| case | events/s | p99 ms | PostgreSQL µs/event | events/commit | WAL KB/event | database KB/event | retries | lost |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${rows[@]}"
} | tee "$out"
