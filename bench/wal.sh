#!/usr/bin/env bash
# wal.sh - WAL and storage per event, for doc/scaling.md. For each loadgen
# profile: a fresh database; WAL_N events through one daemon (closed loop,
# c=32), measuring WAL (pg_current_wal_lsn() before and after; records and
# full-page image bytes from pg_waldump --stats) and what every table grew by; then a
# CHECKPOINT and WAL_PROBE more events: the same figures once every page
# the first load made must be written whole again on its first change, as
# after each checkpoint of a long-running database. After the first load it
# times each analytics view's refresh (eps_refresh_view, as the timer runs it).
# PostgreSQL runs with the compose file's WAL settings (wal_compression=lz4,
# max_wal_size=4GB, checkpoint_timeout=15min) unless PG_OPTS says otherwise.
#
# Knobs: WAL_N (50000), WAL_PROBE (5000), WAL_PROFILES ("unique progressive"),
# BENCH_BUILDDIR (as bench/replicas.sh), BENCH_OUT (bench/results-wal.md),
# BENCH_KEEP=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top_srcdir=$(cd "$here/.." && pwd)
cd "$top_srcdir"
n=${WAL_N:-50000}
probe=${WAL_PROBE:-5000}
read -r -a profiles <<<"${WAL_PROFILES:-unique progressive}"
out=${BENCH_OUT:-$here/results-wal.md}
top_builddir=$(cd "${BENCH_BUILDDIR:-$top_srcdir}" && pwd)
export PG_OPTS=${PG_OPTS:--c wal_compression=lz4 -c max_wal_size=4GB -c checkpoint_timeout=15min -c checkpoint_completion_target=0.9 -c wal_buffers=16MB}
RL_NAME=bench/wal.sh
# shellcheck source=tests/system/replicas-lib.sh
. "$top_srcdir/tests/system/replicas-lib.sh"
die() { rl_log "$*"; exit 1; }
log() { printf '== %s\n' "$*" >&2; }
[ -x "$top_builddir/easypost-syncd" ] && [ -x "$top_builddir/bench/loadgen" ] ||
        die "build first (make easypost-syncd bench/loadgen in ${BENCH_BUILDDIR:-the source tree})"

rl_bench_start eps-bench-wal
rl_port http_port || die "free port"
DATABASE_URL=$pg_direct
EASYPOST_WEBHOOK_SECRET="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export DATABASE_URL EASYPOST_WEBHOOK_SECRET

# the tables' sizes (heap + TOAST + indexes), one "name bytes" line each
sizes() {
        q "SELECT c.relname || ' ' || pg_total_relation_size(c.oid) FROM pg_class c
           JOIN pg_namespace s ON s.oid = c.relnamespace
           WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p', 'm') ORDER BY 1"
}
# load PROFILE COUNT SEED LABEL: COUNT events; appends a row to rows[]
rows=()
refresh=()
load() {
        local lsn0 lsn1 s0 s1
        sizes >"$RL_DIR/sizes0"
        lsn0=$(q "SELECT pg_current_wal_lsn()")
        "$top_builddir/bench/loadgen" -q -u "http://127.0.0.1:$http_port/webhooks/easypost" -n "$2" -c 32 \
                --profile "$1" --seed "$3" --retry --db "$DATABASE_URL" --json "$RL_DIR/load.json" \
                >"$RL_DIR/load.out" 2>&1 || { cat "$RL_DIR/load.out" >&2; die "$4: loadgen failed"; }
        lsn1=$(q "SELECT pg_current_wal_lsn()")
        sizes >"$RL_DIR/sizes1"
        local wal fpi recs grow
        wal=$(q "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / $2 / 1024.0, 2)")
        read -r recs fpi <<<"$(rl_wal "$lsn0" "$lsn1" | awk -v n="$2" '{ printf "%.1f %.2f", $1 / n, $2 / n / 1024 }')"
        # growth per event of each table that grew, largest first
        grow=$(join "$RL_DIR/sizes0" "$RL_DIR/sizes1" |
                awk -v n="$2" '$3 > $2 { printf "%s %.2f\n", $1, ($3 - $2) / n / 1024 }' | sort -k2,2 -rn |
                awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')
        local total
        total=$(join "$RL_DIR/sizes0" "$RL_DIR/sizes1" | awk -v n="$2" '{ t += $3 - $2 } END { printf "%.2f", t / n / 1024 }')
        rows+=("| $4 | $2 | $wal | $recs | $fpi | $total | $grow |")
}

for profile in "${profiles[@]}"; do
        log "$profile: fresh database, $n events"
        rl_fresh_db || die "migration failed"
        rl_daemon_start wal "$http_port" --log_level=warn
        rl_wait 60 rl_ready "$http_port" || die "daemon not ready"
        q "CHECKPOINT"
        load "$profile" "$n" 1 "$profile, fresh database"
        # what the analytics refresh costs at this size (REFRESH ... CONCURRENTLY, as the timer does)
        for v in analytics_daily_volume analytics_carrier_performance analytics_status_funnel; do
                ms=$(q "SELECT round(duration_ms) FROM eps_refresh_view('$v', -1, 'bench')")
                refresh+=("| $profile | $(q "SELECT count(*) FROM trackers") | $(q "SELECT count(*) FROM shipments") | $v | $ms |")
        done
        q "CHECKPOINT"
        log "$profile: after a CHECKPOINT, $probe more events"
        load "$profile" "$probe" 2 "$profile, next $probe after a CHECKPOINT"
        rl_stop_procs
done
{
        echo "WAL and storage per event (bench/wal.sh), PostgreSQL $(q 'SHOW server_version' postgres | cut -d' ' -f1) with: $PG_OPTS"
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo
        echo "| run | events | WAL KB/event | WAL records/event | of which full-page images, KB/event | stored KB/event | of which, KB/event by table |"
        echo "|---|---:|---:|---:|---:|---:|---|"
        printf '%s\n' "${rows[@]}"
        echo
        echo "| profile | trackers | shipments | view | refresh ms |"
        echo "|---|---:|---:|---|---:|"
        printf '%s\n' "${refresh[@]}"
} | tee "$out"
