#!/bin/bash
# docker-entrypoint.sh of the postgres:15 stand-in: initialise $PGDATA on
# first start (user, password, database, init scripts), then exec postgres.
# Runs as the postgres user. Follows the official image's contract; see the
# Dockerfile beside it.
set -Eeuo pipefail

log() { echo "standin-entrypoint: $*" >&2; }
die() { log "$*"; exit 1; }

file_env() {
	local var=$1 file_var=${1}_FILE def=${2:-}
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		die "both $var and $file_var are set (but are exclusive)"
	fi
	local val=$def
	if [ -n "${!var:-}" ]; then
		val=${!var}
	elif [ -n "${!file_var:-}" ]; then
		[ -r "${!file_var}" ] || die "$file_var: cannot read ${!file_var} as uid $(id -u)"
		val=$(<"${!file_var}")
	fi
	export "$var=$val"
	unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
	die "run this image as the postgres user (uid 999), not root"
fi

init_db() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	local auth=${POSTGRES_HOST_AUTH_METHOD:-}
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
		die "POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is required unless POSTGRES_HOST_AUTH_METHOD=trust"
	fi
	[ -n "$auth" ] || auth=scram-sha-256

	log "initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
	local pwfile
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
		--locale=C.UTF-8 --auth-local=trust --auth-host="$auth" $POSTGRES_INITDB_ARGS >/dev/null
	rm -f "$pwfile"
	{
		echo
		echo "# added by the stand-in entrypoint"
		echo "host all all all $auth"
	} >> "$PGDATA/pg_hba.conf"
	echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"

	# temporary server on the unix socket only, so nothing reaches it over TCP
	# (and a TCP pg_isready keeps failing) until initialisation is done
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w -t 60 start >/dev/null
	export PGUSER=$POSTGRES_USER PGDATABASE=postgres PGHOST=/var/run/postgresql
	local psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc -q)
	if [ "$POSTGRES_DB" != postgres ]; then
		"${psql[@]}" --set db="$POSTGRES_DB" <<-'SQL'
			CREATE DATABASE :"db";
		SQL
	fi
	local f
	# shellcheck disable=SC1090 # init scripts are the user's
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh) log "running $f"; . "$f" ;;
		*.sql) log "running $f"; "${psql[@]}" -d "$POSTGRES_DB" -f "$f" ;;
		*.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" -d "$POSTGRES_DB" ;;
		*) [ -e "$f" ] && log "ignoring $f" ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
	unset PGUSER PGDATABASE PGHOST POSTGRES_PASSWORD
	log "initialisation done"
}

if [ "$1" = postgres ]; then
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" 2>/dev/null || true
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		init_db
	else
		log "$PGDATA holds a database already: skipping initialisation"
	fi
	unset POSTGRES_PASSWORD
fi

exec "$@"
