#!/usr/bin/env bash
# refresh.sh - what an analytics refresh does to the webhooks arriving at the
# same time: fills a fresh database with tracking history, then runs an open
# loop of signed progressive events while, 4 s in, the four analytics views
# are refreshed once (eps_refresh_view, as the daemon's analytics timer does
# at each analytics_interval). Rounds alternate two settings of the refresh:
# as shipped (no parallel workers) and with PostgreSQL's default of two
# workers per gather. One line per run: late requests, p99, the refresh's ms.
# Everything on 127.0.0.1 / a unix socket, bounded in time; the EXIT trap
# stops exactly what this script started.
#
#   bench/refresh.sh [FILL_EVENTS] [RATE] [ROUNDS]
#
# Defaults: 240000 progressive events of history, 3000 events/s for 12 s,
# 3 rounds (each: shipped, then with workers).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"

fill=${1:-240000}
rate=${2:-3000}
rounds=${3:-3}
secret="refresh-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

. "$here/lib.sh" # build_in_tree, bench_work, bench_exit, jget, psql, stop_pid, wait_ready
build_in_tree

bench_work refresh
daemon_pid="" pg_started=0 refresher=""
cleanup_extra() { stop_pid "$refresher" refresher; }
trap bench_exit EXIT
trap 'exit 130' INT TERM

port=$(( (RANDOM % 1000) + 56000 ))
tests/lib/pg.sh start "$work/pg" "$port" >/dev/null
pg_started=1
tests/lib/pg.sh createdb "$work/pg" "$port" easypost_sync
conninfo=$(tests/lib/pg.sh conninfo "$work/pg" "$port" easypost_sync)
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd --migrate >"$work/migrate.log" 2>&1

hport=$(( (RANDOM % 1000) + 18000 ))
url="http://127.0.0.1:$hport/webhooks/easypost"
# the script refreshes the views itself, at a known moment
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd --listen="127.0.0.1:$hport" \
        --log_level=warn --analytics_interval=0 >"$work/daemon.log" 2>&1 &
daemon_pid=$!
wait_ready "http://127.0.0.1:$hport/readyz" "$daemon_pid" || { cat "$work/daemon.log" >&2; exit 1; }
timeout --foreground -s INT -k 30 1200 ./bench/loadgen --url "$url" --secret "$secret" -n "$fill" -c 32 \
        --profile progressive >"$work/fill.log" 2>&1 || { cat "$work/fill.log" >&2; exit 1; }
echo "history: $(psql -c "SELECT count(*) FROM shipment_events") shipment_events rows," \
     "$(psql -c "SELECT count(*) FROM trackers") trackers; open loop $rate/s for 12 s, the views refreshed 4 s in" \
     "(refresh ms: daily_volume, carrier_performance, status_funnel, refunds)"

views="analytics_daily_volume analytics_carrier_performance analytics_status_funnel analytics_refunds"
tick=0
for round in $(seq "$rounds"); do
        for setting in shipped workers; do
                if [ "$setting" = workers ]; then
                        psql -c "ALTER FUNCTION eps_refresh_view(text, bigint, text) SET max_parallel_workers_per_gather = 2"
                else
                        psql -c "ALTER FUNCTION eps_refresh_view(text, bigint, text) SET max_parallel_workers_per_gather = 0"
                fi
                tick=$((tick + 1))
                (sleep 4; for v in $views; do
                        psql -c "SELECT round(duration_ms) FROM eps_refresh_view('$v', $tick, 'bench')"
                done) >"$work/refresh.out" 2>&1 &
                refresher=$!
                timeout --foreground -s INT -k 30 120 ./bench/loadgen --url "$url" --secret "$secret" \
                        -n $((rate * 12)) --rate "$rate" -c 256 --profile progressive \
                        --json "$work/run.json" >"$work/run.log" 2>&1 || { cat "$work/run.log" >&2; exit 1; }
                wait "$refresher"
                refresher=""
                printf 'round %d, %-8s late %6s, p99 %7s ms, max %7s ms; refresh ms: %s\n' "$round" "$setting" \
                        "$(jget late)" "$(jget p99_ms)" "$(jget max_ms)" "$(tr '\n' ' ' <"$work/refresh.out")"
        done
done
