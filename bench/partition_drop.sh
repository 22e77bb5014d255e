#!/usr/bin/env bash
# partition_drop.sh - webhook acknowledgement latency while retention drops
# a month of raw events holding DROP_ROWS (1,000,000) rows.
#
# A throwaway PostgreSQL (fsync on), the migrations, a 2020-01 partition of
# webhook_events filled with DROP_ROWS events (~300-byte bodies) and their
# ids; then, for each way of dropping it, the daemon under an open load of
# DROP_RATE (300) tracker events/s for DROP_SECONDS (30) while the month is
# dropped about 10 s in:
#   detach - the daemon's own retention (event_retention_days = 90, an
#            analytics tick every 10 s): DETACH PARTITION ... CONCURRENTLY,
#            then DROP TABLE of the detached table, with a 3 s reader of
#            the table started a second before the tick;
#   drop   - a plain DROP TABLE of the partition from psql (ACCESS EXCLUSIVE
#            on webhook_events while it runs), with a 3 s reader of the
#            table started just before (as an analytics refresh or a report
#            would be), which the DROP must wait for.
# First a run with nothing dropped (the box's own noise). Prints loadgen's
# p50/p99/p99.9/max per run, how long the plain DROP took, and how many lock
# waits over 50 ms PostgreSQL logged (log_lock_waits, deadlock_timeout = 50ms).
# Everything on 127.0.0.1 / a unix socket; the EXIT trap stops what it
# started, by PID. BENCH_BUILD: the build directory (default build/dev, made
# if needed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${BENCH_BUILD:-$top/build/dev}
rows=${DROP_ROWS:-1000000}
rate=${DROP_RATE:-300}
secs=${DROP_SECONDS:-30}
port=${DROP_PG_PORT:-$((30000 + $$ % 20000))}
http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=bench-drop-secret

if [ ! -x "$build/easypost-syncd" ] || [ ! -x "$build/bench/loadgen" ]; then
        mkdir -p "$build"
        (cd "$build" && { [ -f Makefile ] || "$top/configure" -q; } && make -s easypost-syncd bench/loadgen)
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
work=$(mktemp -d /tmp/eps-drop.XXXXXX)
chmod 755 "$work"
daemon=
cleanup() {
        [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
        "$top/tests/lib/pg.sh" stop "$work/pg" immediate >/dev/null 2>&1 || true
        rm -rf "$work"
}
trap cleanup EXIT INT TERM

# every lock wait over 50 ms is logged: the evidence that ingest waited or not
PG_OPTS="-c log_lock_waits=on -c deadlock_timeout=50ms" "$top/tests/lib/pg.sh" start "$work/pg" "$port" >/dev/null
"$top/tests/lib/pg.sh" createdb "$work/pg" "$port" eps >/dev/null
ci=$("$top/tests/lib/pg.sh" conninfo "$work/pg" "$port" eps)
psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$ci" "$@"; }
DATABASE_URL=$ci "$build/easypost-syncd" --migrate --sql_dir="$top/sql" 2>/dev/null

fill() {
        local t0=$SECONDS
        psql -c "DELETE FROM webhook_event_ids WHERE received_at < '2020-02-01Z'" \
                -c "SELECT eps_partition_attach('webhook_events', 'webhook_events_2020_01', '2020-01-01Z', '2020-02-01Z')" \
                -c "INSERT INTO webhook_events (id, event_id, description, object_id, raw, status, received_at)
                    SELECT eps_uuid7(), 'evt_old_' || g, 'tracker.updated', 'trk_old_' || g,
                           rpad('{\"object\":\"Event\",\"id\":\"evt_old_' || g || '\"', 290, ' ') || '}',
                           'projected', '2020-01-10Z'::timestamptz + g * interval '1 ms'
                    FROM generate_series(1, $rows) g" \
                -c "INSERT INTO webhook_event_ids (event_id, received_at)
                    SELECT event_id, received_at FROM webhook_events_2020_01" \
                -c "VACUUM ANALYZE webhook_events_2020_01" -c "CHECKPOINT" >/dev/null
        echo "filled 2020-01 with $rows events ($(psql -Atc "SELECT pg_size_pretty(pg_total_relation_size('webhook_events_2020_01'))")) in $((SECONDS - t0)) s"
}

start_daemon() { # extra --key=value...
        DATABASE_URL=$ci EASYPOST_WEBHOOK_SECRET=$secret "$build/easypost-syncd" --sql_dir="$top/sql" \
                --listen=127.0.0.1:$http_port --metrics_interval=0 --backfill_interval=0 "$@" \
                2>"$work/daemon.log" &
        daemon=$!
        for _ in $(seq 600); do
                curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && return 0
                sleep 0.1
        done
        echo "daemon not ready after 60 s:" >&2
        tail -n 5 "$work/daemon.log" >&2
        exit 1
}

stop_daemon() {
        kill "$daemon"
        wait "$daemon" || true
        daemon=
}

load() { # label seed
        "$build/bench/loadgen" -u "http://127.0.0.1:$http_port/webhooks/easypost" -s "$secret" \
                -r "$rate" -d "$secs" -n $((rate * secs)) --seed "$2" -q --json "$work/$1.json" >/dev/null
        python3 - "$work/$1.json" "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print("%-7s acked %s of %s, p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms" % (
    sys.argv[2], j.get("ok", "?"), j.get("sent", "?"), j["p50_ms"], j["p99_ms"], j["p999_ms"], j["max_ms"]))
EOF
}

lock_waits() {
        echo "  lock waits over 50 ms in PostgreSQL's log so far: $(grep -c 'still waiting for' "$work/pg/postgres.log" || true)"
}

# none: the same load, nothing dropped (the box's own noise)
fill
start_daemon --analytics_interval=0
load none 3
lock_waits
stop_daemon

# detach: the daemon's retention at the tick 10 s into the run
start_daemon --analytics_interval=10 --event_retention_days=90
load detach 1 &
loader=$!
# the same 3 s reader, started a second before the tick that detaches
sleep "$(python3 -c 'import time; print(10 - time.time() % 10 - 1 if 10 - time.time() % 10 > 1.2 else 19 - time.time() % 10)')"
psql -c "SELECT count(*), pg_sleep(3) FROM webhook_events WHERE object_id = 'trk_old_1'" >/dev/null &
reader=$!
wait $reader
wait $loader
grep -E "dropped|detach|partition" "$work/daemon.log" | sed 's/^/  daemon: /' || true
lock_waits
psql -Atc "SELECT 'dropped: ' || (to_regclass('webhook_events_2020_01') IS NULL)"
psql -Atc "SELECT '  maintenance runs with a detach: ' || count(*) FROM partition_maintenance WHERE detached <> '{}'"
stop_daemon

# drop: plain DROP TABLE 10 s in, behind a 3 s reader
fill
start_daemon --analytics_interval=0
load drop 2 &
loader=$!
sleep 10
psql -c "SELECT count(*), pg_sleep(3) FROM webhook_events WHERE object_id = 'trk_old_1'" >/dev/null &
reader=$!
sleep 0.2
t0=$(date +%s.%N)
psql -c "DROP TABLE webhook_events_2020_01"
echo "  plain DROP TABLE took $(echo "$(date +%s.%N) - $t0" | bc) s (waiting for the reader)"
wait $reader
wait $loader
lock_waits
grep -A1 'still waiting for' "$work/pg/postgres.log" | sed 's/^/  pg: /' | head -n 6
stop_daemon
