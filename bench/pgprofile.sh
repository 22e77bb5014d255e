#!/usr/bin/env bash
# pgprofile.sh - where PostgreSQL's time goes per event: one loadgen run
# against the daemon with pg_stat_statements and track_functions on, then the
# statements and functions by time per event, WAL bytes and PostgreSQL CPU
# per event. Everything on 127.0.0.1 / a unix socket, bounded in time; the
# EXIT trap stops exactly what this script started.
#
#   bench/pgprofile.sh [unique|progressive] [EVENTS] [CONNECTIONS]
#
# Env: PROFILE_DAEMON_ARGS (extra --key=value for the daemon), PROFILE_PG_OPTS
# (extra "-c key=value" for PostgreSQL), PROFILE_KEEP=1 keeps the work dir,
# PROFILE_RUNS=K sends K runs of EVENTS back to back to the same daemon and
# database (default 1): one line per run but the last (events/s, CPU and the
# biggest nested statements per event, with the rows stored before it), then
# the whole report for the last run, counted from its own start. It shows
# whether the cost per event grows with the tables. PROFILE_PERF=SECS records
# PostgreSQL's processes with `perf record --call-graph dwarf` for SECS
# seconds of the last run and prints where their CPU went, by kind of work
# (linux-perf; the shares are of samples, so the run must outlast SECS).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"

profile=${1:-unique}
n=${2:-20000}
conns=${3:-32}
read -r -a daemon_args <<<"${PROFILE_DAEMON_ARGS:-}"
[ -z "${PROFILE_PERF:-}" ] || command -v perf >/dev/null ||
        { echo "pgprofile.sh: PROFILE_PERF needs perf (apt-get install linux-perf)" >&2; exit 1; }
secret="prof-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

. "$here/lib.sh" # build_in_tree, bench_work, jget, psql, stop_daemon_and_pg, wait_ready
build_in_tree

bench_work prof
daemon_pid="" pg_started=0
cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        stop_daemon_and_pg
        if [ "$rc" != 0 ] || [ "${PROFILE_KEEP:-0}" = 1 ]; then
                echo "pgprofile.sh: work directory kept: $work" >&2
        else
                rm -rf "$work"
        fi
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(( (RANDOM % 1000) + 57000 ))
PG_OPTS="-c shared_preload_libraries=pg_stat_statements -c track_functions=all \
-c pg_stat_statements.track=all ${PROFILE_PG_OPTS:-}" tests/lib/pg.sh start "$work/pg" "$port"
pg_started=1
tests/lib/pg.sh createdb "$work/pg" "$port" easypost_sync
conninfo=$(tests/lib/pg.sh conninfo "$work/pg" "$port" easypost_sync)
pg_pid=$(head -n 1 "$work/pg/data/postmaster.pid")
psql -c "CREATE EXTENSION pg_stat_statements"
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd --migrate >"$work/migrate.log" 2>&1

hport=$(( (RANDOM % 1000) + 19000 ))
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd --listen="127.0.0.1:$hport" \
        --log_level=warn "${daemon_args[@]}" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
wait_ready "http://127.0.0.1:$hport/readyz" "$daemon_pid" || { cat "$work/daemon.log" >&2; exit 1; }
# PostgreSQL's CPU in clock ticks: the postmaster, its live children and the
# ones it has reaped (cutime/cstime)
pg_ticks() {
        local t=0 p
        for p in "$pg_pid" $(cat "/proc/$pg_pid/task/$pg_pid/children" 2>/dev/null); do
                [ -r "/proc/$p/stat" ] || continue
                t=$((t + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat")))
        done
        echo "$t"
}
rows() { psql -c "SELECT count(*) FROM webhook_events"; }

prof_args=()
[ "$profile" = unique ] || prof_args=(--profile "$profile")
runs=${PROFILE_RUNS:-1}
for run in $(seq "$runs"); do
        rows0=$(rows)
        psql -c "SELECT pg_stat_statements_reset(), pg_stat_reset(), pg_stat_reset_shared('wal')" >/dev/null
        ticks0=$(pg_ticks)
        if [ "$run" = "$runs" ] && [ -n "${PROFILE_PERF:-}" ]; then
                # the backends the daemon holds, the postmaster and its helpers
                perf record -q -F 400 --call-graph dwarf,16384 -o "$work/perf.data" \
                        -p "$pg_pid,$(tr ' ' ',' <"/proc/$pg_pid/task/$pg_pid/children" | sed 's/,*$//')" \
                        -- sleep "$PROFILE_PERF" >"$work/perf.log" 2>&1 &
                perf_pid=$!
        fi
        timeout --foreground -s INT -k 30 600 ./bench/loadgen --url "http://127.0.0.1:$hport/webhooks/easypost" \
                --secret "$secret" -n "$n" -c "$conns" "${prof_args[@]}" --pid "$daemon_pid" --pg-pid "$pg_pid" \
                --db "$conninfo" --json "$work/run.json" >"$work/loadgen.log" 2>&1 || {
                cat "$work/loadgen.log" >&2
                exit 1
        }
        # let a deferred projector finish before reading the counters
        for _ in $(seq 600); do
                [ "$(psql -c "SELECT EXISTS (SELECT FROM projection_queue)")" = f ] && break
                sleep 0.1
        done
        ticks1=$(pg_ticks)
        [ -n "${perf_pid:-}" ] && wait "$perf_pid"
        [ "$run" = "$runs" ] && break
        ev=$(($(rows) - rows0))
        printf 'run %d of %d, %d rows before it: %s\n' "$run" "$runs" "$rows0" "$(
                awk -v tp="$(jget throughput)" -v s="$(jget duration_s)" -v pg="$(jget pg_cpu_pct)" \
                        -v d="$(jget daemon_cpu_pct)" 'BEGIN { ok = tp * s
                        printf "%.0f events/s, PostgreSQL %.0f µs, daemon %.0f µs per event;",
                               tp, pg / 100 * s * 1e6 / ok, d / 100 * s * 1e6 / ok }')$(
                psql -F' ' -c "SELECT ' ' || round((total_exec_time * 1000 / $ev)::numeric) || ' ' ||
                                      left(regexp_replace(query, '\s+', ' ', 'g'), 22) || ','
                               FROM pg_stat_statements WHERE NOT toplevel AND calls > 0
                               ORDER BY total_exec_time DESC LIMIT 5" | tr -d '\n' | sed 's/,$//')"
done
sleep 2 # backends flush their statistics at most once a second
events=$(($(rows) - rows0))
tp=$(jget throughput)
secs=$(jget duration_s)
pgcpu=$(jget pg_cpu_pct)
dcpu=$(jget daemon_cpu_pct)
echo "## $profile, $n events, c=$conns ${PROFILE_DAEMON_ARGS:-}"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql || echo +local)"
awk -v tp="$tp" -v s="$secs" -v pg="$pgcpu" -v d="$dcpu" -v ev="$events" -v t="$((ticks1 - ticks0))" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
        ok = tp * s
        printf "%.0f events/s; PostgreSQL CPU %.0f µs per event during the run, %.0f µs per event " \
               "until every event was projected; daemon CPU %.0f µs per event; %d rows stored in webhook_events by the run\n",
               tp, pg / 100 * s * 1e6 / ok, t / hz * 1e6 / ev, d / 100 * s * 1e6 / ok, ev }'
psql -c "SELECT 'WAL ' || round(wal_bytes / $events) || ' bytes, ' || round(wal_records::numeric / $events, 1) ||
                ' records, ' || round(wal_fpi::numeric / $events, 2) || ' full-page images per event' FROM pg_stat_wal"
echo
echo "| statement (nested: inside a function) | calls | µs per event (exec) | ms per call | rows per call |"
echo "|---|---:|---:|---:|---:|"
psql -F'|' -c "SELECT CASE WHEN toplevel THEN '' ELSE 'nested: ' END ||
                      left(regexp_replace(query, '\s+', ' ', 'g'), 90), calls,
                      round((total_exec_time * 1000 / $events)::numeric, 1),
                      round(mean_exec_time::numeric, 3), round(rows::numeric / calls, 1)
               FROM pg_stat_statements WHERE calls > 0 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               ORDER BY total_exec_time DESC LIMIT 14" | sed 's/|/ | /g; s/^/| /; s/$/ |/; s/  */ /g'
echo
echo "| function | calls | self µs per event | total µs per event |"
echo "|---|---:|---:|---:|"
psql -F'|' -c "SELECT funcname, calls, round((self_time * 1000 / $events)::numeric, 1),
                      round((total_time * 1000 / $events)::numeric, 1)
               FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 10" |
        sed 's/|/ | /g; s/^/| /; s/$/ |/; s/  */ /g'
echo
echo "| table | rows inserted per event | rows updated per event (HOT) | size MB |"
echo "|---|---:|---:|---:|"
psql -F'|' -c "SELECT relname, round(n_tup_ins::numeric / $events, 2),
                      round(n_tup_upd::numeric / $events, 2) || ' (' || round(n_tup_hot_upd::numeric / $events, 2) || ')',
                      round(pg_total_relation_size(relid) / 1048576.0, 1)
               FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd > 0 ORDER BY pg_total_relation_size(relid) DESC" |
        sed 's/|/ | /g; s/^/| /; s/$/ |/; s/  */ /g'

[ -n "${PROFILE_PERF:-}" ] || exit 0
# Each sample goes to the first kind of work whose function is on its stack,
# in this order: a sample in the commit is the commit's whatever it calls.
echo
echo "| PostgreSQL's CPU (perf, $PROFILE_PERF s of the run) | share of samples |"
echo "|---|---:|"
perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null | awk '
BEGIN {
        RS = ""; FS = "\n"
        n = split("commit and its WAL flush|parse and plan of the batch call|" \
                  "receiving parameters: the jsonb ones (carrier_detail)|" \
                  "receiving parameters: the other arrays|executor start and end of the nested statements|" \
                  "ON CONFLICT pre-check probes|index inserts|heap inserts and updates|" \
                  "timestamps parsed (eps_ts)|lz4 compression of raw bodies|index lookups|" \
                  "unnest: the parameter arrays into rows|sorts (ORDER BY, DISTINCT ON)|" \
                  "other execution inside the functions|background processes (WAL writer, checkpointer)|" \
                  "other (protocol, sockets)", kind, "|")
        split("CommitTransactionCommand|pg_parse_query GetCachedPlan-top|jsonb_recv|array_recv|" \
              "standard_ExecutorStart standard_ExecutorEnd|ExecCheckIndexConstraints|" \
              "ExecInsertIndexTuples|heap_insert heap_update|timestamptz_in|LZ4_compress_fast_extState|" \
              "index_getnext_slot|array_unnest tuplestore_putvalues|" \
              "tuplesort_puttupleslot tuplesort_performsort tuplesort_gettupleslot|plpgsql_call_handler|-PostgresMain|*", keys, "|")
}
{
        delete on
        for (i = 2; i <= NF; i++) {
                f = $i; sub(/^[ \t]*[0-9a-f]+ /, "", f); sub(/\+0x.*$/, "", f); on[f] = 1
        }
        on["GetCachedPlan-top"] = ("GetCachedPlan" in on) && !("SPI_execute_plan_with_paramlist" in on)
        total++
        for (k = 1; k <= n; k++) {
                m = split(keys[k], fn, " ")
                hit = 0
                for (j = 1; j <= m; j++)
                        if (fn[j] == "*" || (fn[j] ~ /^-/ && !(substr(fn[j], 2) in on)) || on[fn[j]])
                                hit = 1
                if (hit) { count[k]++; break }
        }
}
END {
        for (k = 1; k <= n; k++)
                printf "| %s | %.1f %% |\n", kind[k], total ? 100 * count[k] / total : 0
        printf "| (samples) | %d |\n", total
}'
