#!/usr/bin/env bash
# run.sh - the benchmark suite in one command: build if needed, a throwaway
# PostgreSQL, migrations, then for each projection mode (inline, deferred) the
# daemon on 127.0.0.1 with --projection=MODE and, for the unique profile,
# closed loop at 1, 32 and 256 connections and open loop at 1,000 and 3,000
# events/s, for the progressive profile closed loop at 32 connections and the
# same open loops; in deferred mode also two sustained open loops (unique at
# 2,500/s and progressive at 5,000/s, 60 s each) with the pending backlog
# sampled every second. After every daemon run it measures how long the
# pending backlog takes to drain. Then bare_server (evhttp only, the ceiling)
# at 32 connections, then the same-work Node.js peer (bench/peer,
# node-postgres) in raw and full mode at 32 connections with both profiles.
# Writes markdown tables (one per mode, one for bare and the peer) to
# bench/results.md (bench/results-quick.md with BENCH_QUICK=1) and stdout.
#
# Everything listens on 127.0.0.1 (PostgreSQL on a unix socket only), every
# step is bounded in time, and the EXIT trap stops exactly the processes this
# script started, by PID. Exit status: 0 when every run passed its database
# check (lost = 0) and every backlog drained, 1 otherwise.
#
# Knobs: BENCH_MODES (projection modes, "inline deferred"), BENCH_N (events
# per closed-loop run, default 60000), BENCH_N1 (the 1-connection run, default
# BENCH_N/12), BENCH_OPEN_SECONDS (open-loop length, default 12),
# BENCH_OPEN_CONNS (open-loop pool, default 256), BENCH_SUSTAIN_SECONDS (the
# deferred sustained runs, default 60, 5 with BENCH_QUICK=1, 0 skips them),
# BENCH_QUICK=1 (2000 events per run), BENCH_PG_FSYNC (on), BENCH_DAEMON_ARGS
# (extra --key=value for the daemon, not --projection), BENCH_OUT (table
# file), BENCH_KEEP=1 (keep the work directory: logs, JSON, metrics, backlog
# samples), BENCH_PROFILES ("unique progressive"), BENCH_TRACKERS
# (progressive: trackers in turn, default loadgen's n/10), BENCH_PEER_MODES
# ("raw full"; "none" skips the peer), BENCH_PEER_POOL (32).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"

quick=${BENCH_QUICK:-0}
if [ "$quick" = 1 ]; then
        n=${BENCH_N:-2000}
        n1=${BENCH_N1:-$n}
        open_secs=0 # fixed size instead: $n events per open-loop run
        sustain_secs=${BENCH_SUSTAIN_SECONDS:-5}
        out=${BENCH_OUT:-$here/results-quick.md}
else
        n=${BENCH_N:-60000}
        n1=${BENCH_N1:-$((n / 12))}
        open_secs=${BENCH_OPEN_SECONDS:-12}
        sustain_secs=${BENCH_SUSTAIN_SECONDS:-60}
        out=${BENCH_OUT:-$here/results.md}
fi
open_conns=${BENCH_OPEN_CONNS:-256}
pg_fsync=${BENCH_PG_FSYNC:-on}
read -r -a daemon_args <<<"${BENCH_DAEMON_ARGS:-}"
read -r -a modes <<<"${BENCH_MODES:-inline deferred}"
read -r -a profiles <<<"${BENCH_PROFILES:-unique progressive}"
peer_modes_s=${BENCH_PEER_MODES:-raw full}
[ "$peer_modes_s" = none ] && peer_modes_s=""
read -r -a peer_modes <<<"$peer_modes_s"
peer_pool=${BENCH_PEER_POOL:-32}
secret="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
has_profile() { [[ " ${profiles[*]} " == *" $1 "* ]]; }

for p in "${profiles[@]}"; do
        case $p in unique | progressive) ;; *) die "BENCH_PROFILES: unknown profile $p" ;; esac
done
[ "${#profiles[@]}" -gt 0 ] || die "BENCH_PROFILES is empty"
for m in "${modes[@]}"; do
        case $m in inline | deferred) ;; *) die "BENCH_MODES: unknown projection mode $m (inline, deferred)" ;; esac
done
[ "${#modes[@]}" -gt 0 ] || die "BENCH_MODES is empty"
for a in "${daemon_args[@]}"; do
        case $a in --projection | --projection=*) die "BENCH_DAEMON_ARGS: use BENCH_MODES to choose the projection" ;; esac
done
[[ "$sustain_secs" =~ ^[0-9]+$ ]] || die "BENCH_SUSTAIN_SECONDS: not a number of seconds: $sustain_secs"
drain_limit=120 # seconds the pending backlog may take to drain after a run
for m in "${peer_modes[@]}"; do
        case $m in raw | full) ;; *) die "BENCH_PEER_MODES: unknown mode $m (raw, full or none)" ;; esac
done
trackers=()
[ -n "${BENCH_TRACKERS:-}" ] && trackers=(--trackers "$BENCH_TRACKERS")

# ---- build ----------------------------------------------------------------
if [ ! -f Makefile ]; then
        log "configuring"
        [ -x configure ] || autoreconf -fi >/dev/null
        ./configure >/dev/null
fi
log "building (make easypost-syncd bench/loadgen bench/bare_server)"
make -s easypost-syncd bench/loadgen bench/bare_server >/dev/null || die "build failed"

. "$here/lib.sh" # bench_work, jget, psql, stop_pid, wait_ready

# ---- processes we own, and their cleanup ------------------------------------
bench_work bench # $pgbin, and $work: the cluster runs as another user when we are root
[ -x "$pgbin/psql" ] || { rm -rf "$work"; die "PostgreSQL not found (apt-get install postgresql)"; }
daemon_pid="" bare_pid="" peer_pid="" sampler_pid="" pg_started=0 status=0

cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        stop_pid "$sampler_pid" "backlog sampler"
        stop_pid "$bare_pid" bare_server
        stop_pid "$peer_pid" peer.js
        stop_pid "$daemon_pid" easypost-syncd
        [ "$pg_started" = 1 ] && tests/lib/pg.sh stop "$work/pg" fast
        if [ "$rc" != 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
                echo "run.sh: logs kept in $work" >&2
        else
                rm -rf "$work"
        fi
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # first port from $1 on which nothing answers
        local p
        for p in $(seq "$1" $(($1 + 200))); do
                if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                        echo "$p"
                        return
                fi
        done
        die "no free port near $1"
}

wait_http() { # url pid name: wait_ready, or the tail of $work/<name>.log and exit
        local rc=0
        wait_ready "$1" "$2" || rc=$?
        [ "$rc" = 0 ] && return 0
        tail -n 30 "$work/$3.log" >&2
        [ "$rc" = 1 ] && die "$3 exited"
        die "$3 not ready within 30 s ($1)"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
metric() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
slug() { printf '%s' "$1" | tr -c 'A-Za-z0-9=.-' '_'; }
# accept-queue overflows (SYNs dropped because the listener was full), whole namespace
listen_ovf() {
        awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "ListenOverflows") c = i; h = 1 }
                          else if (c) print $c }' /proc/net/netstat
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

load0=$(cut -d' ' -f1-3 /proc/loadavg)
# what is measured: taken now, since the tree may change while the suite runs
revision="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src include sql 2>/dev/null || echo '+local changes')"

# ---- PostgreSQL and the daemon ------------------------------------------------
pgport=$(( (RANDOM % 1000) + 56000 )) # names the socket in $work/pg only
log "PostgreSQL in $work/pg (fsync=$pg_fsync)"
PG_FSYNC=$pg_fsync tests/lib/pg.sh start "$work/pg" "$pgport"
pg_started=1
tests/lib/pg.sh createdb "$work/pg" "$pgport" easypost_sync
conninfo=$(tests/lib/pg.sh conninfo "$work/pg" "$pgport" easypost_sync)
pg_pid=$(head -n 1 "$work/pg/data/postmaster.pid")

log "migrating"
DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd --migrate \
        >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; die "migration failed"; }

# ---- the runs ------------------------------------------------------------------
labels=() failed=()
declare -A idle_rss=() peak_rss=() daemon_stop=()
sample_backlog=0 # 1 around a run: sample the pending backlog every second during it
now() { date +%s.%N; }
# the projection backlog: events stored but not yet projected (deferred mode; 0 inline)
pending() { psql -c "SELECT count(*) FROM projection_queue" 2>/dev/null || true; }

# backlog_sampler FILE: appends "epoch-seconds pending" every second until SIGTERM,
# which the script sends by PID right after loadgen (or the EXIT trap does)
backlog_sampler() {
        local child=""
        trap '[ -z "$child" ] || { kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; }; exit 0' TERM
        while :; do
                echo "$(now) $(pending)" >>"$1"
                sleep 1 &
                child=$!
                wait "$child" || true
                child=""
        done
}

# drain FILE BACKLOG T0: BACKLOG pending events were read at T0 (the end of a run);
# polls every 0.1 s until none is left, at most $drain_limit s. Writes
# "backlog seconds drained failed" to FILE: drained is 1, 0 (gave up) or ? (no answer);
# failed counts the events whose projection failed (status 'failed').
drain() {
        local file=$1 b=$2 t0=$3 t=$3 ok=1 fails
        while [ "$b" != 0 ]; do
                if [ -z "$b" ]; then
                        ok="?"
                        break
                fi
                if awk -v a="$t0" -v b="$t" -v l="$drain_limit" 'BEGIN { exit !(b - a >= l) }'; then
                        ok=0
                        break
                fi
                sleep 0.1
                b=$(pending)
                t=$(now)
        done
        fails=$(psql -c "SELECT count(*) FROM webhook_events WHERE status = 'failed'" 2>/dev/null || echo "?")
        awk -v b="${b:-?}" -v a="$t0" -v t="$t" -v ok="$ok" -v f="$fails" -v b0="$2" \
                'BEGIN { printf "%s %.1f %s %s\n", (b0 == "" ? "?" : b0), t - a, ok, f }' >"$file"
}

# run LABEL URL TIMEOUT LOADGEN-ARGS...: one loadgen run, its files in $work/<slug>.*
run() {
        local label=$1 url=$2 limit=$3 rc=0 f on_daemon=0 b0 t0
        shift 3
        f="$work/$(slug "$label")"
        log "$label"
        if [ -n "${daemon_pid:-}" ] && [ "$url" = "$daemon_url" ]; then
                on_daemon=1
        fi
        if [[ " $* " == *" --db "* ]]; then
                # each run against the database starts from an empty table and a fresh checkpoint
                psql -c "SET client_min_messages = warning" -c "TRUNCATE webhook_events, projection_queue CASCADE" \
                        -c "CHECKPOINT"
        fi
        if [ "$on_daemon" = 1 ]; then
                curl -fs -m 5 "http://127.0.0.1:$port/metrics" >"$f.metrics0" || true
        fi
        listen_ovf >"$f.ovf0"
        if [ "$on_daemon" = 1 ] && [ "$sample_backlog" = 1 ]; then
                backlog_sampler "$f.backlog" &
                sampler_pid=$!
        fi
        # INT lets loadgen stop sending, collect what is in flight and report
        timeout --foreground -s INT -k 45 "$limit" ./bench/loadgen --url "$url" --secret "$secret" \
                --label "$label" --json "$f.json" "$@" || rc=$?
        if [ "$on_daemon" = 1 ]; then
                b0=$(pending) # the backlog the run left, before anything else
                t0=$(now)
        fi
        if [ -n "$sampler_pid" ]; then
                stop_pid "$sampler_pid" "backlog sampler"
                sampler_pid=""
        fi
        listen_ovf >"$f.ovf1"
        if [ -f "$f.metrics0" ]; then
                curl -fs -m 5 "http://127.0.0.1:$port/metrics" >"$f.metrics1" || true
        fi
        labels+=("$label")
        if [ "$rc" != 0 ] || [ ! -f "$f.json" ]; then
                failed+=("$label (loadgen exit $rc)")
                status=1
        fi
        if [ "$on_daemon" = 1 ]; then
                [ "${b0:-?}" = 0 ] || log "$label: ${b0:-?} events pending, waiting for the projector"
                drain "$f.drain" "$b0" "$t0"
                case $(cut -d' ' -f3 "$f.drain") in
                0) failed+=("$label (backlog not drained within $drain_limit s)") status=1 ;;
                "?") failed+=("$label (could not read the backlog)") status=1 ;;
                esac
        fi
}

closed_limit() { echo $(( $1 / 50 + 120 )); } # 50 events/s would already be a failure

open_runs() { # mode profile: open loop at 1,000 and 3,000 events/s
        local rate on dur
        for rate in 1000 3000; do
                # a fixed offered load for a fixed time: what the daemon cannot take shows
                # as late starts and latency, not as a longer run
                dur=()
                if [ "$open_secs" = 0 ]; then on=$n; else on=$((rate * open_secs)) dur=(-d "$open_secs"); fi
                run "$1 $2 open ${rate}/s" "$daemon_url" "$(closed_limit "$on")" -n "$on" -r "$rate" \
                        -c "$open_conns" "${dur[@]}" --profile "$2" "${trackers[@]}" "${watch[@]}"
        done
}

sustained_run() { # mode profile rate: a long open loop, the pending backlog sampled every second
        local on=$(( $3 * sustain_secs ))
        sample_backlog=1
        run "$1 $2 open $3/s $sustain_secs s" "$daemon_url" "$(closed_limit "$on")" -n "$on" -r "$3" \
                -d "$sustain_secs" -c "$open_conns" --profile "$2" "${trackers[@]}" "${watch[@]}"
        sample_backlog=0
}

# stop_daemon MODE: a graceful stop is part of the result: it must drain and exit 0
stop_daemon() {
        local t0 _ rc=0
        log "stopping the daemon (SIGTERM)"
        t0=$(now)
        kill -TERM "$daemon_pid"
        for _ in $(seq 300); do
                kill -0 "$daemon_pid" 2>/dev/null || break
                sleep 0.1
        done
        if kill -0 "$daemon_pid" 2>/dev/null; then
                daemon_stop[$1]="did not exit within 30 s of SIGTERM (killed)"
                kill -KILL "$daemon_pid" 2>/dev/null || true
                wait "$daemon_pid" 2>/dev/null || true
                status=1
        else
                wait "$daemon_pid" || rc=$?
                daemon_stop[$1]=$(awk -v a="$t0" -v b="$(now)" -v c="$rc" \
                        'BEGIN { printf "exit %d after %.1f s", c, b - a }')
                [ "$rc" = 0 ] || status=1
        fi
        daemon_pid=""
}

for mode in "${modes[@]}"; do
        port=$(free_port 18080)
        log "starting easypost-syncd --projection=$mode on 127.0.0.1:$port ${daemon_args[*]:-}"
        DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret ./easypost-syncd \
                --listen="127.0.0.1:$port" --log_level=warn --projection="$mode" "${daemon_args[@]}" \
                >"$work/daemon-$mode.log" 2>&1 &
        daemon_pid=$!
        wait_http "http://127.0.0.1:$port/readyz" "$daemon_pid" "daemon-$mode"
        sleep 1
        idle_rss[$mode]=$(rss_kb "$daemon_pid")
        log "daemon ready (pid $daemon_pid, projection $mode), idle RSS $(mb "${idle_rss[$mode]}") MB"
        daemon_url="http://127.0.0.1:$port/webhooks/easypost"
        watch=(--pid "$daemon_pid" --pg-pid "$pg_pid" --db "$conninfo")

        if has_profile unique; then
                prof=(--profile unique)
                run "$mode unique closed c=1" "$daemon_url" "$(closed_limit "$n1")" -n "$n1" -c 1 \
                        "${prof[@]}" "${watch[@]}"
                run "$mode unique closed c=32" "$daemon_url" "$(closed_limit "$n")" -n "$n" -c 32 \
                        "${prof[@]}" "${watch[@]}"
                run "$mode unique closed c=256" "$daemon_url" "$(closed_limit "$n")" -n "$n" -c 256 \
                        "${prof[@]}" "${watch[@]}"
                open_runs "$mode" unique
                if [ "$mode" = deferred ] && [ "$sustain_secs" -gt 0 ]; then
                        sustained_run "$mode" unique 2500
                fi
        fi
        if has_profile progressive; then
                prof=(--profile progressive "${trackers[@]}")
                run "$mode progressive closed c=32" "$daemon_url" "$(closed_limit "$n")" -n "$n" -c 32 \
                        "${prof[@]}" "${watch[@]}"
                open_runs "$mode" progressive
                if [ "$mode" = deferred ] && [ "$sustain_secs" -gt 0 ]; then
                        sustained_run "$mode" progressive 5000
                fi
        fi
        peak_rss[$mode]=$(hwm_kb "$daemon_pid")
        curl -fs -m 5 "http://127.0.0.1:$port/metrics" >"$work/final-$mode.metrics" || true
        stop_daemon "$mode"
done
daemon_url=""

bport=$(free_port 18090)
log "starting bare_server on 127.0.0.1:$bport"
./bench/bare_server --listen "127.0.0.1:$bport" >"$work/bare.log" 2>&1 &
bare_pid=$!
wait_http "http://127.0.0.1:$bport/readyz" "$bare_pid" bare
run "bare c=32" "http://127.0.0.1:$bport/webhooks/easypost" "$(closed_limit "$n")" -n "$n" -c 32 \
        --pid "$bare_pid"
stop_pid "$bare_pid" bare_server
bare_pid=""

# ---- the same work in Node.js: bench/peer, node-postgres ----------------------------
# Same database, same table, same checks, one transaction per request; the
# peer's own CPU and RSS fill the daemon columns of its rows.
peer_skip="" peer_notes=()
if [ "${#peer_modes[@]}" -gt 0 ]; then
        if ! command -v node >/dev/null 2>&1; then
                peer_skip="node not found (apt-get install nodejs npm)"
        elif [ ! -d "$here/peer/node_modules/pg" ]; then
                if ! command -v npm >/dev/null 2>&1; then
                        peer_skip="npm not found, and bench/peer/node_modules is missing"
                else
                        log "installing the peer's dependencies (npm ci --prefix bench/peer)"
                        npm ci --prefix "$here/peer" --no-audit --no-fund >"$work/npm.log" 2>&1 ||
                                peer_skip="npm ci failed (tail of its log: $(tail -n 1 "$work/npm.log"))"
                fi
        fi
fi
[ -n "$peer_skip" ] && log "peer skipped: $peer_skip"
if [ -z "$peer_skip" ]; then
        for mode in "${peer_modes[@]}"; do
                pport=$(free_port 18100)
                log "starting the peer (node+pg, $mode mode, pool $peer_pool) on 127.0.0.1:$pport"
                DATABASE_URL=$conninfo EASYPOST_WEBHOOK_SECRET=$secret node "$here/peer/peer.js" \
                        --listen "127.0.0.1:$pport" --mode "$mode" --pool "$peer_pool" \
                        >"$work/peer-$mode.log" 2>&1 &
                peer_pid=$!
                if ! wait_ready "http://127.0.0.1:$pport/readyz" "$peer_pid"; then
                        # the daemon's rows are done: report, do not abandon them
                        stop_pid "$peer_pid" peer.js
                        peer_pid=""
                        peer_notes+=("peer $mode mode did not start: $(tail -n 1 "$work/peer-$mode.log")")
                        failed+=("peer $mode (did not start)")
                        status=1
                        continue
                fi
                for p in "${profiles[@]}"; do
                        prof=(--profile "$p")
                        [ "$p" = progressive ] && prof+=("${trackers[@]}")
                        run "peer $mode (node+pg) $p c=32" "http://127.0.0.1:$pport/webhooks/easypost" \
                                "$(closed_limit "$n")" -n "$n" -c 32 "${prof[@]}" --pid "$peer_pid" \
                                --pg-pid "$pg_pid" --db "$conninfo"
                done
                stop_pid "$peer_pid" peer.js
                peer_pid=""
                perr=$(grep -v -E '^peer.js: (listening|SIGTERM|SIGINT)' "$work/peer-$mode.log" | head -n 1 || true)
                [ -n "$perr" ] && peer_notes+=("peer $mode mode, first error: ${perr#peer.js: }")
        done
fi

# ---- the tables ------------------------------------------------------------------
bare_tp=$(jget throughput "$work/$(slug "bare c=32").json" 2>/dev/null || true)
per_event() { # cpu-seconds ok-count: CPU µs per event answered 2xx, or -
        awk -v s="$1" -v n="$2" 'BEGIN { if (s == "" || s < 0 || n <= 0) print "-"; else printf "%.0f", s * 1e6 / n }'
}
tp_of() { jget throughput "$work/$(slug "$1").json" 2>/dev/null || true; }
is_daemon_label() { # label: is it a daemon run (starts with a projection mode)?
        local m
        for m in "${modes[@]}"; do
                [[ "$1" == "$m "* ]] && return 0
        done
        return 1
}
drained_cell() { # drain file: "backlog / seconds" for the backlog column
        awk '{ if ($3 == "1") printf "%s / %s s", $1, $2
               else if ($3 == "0") printf "%s / >%d s", $1, l
               else printf "%s / ?", $1 }' l="$drain_limit" "$1"
}
# table_head WITH-BACKLOG-COLUMN (1 or 0)
table_head() {
        if [ "$1" = 1 ]; then
                echo "| run | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | errors | late | lost | batch | backlog at end → 0 after | daemon CPU % | PG CPU % | daemon µs/event | PG µs/event | peak RSS MB | vs bare | SYN ovf |"
                echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        else
                echo "| run | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | errors | late | lost | batch | daemon CPU % | PG CPU % | daemon µs/event | PG µs/event | peak RSS MB | vs bare | SYN ovf |"
                echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        fi
}
# table_row LABEL WITH-BACKLOG-COLUMN
table_row() {
        local label=$1 f j tp lost batch pg ok dus pus vs ovf bl="" empty="| | | | | | | | | | | | | | | | | |"
        f="$work/$(slug "$label")"
        j="$f.json"
        if [ ! -f "$j" ]; then
                [ "$2" = 1 ] && empty="| $empty"
                echo "| $label | failed $empty"
                return
        fi
        tp=$(jget throughput "$j")
        lost=$(jget lost "$j")
        [ "$(jget db_checked "$j")" = true ] || lost=n/a
        batch=-
        if [ -s "$f.metrics0" ] && [ -s "$f.metrics1" ]; then
                batch=$(awk -v b0="$(metric easypost_sync_batches_total "$f.metrics0")" \
                        -v b1="$(metric easypost_sync_batches_total "$f.metrics1")" \
                        -v s0="$(metric easypost_sync_batch_events_sum "$f.metrics0")" \
                        -v s1="$(metric easypost_sync_batch_events_sum "$f.metrics1")" \
                        'BEGIN { if (b1 > b0) printf "%.1f", (s1 - s0) / (b1 - b0); else print "-" }')
        fi
        if [ "$2" = 1 ]; then
                bl="-"
                [ -f "$f.drain" ] && bl=$(drained_cell "$f.drain")
                bl=" $bl |"
        fi
        pg=$(jget pg_cpu_pct "$j")
        [ "${pg%%.*}" = -1 ] && pg=-
        ok=$(jget ok "$j")
        dus=$(per_event "$(jget daemon_cpu_s "$j")" "$ok")
        pus=$(per_event "$(jget pg_cpu_s "$j")" "$ok")
        vs=-
        [ -n "$bare_tp" ] && vs=$(awk -v a="$tp" -v b="$bare_tp" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
        ovf=$(( $(cat "$f.ovf1") - $(cat "$f.ovf0") ))
        printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |%s %.0f | %s | %s | %s | %s | %s | %s |\n' \
                "$label" "$tp" "$(jget p50_ms "$j")" "$(jget p90_ms "$j")" "$(jget p99_ms "$j")" \
                "$(jget p999_ms "$j")" "$(jget max_ms "$j")" "$(jget non2xx "$j")" \
                "$(jget errors "$j")" "$(jget late "$j")" "$lost" "$batch" "$bl" \
                "$(jget daemon_cpu_pct "$j")" "$pg" "$dus" "$pus" \
                "$(mb "$(jget daemon_rss_peak_kb "$j")")" "$vs" "$ovf"
}
# projector_line LABEL: events stored / (run + drain) for a deferred run, and for a
# sustained run the largest backlog sampled during it
projector_line() {
        local f j stored line
        f="$work/$(slug "$1")"
        j="$f.json"
        [ -f "$j" ] && [ -f "$f.drain" ] || return 0
        stored=$(jget stored "$j")
        [ "$(jget db_checked "$j")" = true ] || stored=$(jget ok "$j")
        line=$(awk -v n="$stored" -v d="$(jget duration_s "$j")" '
                { if ($3 != "1") printf "%d events stored in %.1f s, backlog %s at the end, not drained: n/a", n, d, $1
                  else if (d + $2 > 0) printf "%d events stored / (%.1f s run + %.1f s drain) = %.0f projected events/s", n, d, $2, n / (d + $2)
                  else printf "%d events stored: n/a", n }' "$f.drain")
        if [ -f "$f.backlog" ]; then
                line+=$(awk '$2 ~ /^[0-9]+$/ { k++; if ($2 + 0 > m) m = $2 + 0 }
                        END { printf "; pending backlog during the run: max %d (%d samples, one a second)", m, k }' "$f.backlog")
                line+=$(awk '{ if ($3 == "1") printf ", %s at the end, 0 after %s s", $1, $2
                               else printf ", %s at the end, not drained", $1 }' "$f.drain")
        fi
        echo "- $1: $line."
}
mode_title() {
        case $1 in
        inline) echo "projection = inline (tracker events projected in the webhook's transaction)" ;;
        deferred) echo "projection = deferred (acknowledged once the raw event commits, projected right after by the projector)" ;;
        esac
}
{
        echo "# easypost-syncd benchmark"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $revision,"
        echo "$(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr),"
        echo "$("$pgbin/postgres" --version) (fsync=$pg_fsync, unix socket), loadgen on the same host,"
        echo "load average before the runs: $load0."
        [ "$quick" = 1 ] && echo "BENCH_QUICK=1: $n events per run, a smoke test, not a measurement."
        [ -n "${BENCH_DAEMON_ARGS:-}" ] && echo "Daemon options: ${BENCH_DAEMON_ARGS}"
        for proj in "${modes[@]}"; do
                echo
                echo "## $(mode_title "$proj")"
                echo
                table_head 1
                for label in "${labels[@]}"; do
                        [[ "$label" == "$proj "* ]] && table_row "$label" 1
                done
                echo
                warns=$(grep -c 'lvl=warn' "$work/daemon-$proj.log" || true)
                errs=$(grep -c 'lvl=err' "$work/daemon-$proj.log" || true)
                echo "Daemon ($proj): idle RSS $(mb "${idle_rss[$proj]:-0}") MB before the runs, peak RSS (VmHWM) $(mb "${peak_rss[$proj]:-0}") MB;"
                echo "log at warn level: $warns warning(s), $errs error(s); SIGTERM: ${daemon_stop[$proj]:-not sent}."
                fails=""
                for label in "${labels[@]}"; do
                        f="$work/$(slug "$label").drain"
                        [[ "$label" == "$proj "* ]] && [ -f "$f" ] || continue
                        fails+=$(awk -v l="$label" '$4 != "0" { printf "; %s: %s", l, $4 }' "$f")
                done
                [ -z "$fails" ] || echo "Projection failures (webhook_events.status = 'failed'): ${fails#; }."
                if [ "$proj" = deferred ]; then
                        echo
                        echo "Projector throughput (events stored during the run / (run + drain), drain timed from when loadgen returns):"
                        echo
                        for label in "${labels[@]}"; do
                                [[ "$label" == "$proj "* ]] && projector_line "$label"
                        done
                fi
                if [ "${#peer_modes[@]}" -gt 0 ] && [ -z "$peer_skip" ]; then
                        [ "$proj" = deferred ] && echo
                        for p in "${profiles[@]}"; do
                                ours=$(tp_of "$proj $p closed c=32")
                                line=""
                                for mode in "${peer_modes[@]}"; do
                                        theirs=$(tp_of "peer $mode (node+pg) $p c=32")
                                        line+=$(awk -v a="$ours" -v b="$theirs" -v m="$mode" 'BEGIN {
                                                if (a == "" || b == "" || b <= 0) printf "; %s-mode peer: n/a", m
                                                else printf "; %.2f× the %s-mode peer (%.0f vs %.0f events/s)", a / b, m, a, b }')
                                done
                                [ -n "$ours" ] && echo "vs peer, $proj $p closed c=32: easypost-syncd ${line#; }."
                        done
                fi
        done
        echo
        echo "## bare_server and the Node.js peer"
        echo
        table_head 0
        for label in "${labels[@]}"; do
                is_daemon_label "$label" || table_row "$label" 0
        done
        [ -n "$peer_skip" ] && echo "| peer (node+pg) | skipped: ${peer_skip//|//} | | | | | | | | | | | | | | | | | |"
        echo
        echo "Rows \"bare\": bare_server (evhttp, no check, no database); its CPU/RSS columns are bare_server's."
        if [ "${#peer_modes[@]}" -gt 0 ] && [ -z "$peer_skip" ]; then
                pg_ver=$(node -p "require('$here/peer/node_modules/pg/package.json').version" 2>/dev/null || echo '?')
                echo "Rows \"peer\": bench/peer/peer.js (Node.js $(node --version), pg $pg_ver, pool $peer_pool, mode raw:" \
                        "one INSERT, full: eps_ingest_batch); its daemon CPU/RSS columns are the node process's."
                for note in "${peer_notes[@]}"; do
                        echo "$note"
                done
        fi
        if [ "${#failed[@]}" -gt 0 ]; then
                echo
                echo "FAILED: ${failed[*]}"
        fi
} >"$out"
cat "$out"
for proj in "${modes[@]}"; do
        if grep -q -E 'lvl=(warn|err)' "$work/daemon-$proj.log"; then
                echo >&2
                echo "daemon log, projection $proj (distinct warnings/errors, first 10):" >&2
                grep -E 'lvl=(warn|err)' "$work/daemon-$proj.log" | sed 's/^ts=[^ ]* //; s/rid=[^ ]* //' |
                        sed 's/evt_[0-9a-f]*/evt_…/g' | sort | uniq -c | sort -rn | head -n 10 >&2 || true
        fi
done
exit "$status"
