#!/bin/bash
# easypost-sync-entrypoint - the image's ENTRYPOINT and HEALTHCHECK.
#
#   easypost-sync-entrypoint [easypost-syncd] [ARGS...]   run the daemon (or any command)
#   easypost-sync-entrypoint --migrate                    arguments starting with - go to the daemon
#   easypost-sync-entrypoint healthcheck                  GET /healthz, exit 0 on HTTP 200
#
# Secrets the daemon cannot read from a file itself are read here from
# <NAME>_FILE (Docker/Compose secrets) and exported as <NAME>:
#   DATABASE_URL_FILE, EASYPOST_SYNC_DATABASE_URL_FILE, PGPASSWORD_FILE
#   (libpq then supplies the password for a DATABASE_URL without one),
#   EASYPOST_SYNC_BASIC_AUTH_PASSWORD_FILE.
# EASYPOST_WEBHOOK_SECRET_FILE and EASYPOST_API_KEY_FILE are left alone: the
# daemon reads those files itself (and re-reads them on SIGHUP).
set -euo pipefail

die() {
	echo "easypost-sync-entrypoint: $*" >&2
	exit 1
}

file_env() {
	local var=$1 file_var=${1}_FILE
	local file=${!file_var:-}
	[ -n "$file" ] || return 0
	if [ -n "${!var:-}" ]; then
		die "both $var and $file_var are set; use one"
	fi
	[ -r "$file" ] || die "$file_var: cannot read $file (uid $(id -u))"
	local val
	val=$(<"$file")
	# one value: drop a trailing CR/newline an editor may have left
	val=${val%$'\n'}
	val=${val%$'\r'}
	export "$var=$val"
	unset "$file_var"
}

# host:port the daemon serves /healthz on: metrics_listen when set, else listen.
health_addr() {
	local a=${EASYPOST_HEALTHCHECK_ADDR:-}
	[ -n "$a" ] || a=${EASYPOST_SYNC_METRICS_LISTEN:-}
	[ -n "$a" ] || a=${EASYPOST_SYNC_LISTEN:-}
	[ -n "$a" ] || a=${LISTEN:-}
	[ -n "$a" ] || a=127.0.0.1:8080
	printf '%s\n' "$a"
}

healthcheck() {
	local addr host port line
	addr=$(health_addr)
	host=${addr%:*}
	port=${addr##*:}
	case $host in
	'' | 0.0.0.0 | '*') host=127.0.0.1 ;;
	'[::]') host=::1 ;;
	\[*\]) host=${host#[}; host=${host%]} ;;
	esac
	# bash's /dev/tcp: no curl in the image. timeout bounds the connect too.
	exec 3<>"/dev/tcp/$host/$port" || { echo "healthcheck: cannot connect to $host:$port"; exit 1; }
	printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
	IFS= read -r -t 5 line <&3 || { echo "healthcheck: no answer from $host:$port"; exit 1; }
	exec 3<&-
	line=${line%$'\r'}
	case $line in
	"HTTP/1."?" 200"*) echo "healthcheck: $host:$port $line"; exit 0 ;;
	esac
	echo "healthcheck: $host:$port answered \"$line\""
	exit 1
}

if [ "${1:-}" = healthcheck ]; then
	export -f healthcheck health_addr
	exec timeout 8 bash -c healthcheck
fi

for v in DATABASE_URL EASYPOST_SYNC_DATABASE_URL PGPASSWORD EASYPOST_SYNC_BASIC_AUTH_PASSWORD; do
	file_env "$v"
done

if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- easypost-syncd "$@"
fi
exec "$@"
