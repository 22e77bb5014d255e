# lib.sh - shell functions the bench scripts share (sourced, never run).

# stop_pid PID [NAME]: SIGTERM, up to 20 s, then SIGKILL; for this script's
# own children only.
stop_pid() {
        local pid=$1 name=${2:-process} _
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 200); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
                echo "${0##*/}: $name (pid $pid) ignored SIGTERM for 20 s: SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
}

# build_in_tree: configures this tree once and builds the daemon and loadgen,
# for the scripts that run the tree's own build.
build_in_tree() {
        [ -f Makefile ] || { [ -x configure ] || autoreconf -fi >/dev/null; ./configure >/dev/null; }
        make -s easypost-syncd bench/loadgen >/dev/null
}

# stop_daemon_and_pg: for EXIT traps; stops $daemon_pid and, when
# pg_started=1, the cluster in $work/pg.
stop_daemon_and_pg() {
        stop_pid "${daemon_pid:-}" easypost-syncd
        if [ "${pg_started:-0}" = 1 ]; then
                tests/lib/pg.sh stop "$work/pg" fast
        fi
}

# bench_work NAME: sets $pgbin (the newest PostgreSQL's bin directory) and
# $work, a fresh directory /tmp/eps-NAME.XXXXXX that the cluster's user can enter.
bench_work() {
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        work=$(mktemp -d "/tmp/eps-$1.XXXXXX")
        chmod 755 "$work"
}

# bench_exit: the EXIT trap of a script whose only leftovers are its daemon,
# its cluster and $work (plus what its own cleanup_extra, if defined, stops):
# stops them, removes $work and exits with the script's status.
bench_exit() {
        local rc=$?
        trap - EXIT INT TERM
        if declare -F cleanup_extra >/dev/null; then
                cleanup_extra
        fi
        stop_daemon_and_pg
        rm -rf "$work"
        exit "$rc"
}

# psql ARGS...: psql on $conninfo (set by the caller before the first call),
# unaligned, tuples only, stopping at the first error.
psql() { "$pgbin/psql" "$conninfo" -qAtX -v ON_ERROR_STOP=1 "$@"; }

# jget KEY [FILE]: a scalar of loadgen's --json output (FILE, by default
# $work/run.json).
jget() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "${2:-$work/run.json}"; }

# wait_ready URL PID: 0 once GET URL answers 200 (at most 30 s), 1 when PID
# exits first, 2 on timeout.
wait_ready() {
        local _
        for _ in $(seq 300); do
                curl -fs -m 1 -o /dev/null "$1" && return 0
                kill -0 "$2" 2>/dev/null || return 1
                sleep 0.1
        done
        return 2
}
