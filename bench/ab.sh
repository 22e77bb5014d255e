#!/usr/bin/env bash
# ab.sh - two builds of easypost-syncd, measured in alternation: A, B, A, B ...
# so that both see the same phases of a shared box. Each run gets a fresh
# database (migrated by its own binary), a 2,000-event warm-up, then one
# closed-loop loadgen run; it prints events/s, the daemon's and PostgreSQL's
# CPU per event, events per batch and lost, then each binary's mean and the
# mean of the B/A ratios of the pairs. A ratio of pairs is the measure here:
# this box's speed drifts by a third within minutes, the same for both.
#
#   bench/ab.sh [-p unique|progressive] [-n EVENTS] [-c CONNECTIONS] [-r ROUNDS]
#               [-a --DAEMON-ARG=VALUE ...] BIN_A BIN_B
#
# Defaults: unique, 30000 events, 32 connections, 3 rounds; -a (repeatable)
# passes an argument to both daemons, e.g. -a --projection=deferred. Everything listens
# on 127.0.0.1 (PostgreSQL on a unix socket); the EXIT trap stops exactly what
# this script started, by PID. Exit status 1 if a run lost an event or failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
profile=unique n=30000 conns=32 rounds=3 dargs=()
while getopts p:n:c:r:a: o; do
        case $o in
        a) dargs+=("$OPTARG") ;;
        p) profile=$OPTARG ;;
        n) n=$OPTARG ;;
        c) conns=$OPTARG ;;
        r) rounds=$OPTARG ;;
        *) exit 2 ;;
        esac
done
shift $((OPTIND - 1))
[ $# = 2 ] || { echo "usage: ${0##*/} [-p PROFILE] [-n N] [-c C] [-r ROUNDS] [-a ARG ...] BIN_A BIN_B" >&2; exit 2; }
bins=("$(realpath "$1")" "$(realpath "$2")")
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "${0##*/}: not executable: $b" >&2; exit 2; }; done

cd "$top"
[ -x bench/loadgen ] || make -s bench/loadgen >/dev/null
. "$here/lib.sh" # bench_work, bench_exit, jget, stop_pid, wait_ready
bench_work ab
daemon_pid="" pg_started=0 status=0
trap bench_exit EXIT
trap 'exit 130' INT TERM

pgport=$(((RANDOM % 1000) + 55000))
tests/lib/pg.sh start "$work/pg" "$pgport" >/dev/null
pg_started=1
pg_pid=$(head -n 1 "$work/pg/data/postmaster.pid")
admin=$(tests/lib/pg.sh conninfo "$work/pg" "$pgport" postgres)
conninfo=$(tests/lib/pg.sh conninfo "$work/pg" "$pgport" eps_ab)
secret="ab-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
port=18650
url="http://127.0.0.1:$port/webhooks/easypost"

# one_run BIN: prints "events/s daemon-us pg-us batch lost"
one_run() {
        local bin=$1 _ m0 m1
        "$pgbin/psql" "$admin" -qAtX -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS eps_ab" -c "CREATE DATABASE eps_ab" >/dev/null
        DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret "$bin" --migrate >"$work/migrate.log" 2>&1 ||
                { cat "$work/migrate.log" >&2; return 1; }
        DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret "$bin" --listen="127.0.0.1:$port" \
                --log_level=warn "${dargs[@]}" >"$work/daemon.log" 2>&1 &
        daemon_pid=$!
        wait_ready "http://127.0.0.1:$port/readyz" "$daemon_pid" || { cat "$work/daemon.log" >&2; return 1; }
        timeout -k 10 120 ./bench/loadgen --url "$url" --secret "$secret" -n 2000 -c "$conns" \
                --profile "$profile" >/dev/null 2>&1 || return 1
        m0=$(curl -fs -m 5 "http://127.0.0.1:$port/metrics")
        timeout -s INT -k 30 $((n / 50 + 120)) ./bench/loadgen --url "$url" --secret "$secret" -n "$n" \
                -c "$conns" --profile "$profile" --pid "$daemon_pid" --pg-pid "$pg_pid" --db "$conninfo" \
                --json "$work/run.json" >"$work/run.out" 2>&1 || return 1
        m1=$(curl -fs -m 5 "http://127.0.0.1:$port/metrics")
        stop_pid "$daemon_pid" easypost-syncd
        daemon_pid=""
        printf '%s\n%s\n' "$m0" "$m1" | awk -v n="$n" \
                -v t="$(jget throughput "$work/run.json")" -v d="$(jget daemon_cpu_s "$work/run.json")" \
                -v p="$(jget pg_cpu_s "$work/run.json")" -v l="$(jget lost "$work/run.json")" '
                $1 == "easypost_sync_batch_events_sum" { s[++i] = $2 }
                $1 == "easypost_sync_batch_events_count" { c[++j] = $2 }
                END { printf "%.0f %.1f %.1f %.1f %s\n", t, d * 1e6 / n, p * 1e6 / n,
                             (c[2] - c[1]) ? (s[2] - s[1]) / (c[2] - c[1]) : 0, l }'
}

printf '%-3s %-5s %10s %12s %10s %7s %5s\n' run build events/s daemon-µs/ev PG-µs/ev batch lost
results=()
for r in $(seq "$rounds"); do
        for k in 0 1; do
                label=$([ "$k" = 0 ] && echo A || echo B)
                line=$(one_run "${bins[$k]}") || { echo "${0##*/}: run $r $label failed" >&2; exit 1; }
                read -r t d p b l <<<"$line"
                printf '%-3s %-5s %10s %12s %10s %7s %5s\n' "$r" "$label" "$t" "$d" "$p" "$b" "$l"
                [ "$l" = 0 ] || status=1
                results+=("$r $label $t $d $p")
        done
done
printf '%s\n' "${results[@]}" | awk '
        { t[$2] += $3; d[$2] += $4; p[$2] += $5; n[$2]++; T[$1, $2] = $3; D[$1, $2] = $4; P[$1, $2] = $5; R[$1] = 1 }
        END {
                for (b in n) printf "mean %s: %.0f events/s, daemon %.1f µs/event, PostgreSQL %.1f µs/event\n",
                        b, t[b] / n[b], d[b] / n[b], p[b] / n[b]
                for (r in R) { k++; rt += T[r, "B"] / T[r, "A"]; rd += D[r, "B"] / D[r, "A"]; rp += P[r, "B"] / P[r, "A"] }
                printf "B/A, mean of %d pairs: events/s %.3f, daemon µs %.3f, PostgreSQL µs %.3f\n", k, rt / k, rd / k, rp / k
        }'
exit "$status"
