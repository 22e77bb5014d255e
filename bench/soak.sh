#!/usr/bin/env bash
# soak.sh - the daemon for a long stretch with every part of it working:
# webhooks at a steady open-loop rate (progressive trackers, so projection,
# stub shipments and sync jobs), the sync worker and backfill against the
# fake EasyPost API (tests/fake/fake_easypost), the webhook check, the
# analytics refresh, system_metrics rows and partition upkeep on short
# intervals, and /metrics + /readyz scraped every few seconds. Every
# SOAK_SAMPLE seconds it records the daemon's RSS, open descriptors, queue
# depth and the events stored; at the end it compares the second half with
# the end of the warm-up (the first quarter).
#
# Passes (exit 0) when no event was lost, the RSS at the end is within
# SOAK_MAX_GROWTH_KB (2048) of the RSS at the end of the warm-up, the
# descriptors are back within 5 of it, and the daemon stops cleanly on
# SIGTERM. Knobs: SOAK_SECONDS (1200), SOAK_RATE (events/s, 300),
# SOAK_SAMPLE (10), SOAK_PROFILE (progressive), SOAK_KEEP=1 keeps the work
# directory (samples.tsv, logs). Everything listens on 127.0.0.1, PostgreSQL
# on a unix socket; the EXIT trap stops exactly what this script started.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"

secs=${SOAK_SECONDS:-1200}
rate=${SOAK_RATE:-300}
every=${SOAK_SAMPLE:-10}
profile=${SOAK_PROFILE:-progressive}
max_growth=${SOAK_MAX_GROWTH_KB:-2048}
secret="soak-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
apikey="EZTKsoak$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
for v in "$secs" "$rate" "$every" "$max_growth"; do
        [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -gt 0 ] || { echo "soak.sh: not a positive number: $v" >&2; exit 2; }
done

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'soak.sh: %s\n' "$*" >&2; exit 1; }

if [ ! -f Makefile ]; then
        [ -x configure ] || autoreconf -fi >/dev/null
        ./configure >/dev/null
fi
make -s easypost-syncd bench/loadgen tests/fake/fake_easypost >/dev/null || die "build failed"

. "$here/lib.sh" # bench_work, psql, stop_pid
bench_work soak
daemon_pid="" fake_pid="" scraper_pid="" pg_started=0

cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        stop_pid "$scraper_pid" scraper
        stop_pid "$daemon_pid" easypost-syncd
        stop_pid "$fake_pid" fake_easypost
        [ "$pg_started" = 1 ] && tests/lib/pg.sh stop "$work/pg" fast
        if [ "$rc" != 0 ] || [ "${SOAK_KEEP:-0}" = 1 ]; then
                echo "soak.sh: work directory kept: $work" >&2
        else
                rm -rf "$work"
        fi
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pgport=$(((RANDOM % 1000) + 57000))
tests/lib/pg.sh start "$work/pg" "$pgport" >/dev/null
pg_started=1
tests/lib/pg.sh createdb "$work/pg" "$pgport" easypost_sync >/dev/null
conninfo=$(tests/lib/pg.sh conninfo "$work/pg" "$pgport" easypost_sync)
DATABASE_URL=$conninfo ./easypost-syncd --migrate >"$work/migrate.log" 2>&1 ||
        { cat "$work/migrate.log" >&2; die "migration failed"; }

# the fake API; its first stdout line is port=N
mkfifo "$work/fake.port"
tests/fake/fake_easypost --api-key "$apikey" >"$work/fake.port" 2>"$work/fake.log" &
fake_pid=$!
read -r line <"$work/fake.port" || die "fake API did not start"
fake_port=${line#port=}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log "daemon on 127.0.0.1:$port, fake API on :$fake_port, $rate events/s for $secs s ($profile)"
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret EASYPOST_API_KEY=$apikey ./easypost-syncd \
        --listen="127.0.0.1:$port" --api_url="http://127.0.0.1:$fake_port/v2" --log_level=warn \
        --sync_interval=1 --backfill_interval=20 --webhook_check_interval=30 \
        --analytics_interval=15 --metrics_interval=5 >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 300); do
        curl -fs -m 1 -o /dev/null "http://127.0.0.1:$port/readyz" && break
        kill -0 "$daemon_pid" 2>/dev/null || { tail -n 20 "$work/daemon.log" >&2; die "daemon exited"; }
        sleep 0.1
done

# what an operator's Prometheus and load balancer do meanwhile
(
        while :; do
                curl -fs -m 5 -o "$work/metrics.last" "http://127.0.0.1:$port/metrics" || true
                curl -fs -m 5 -o /dev/null "http://127.0.0.1:$port/readyz" || true
                sleep 2
        done
) &
scraper_pid=$!

sample() { # elapsed-seconds: one line of samples.tsv
        local rss fds q stored
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status")
        fds=$(ls "/proc/$daemon_pid/fd" | wc -l)
        q=$(curl -fs -m 5 "http://127.0.0.1:$port/metrics" | awk '$1 == "easypost_sync_queue_depth" { print $2 }')
        stored=$(psql -c "SELECT count(*) FROM webhook_events" 2>/dev/null || echo '?')
        printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$fds" "${q:-?}" "$stored" >>"$work/samples.tsv"
}
printf 'seconds\trss_kb\tfds\tqueue\tstored\n' >"$work/samples.tsv"

t0=$(date +%s)
timeout --foreground -s INT -k 60 $((secs + 90)) ./bench/loadgen --url "http://127.0.0.1:$port/webhooks/easypost" \
        --secret "$secret" -n $((rate * secs)) -r "$rate" -d "$secs" -c 64 --profile "$profile" \
        --retry --db "$conninfo" --json "$work/loadgen.json" -q >"$work/loadgen.out" 2>&1 &
load_pid=$!
while kill -0 "$load_pid" 2>/dev/null; do
        sample $(($(date +%s) - t0))
        sleep "$every"
done
load_rc=0
wait "$load_pid" || load_rc=$?
sleep "$every" # the backfill, sync and timers go on without load for a moment
sample $(($(date +%s) - t0))

stop_pid "$scraper_pid" scraper
scraper_pid=""
kill -TERM "$daemon_pid"
drc=0
wait "$daemon_pid" || drc=$?
daemon_pid=""

# warm-up ends at a quarter of the run; compare its last sample with the
# second half's highest and the final one
read -r warm_rss warm_fds < <(awk -F'\t' -v q=$((secs / 4)) 'NR > 1 && $1 <= q { r = $2; f = $3 } END { print r, f }' "$work/samples.tsv")
read -r half_max end_rss end_fds < <(awk -F'\t' -v h=$((secs / 2)) 'NR > 1 && $1 >= h { if ($2 > m) m = $2; r = $2; f = $3 } END { print m, r, f }' "$work/samples.tsv")
read -r first_rss < <(awk -F'\t' 'NR == 2 { print $2 }' "$work/samples.tsv")
jobs=$(psql -c "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM sync_jobs GROUP BY status) s")
runs=$(awk '$1 ~ /^easypost_sync_backfill_runs_total/ { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$work/metrics.last")
refreshes=$(psql -c "SELECT count(*) FROM analytics_refreshes")
mrows=$(psql -c "SELECT count(*) FROM system_metrics")
summary=$(sed -n 's/^  "\(sent\|ok\|lost\|p99_ms\|rate\)": \(.*\),\{0,1\}$/\1=\2/p' "$work/loadgen.json" | tr -d '",' | tr '\n' ' ')

cat <<EOF
# soak: $secs s at $rate events/s ($profile), revision $(git rev-parse --short HEAD 2>/dev/null || echo '?')
loadgen: exit $load_rc; $summary
daemon RSS: $first_rss kB at start, $warm_rss kB at the end of the warm-up ($((secs / 4)) s), at most $half_max kB in the second half, $end_rss kB at the end
daemon descriptors: $warm_fds after the warm-up, $end_fds at the end
sync jobs: $jobs; analytics refreshes: $refreshes; system_metrics rows: $mrows
backfill: $runs
daemon exit on SIGTERM: $drc
samples: $work/samples.tsv (kept with SOAK_KEEP=1)
EOF
ok=1
[ "$load_rc" = 0 ] || { echo "FAIL: loadgen reported lost or undelivered events (exit $load_rc)"; ok=0; }
[ "$half_max" -le $((warm_rss + max_growth)) ] ||
        { echo "FAIL: RSS grew by $((half_max - warm_rss)) kB after the warm-up (bound $max_growth)"; ok=0; }
[ "$end_fds" -le $((warm_fds + 5)) ] || { echo "FAIL: descriptors $warm_fds -> $end_fds"; ok=0; }
[ "$drc" = 0 ] || { echo "FAIL: daemon exited $drc on SIGTERM"; ok=0; }
[ "$ok" = 1 ] && echo "soak: PASS" || { echo "soak: FAIL"; exit 1; }
