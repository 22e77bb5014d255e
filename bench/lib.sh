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
