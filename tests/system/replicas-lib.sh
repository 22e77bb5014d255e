# replicas-lib.sh - sourced by tests/system/replicas.sh and bench/replicas.sh: free
# loopback ports, Debian's PgBouncer in transaction pooling mode, replicas of
# the daemon and HAProxy in front of them. POSIX sh.
#
# The caller sets top_srcdir, top_builddir and RL_DIR (a work directory the
# cluster's user can reach: PgBouncer refuses to run as root, so as root it
# runs as the user tests/lib/pg.sh runs PostgreSQL as). Every process started
# here is stopped by PID by rl_stop_all.

RL_PIDS=""
RL_PGB_PIDFILE=""
# below the ephemeral range (32768-60999), where port-0 binds of other tests land
rl_next_port=$((21000 + ($$ % 1400) * 8))

rl_log() { printf '%s: %s\n' "${RL_NAME:-replicas}" "$*" >&2; }

# rl_port VAR: VAR = a loopback port nothing listens on (curl exit 7: refused)
rl_port() {
        while [ "$rl_next_port" -lt 32768 ]; do
                rl_p=$rl_next_port
                rl_next_port=$((rl_next_port + 1))
                rl_rc=0
                curl -s -o /dev/null -m 2 "http://127.0.0.1:$rl_p/" 2>/dev/null || rl_rc=$?
                if [ "$rl_rc" = 7 ]; then
                        eval "$1=$rl_p"
                        return 0
                fi
        done
        rl_log "no free port"
        return 1
}

# rl_wait SECONDS CMD...: run CMD every 0.2 s until it succeeds
rl_wait() {
        rl_end=$(($(date +%s) + $1))
        shift
        until "$@"; do
                [ "$(date +%s)" -lt "$rl_end" ] || return 1
                sleep 0.2
        done
}

rl_status() { # rl_status PORT PATH: the HTTP status, 000 when nothing answers
        curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null || true
}
rl_ready() { [ "$(rl_status "$1" /readyz)" = 200 ]; }

# rl_pgbouncer_start PORT PGDIR PGPORT DB: PgBouncer on 127.0.0.1:PORT, pool
# mode transaction, database DB on the cluster's unix socket; trust auth
# (loopback only, a throwaway cluster).
rl_pgbouncer_start() {
        rl_d=$RL_DIR/pgbouncer
        mkdir -p "$rl_d"
        printf '"postgres" ""\n' >"$rl_d/users.txt"
        cat >"$rl_d/pgbouncer.ini" <<EOF
[databases]
$4 = host=$2 port=$3 dbname=$4 user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = trust
auth_file = $rl_d/users.txt
pool_mode = transaction
default_pool_size = ${RL_PGB_POOL:-20}
max_client_conn = 500
max_db_connections = ${RL_PGB_POOL:-20}
logfile = $rl_d/pgbouncer.log
pidfile = $rl_d/pgbouncer.pid
admin_users = postgres
EOF
        RL_PGB_PIDFILE=$rl_d/pgbouncer.pid
        if [ "$(id -u)" = 0 ]; then
                rl_u=$("$top_srcdir/tests/lib/pg.sh" user "$RL_DIR")
                chown -R "$rl_u" "$rl_d"
                runuser -u "$rl_u" -- pgbouncer -q -d "$rl_d/pgbouncer.ini"
        else
                pgbouncer -q -d "$rl_d/pgbouncer.ini"
        fi
        rl_wait 30 rl_pgbouncer_up "$1" "$4" ||
                { rl_log "PgBouncer did not start"; tail -n 20 "$rl_d/pgbouncer.log" >&2; return 1; }
}
rl_pgbouncer_up() {
        [ -s "$RL_PGB_PIDFILE" ] &&
                psql -X -qAt -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c 'SELECT 1' >/dev/null 2>&1
}

# rl_daemon_start NAME PORT [--key=value ...]: a replica on 127.0.0.1:PORT
# named NAME (instance_id), logging to RL_DIR/NAME.log; DATABASE_URL and the
# secrets come from the caller's environment. Sets RL_LAST_PID.
rl_daemon_start() {
        rl_n=$1
        rl_p=$2
        shift 2
        "$top_builddir/easypost-syncd" --listen="127.0.0.1:$rl_p" --instance_id="$rl_n" "$@" \
                >"$RL_DIR/$rl_n.log" 2>&1 &
        RL_LAST_PID=$!
        RL_PIDS="$RL_PIDS $RL_LAST_PID"
}

# rl_haproxy_start PORT SERVERPORT...: HAProxy on 127.0.0.1:PORT, round robin
# over the daemons with /readyz health checks; a request naming a replica in
# X-Replica (1, 2, ...) goes to that one while it is up, elsewhere when not.
rl_haproxy_start() {
        rl_lp=$1
        shift
        rl_c=$RL_DIR/haproxy.cfg
        cat >"$rl_c" <<EOF
global
    maxconn 2000
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout queue 30s
    retries 3
    option redispatch 1

frontend webhooks
    bind 127.0.0.1:$rl_lp
    capture request header X-Hmac-Signature len 80
    default_backend daemons

backend daemons
    balance roundrobin
    option httpchk GET /readyz
    default-server check inter 500ms fall 2 rise 2
EOF
        rl_i=1
        for rl_sp in "$@"; do
                printf '    use-server d%s if { req.hdr(x-replica) -m str %s }\n' "$rl_i" "$rl_i" >>"$rl_c"
                rl_i=$((rl_i + 1))
        done
        rl_i=1
        for rl_sp in "$@"; do
                printf '    server d%s 127.0.0.1:%s\n' "$rl_i" "$rl_sp" >>"$rl_c"
                rl_i=$((rl_i + 1))
        done
        haproxy -db -f "$rl_c" >"$RL_DIR/haproxy.log" 2>&1 &
        RL_PIDS="$RL_PIDS $!"
        rl_wait 30 rl_ready "$rl_lp" ||
                { rl_log "HAProxy did not start"; tail -n 20 "$RL_DIR/haproxy.log" >&2; return 1; }
}

# rl_stop PID: SIGTERM, SIGKILL after 15 s
rl_stop() {
        kill -TERM "$1" 2>/dev/null || return 0
        rl_i=0
        while kill -0 "$1" 2>/dev/null && [ $rl_i -lt 75 ]; do
                sleep 0.2
                rl_i=$((rl_i + 1))
        done
        kill -KILL "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
}

# rl_stop_procs: every daemon, HAProxy and fake started here; rl_stop_all: PgBouncer too
rl_stop_procs() {
        for rl_pid in $RL_PIDS; do
                rl_stop "$rl_pid"
        done
        RL_PIDS=""
}
rl_stop_all() {
        rl_stop_procs
        if [ -n "$RL_PGB_PIDFILE" ] && [ -s "$RL_PGB_PIDFILE" ]; then
                rl_stop "$(cat "$RL_PGB_PIDFILE")"
        fi
        RL_PGB_PIDFILE=""
}

# --- for the bench scripts (bench/replicas.sh, bench/wal.sh) -----------------

# rl_bench_start NAME: RL_DIR = a new /tmp/NAME.XXXXXX, a cluster in
# RL_DIR/pg (PG_FSYNC, PG_OPTS apply) with an empty database "bench", and an
# EXIT trap that stops everything started here and removes RL_DIR (kept on
# failure or with BENCH_KEEP=1). Sets pg_dir, pg_port, db, pg_direct.
rl_bench_start() {
        RL_DIR=$(mktemp -d "/tmp/$1.XXXXXX")
        chmod 755 "$RL_DIR"
        pg_dir=$RL_DIR/pg
        pg_port=$((20000 + ($$ + 11) % 20000)) # names the socket only
        db=bench
        pg_direct="host=$pg_dir port=$pg_port dbname=$db user=postgres"
        rl_pg_started=
        trap rl_bench_cleanup EXIT
        trap 'exit 130' INT TERM
        "$top_srcdir/tests/lib/pg.sh" start "$pg_dir" "$pg_port"
        rl_pg_started=1
        "$top_srcdir/tests/lib/pg.sh" createdb "$pg_dir" "$pg_port" "$db"
}
rl_bench_cleanup() {
        rl_rc=$?
        trap - EXIT INT TERM
        rl_stop_all
        [ -n "$rl_pg_started" ] && "$top_srcdir/tests/lib/pg.sh" stop "$pg_dir" fast
        if [ "$rl_rc" != 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
                rl_log "logs kept in $RL_DIR"
        else
                rm -rf "$RL_DIR"
        fi
        exit "$rl_rc"
}
# rl_wal LSN0 LSN1: "records fpi_bytes commits" between the two, exactly, from
# the WAL itself (pg_waldump, as the cluster's user)
rl_wal() {
        q "SELECT pg_switch_wal()" >/dev/null # the segment holding LSN1 is complete on disk
        rl_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        set -- "$rl_bin/pg_waldump" --stats=record -p "$pg_dir/data/pg_wal" -s "$1" -e "$2"
        if [ "$(id -u)" = 0 ]; then
                set -- runuser -u "$("$top_srcdir/tests/lib/pg.sh" user "$RL_DIR")" -- "$@"
        fi
        "$@" | awk '$1 == "Transaction/COMMIT" { c = $2 } $1 == "Total" { r = $2; f = $5 }
                    END { print r + 0, f + 0, c + 0 }'
}
# q SQL [DB]: one statement on the cluster's socket, unaligned
q() { psql -X -qAt -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$pg_port" -U postgres -d "${2:-$db}" -c "$1"; }
# rl_fresh_db: drop and create the database, apply the migrations directly
rl_fresh_db() {
        q "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
        q "CREATE DATABASE $db" postgres
        DATABASE_URL=$pg_direct "$top_builddir/easypost-syncd" --migrate --sql_dir="$top_srcdir/sql" \
                >"$RL_DIR/migrate.log" 2>&1 || { cat "$RL_DIR/migrate.log" >&2; return 1; }
}
