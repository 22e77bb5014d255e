#!/bin/sh
# pgbouncer-entrypoint - writes /tmp/pgbouncer/pgbouncer.ini from the
# environment and runs PgBouncer in the foreground.
#   PGBOUNCER_LISTEN_ADDR (0.0.0.0), PGBOUNCER_LISTEN_PORT (6432)
#   DB_HOST (postgres), DB_PORT (5432), DB_NAME, DB_USER: the one database
#   served, under the same name; DB_PASSWORD_FILE: the role's password.
#   Clients authenticate with SCRAM against the same password.
#   PGBOUNCER_POOL_SIZE (20): server connections at most;
#   PGBOUNCER_MAX_CLIENT_CONN (500).
set -eu
: "${DB_NAME:?}" "${DB_USER:?}" "${DB_PASSWORD_FILE:?}"
d=/tmp/pgbouncer
mkdir -p "$d"
umask 077
pw=$(head -n 1 "$DB_PASSWORD_FILE")
printf '"%s" "%s"\n' "$DB_USER" "$pw" >"$d/users.txt"
cat >"$d/pgbouncer.ini" <<CONF
[databases]
$DB_NAME = host=${DB_HOST:-postgres} port=${DB_PORT:-5432} dbname=$DB_NAME

[pgbouncer]
listen_addr = ${PGBOUNCER_LISTEN_ADDR:-0.0.0.0}
listen_port = ${PGBOUNCER_LISTEN_PORT:-6432}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/users.txt
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL_SIZE:-20}
max_db_connections = ${PGBOUNCER_POOL_SIZE:-20}
max_client_conn = ${PGBOUNCER_MAX_CLIENT_CONN:-500}
ignore_startup_parameters = extra_float_digits
CONF
exec pgbouncer "$d/pgbouncer.ini"
