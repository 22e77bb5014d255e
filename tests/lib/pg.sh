#!/bin/sh
# pg.sh - a throwaway or project-local PostgreSQL cluster, no root needed by
# the cluster itself. PostgreSQL refuses to run as root, so as root the
# cluster runs as the `postgres` user (or `easypost-sync`, created if needed).
#
#   pg.sh start DIR [PORT]   initdb into DIR/data if empty, start, socket in DIR
#   pg.sh stop DIR [MODE]    stop (mode: fast | immediate)
#   pg.sh status DIR         exit 0 when running
#   pg.sh createdb DIR PORT DB
#   pg.sh conninfo DIR [PORT] [DB]
#   pg.sh user DIR           the user the cluster runs as (for other servers
#                            that refuse root, e.g. PgBouncer)
# PG_FSYNC=off and PG_OPTS="-c key=value ..." pass server settings at start.
set -eu

cmd=${1:?usage: pg.sh start|stop|conninfo DIR}
dir=${2:?missing DIR}
port=${3:-54329}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/initdb" ] || { echo "pg.sh: PostgreSQL server not found (apt-get install postgresql)" >&2; exit 1; }

pg_user() {
        if [ "$(id -u)" != 0 ]; then
                id -un
        elif id postgres >/dev/null 2>&1; then
                echo postgres
        else
                id easypost-sync >/dev/null 2>&1 || useradd --system --no-create-home easypost-sync
                echo easypost-sync
        fi
}

as_pg() {
        if [ "$(id -u)" = 0 ]; then
                runuser -u "$(pg_user)" -- "$@"
        else
                "$@"
        fi
}

case "$cmd" in
start)
        mkdir -p "$dir"
        dir=$(cd "$dir" && pwd)
        if [ "$(id -u)" = 0 ]; then
                chown "$(pg_user)" "$dir"
                as_pg test -w "$dir" || {
                        echo "pg.sh: user $(pg_user) cannot reach $dir (a parent directory is private);" \
                                "choose a data directory it can reach (EPS_PG_DIR=...)" >&2
                        exit 1
                }
        fi
        if [ ! -f "$dir/data/PG_VERSION" ]; then
                as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
                        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
                        { cat "$dir/initdb.log" >&2; exit 1; }
        fi
        as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
                -o "-k $dir -c listen_addresses='' -p $port -c max_connections=200 -c fsync=${PG_FSYNC:-on} ${PG_OPTS:-}" \
                start >/dev/null ||
                { tail -n 20 "$dir/postgres.log" >&2; exit 1; }
        ;;
stop)
        dir=$(cd "$dir" && pwd)
        as_pg "$bindir/pg_ctl" -D "$dir/data" -m "${4:-${3:-fast}}" -w stop >/dev/null 2>&1 || true
        ;;
status)
        [ -f "$dir/data/PG_VERSION" ] || exit 3
        as_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
        ;;
conninfo)
        dir=$(cd "$dir" && pwd)
        echo "host=$dir port=$port user=postgres dbname=${4:-easypost_sync}"
        ;;
user)
        pg_user
        ;;
createdb)
        dir=$(cd "$dir" && pwd)
        db=${4:-easypost_sync}
        "$bindir/psql" -qAt -h "$dir" -p "$port" -U postgres -d postgres \
                -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
                "$bindir/createdb" -h "$dir" -p "$port" -U postgres "$db"
        ;;
*)
        echo "pg.sh: unknown command $cmd" >&2
        exit 2
        ;;
esac
