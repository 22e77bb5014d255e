#!/bin/bash
# docker/test.sh - the deployment test: build the image, bring up the compose
# stack (PostgreSQL, migrate, PgBouncer, two replicas of the daemon) on the host
# network, send signed webhooks, check the rows, tear it all down.
#
#   sudo docker/test.sh          (root: it installs packages and runs its own dockerd)
#
# It starts a private dockerd (own socket, exec root and data root; no bridge,
# no iptables) and stops it again by PID; a system dockerd, if any, is not
# touched. The data root stays in $EPS_DOCKER_CACHE (default
# /var/tmp/easypost-sync-docker) so that a second run reuses the base image
# and the build cache; delete that directory to test from nothing.
# The base image debian:bookworm-slim is made locally with debootstrap from
# this machine's Debian mirror, and postgres:15 is docker/postgres-standin,
# so nothing is pulled from a registry.
#
# Environment: EPS_DOCKER_CACHE, EPS_DEBIAN_MIRROR (default: from
# /etc/apt/sources.list*), EPS_TEST_HTTP_PORT / EPS_TEST_PG_PORT (default: the
# first free port from 18080 / 15432), EPS_TEST_HTTP_PORT2 / EPS_TEST_PGB_PORT
# (the second replica, PgBouncer; default: the next free ones), EPS_TEST_BUDGET (seconds for all steps
# but the teardown, default 720: each step's timeout is cut to what is left),
# EPS_TEST_KEEP=1 (leave the stack and dockerd running for a look; prints how
# to reach them).
# The last line is "docker test: N passed, M failed"; exit 1 on any failure.
# shellcheck disable=SC2317,SC2016 # functions run from traps and check; bash -c bodies
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EPS_DOCKER_CACHE:-/var/tmp/easypost-sync-docker}
DOCKER=/usr/bin/docker # Debian's client; another docker earlier in PATH may not match the daemon
COMPOSE=docker-compose
PROJECT=easypost-sync-test
IMAGE=easypost-syncd:test
PGB_IMAGE=easypost-sync-pgbouncer:test
T0=$(date +%s)
DEADLINE=$((T0 + ${EPS_TEST_BUDGET:-720}))
export DOCKER_BUILDKIT=0 # the classic builder: --network host needs no entitlement

passed=0
failed=0
TMP=
DOCKERD_PID=
STACK_UP=0

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS $*"; }
fail() { failed=$((failed + 1)); log "FAIL $*"; }
left() { # left MAX: seconds a step may take, at most MAX and what the budget has left
	local l=$((DEADLINE - $(date +%s)))
	[ "$l" -lt "$1" ] || l=$1
	[ "$l" -gt 1 ] || l=1
	echo "$l"
}
check() { # check NAME CMD...: one counted assertion
	local name=$1
	shift
	if "$@"; then pass "$name"; else fail "$name"; fi
}

finish() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "${EPS_TEST_KEEP:-0}" = 1 ] && [ -n "$DOCKERD_PID" ]; then
		log "EPS_TEST_KEEP=1: leaving the stack up; DOCKER_HOST=$DOCKER_HOST, dockerd pid $DOCKERD_PID"
		log "  stop with: kill $DOCKERD_PID; rm -rf $TMP"
	else
		if [ "$STACK_UP" = 1 ]; then
			log "tearing down the stack"
			if timeout 120 "${COMPOSE_CMD[@]}" down -v --remove-orphans >"$TMP/down.log" 2>&1; then
				pass "docker-compose down -v"
			else
				fail "docker-compose down -v (see below)"
				tail -n 20 "$TMP/down.log"
			fi
		fi
		stop_dockerd
		[ -n "$TMP" ] && rm -rf "$TMP"
	fi
	[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
	log "finished in $(($(date +%s) - T0)) s"
	echo "docker test: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	exit $?
}
trap finish EXIT
trap 'log "interrupted"; failed=$((failed + 1)); exit 1' INT TERM

abort() {
	fail "$*"
	exit 1
}

stop_dockerd() {
	[ -n "$DOCKERD_PID" ] || return 0
	local execroot m
	# its --exec-root, read before it goes: the mounts to clean up are under it
	execroot=$(tr '\0' '\n' <"/proc/$DOCKERD_PID/cmdline" 2>/dev/null | sed -n '/^--exec-root$/{n;p;}')
	log "stopping dockerd (pid $DOCKERD_PID)"
	kill -TERM "$DOCKERD_PID" 2>/dev/null
	for _ in $(seq 1 60); do
		kill -0 "$DOCKERD_PID" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$DOCKERD_PID" 2>/dev/null; then
		log "dockerd did not stop in 30 s: SIGKILL"
		kill -KILL "$DOCKERD_PID" 2>/dev/null
	fi
	# The containerd it managed was its child; the shims exit with their
	# containers. dockerd may leave its netns bind mount in the exec root:
	# unmount what is under it (only a /tmp/epsd.* of this script's) so the
	# directory can go.
	case $execroot in
	/tmp/epsd.?*/exec)
		awk -v t="$execroot/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		[ "${execroot%/exec}" = "$TMP" ] || rm -rf "${execroot%/exec}"
		;;
	esac
	rm -f "$CACHE/dockerd.pid"
	DOCKERD_PID=
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # free_port FIRST: the first port from FIRST on that nothing listens on
	local p
	for p in $(seq "$1" $(($1 + 200))); do
		port_free "$p" && { echo "$p"; return 0; }
	done
	return 1
}

# The machine's Debian mirror (first URI serving bookworm) and its security mirror.
debian_uri() { # debian_uri SUITE
	local suite=$1 f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		awk -v suite="$suite" '
			function flush() { if (uris != "" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ")) { split(uris, u, " "); print u[1]; found = 1; exit } uris = ""; suites = ""; types = "" }
			/^[ \t]*$/ { flush(); next }
			/^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
			/^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
			/^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
			END { if (!found) flush() }' "$f"
	done
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) print $i }'
}

make_base_image() {
	local mirror security rootfs
	mirror=${EPS_DEBIAN_MIRROR:-$(debian_uri bookworm | head -n 1)}
	mirror=${mirror:-http://deb.debian.org/debian}
	security=$(debian_uri bookworm-security | head -n 1)
	rootfs=$CACHE/rootfs
	log "making debian:bookworm-slim with debootstrap from $mirror"
	rm -rf "$rootfs"
	if ! timeout "$(left 600)" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$TMP/debootstrap.log" 2>&1; then
		tail -n 30 "$TMP/debootstrap.log"
		return 1
	fi
	# apt in the image reaches the same mirrors, with the same proxy, as this machine
	rm -f "$rootfs/etc/apt/sources.list"
	{
		printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror"
		if [ -n "$security" ]; then
			printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$security"
		fi
	} >"$rootfs/etc/apt/sources.list.d/debian.sources"
	apt-config dump | grep -Ei '^Acquire::(https?|ftp)::Proxy' | sed 's/$/;/' >"$rootfs/etc/apt/apt.conf.d/01proxy" || true
	[ -s "$rootfs/etc/apt/apt.conf.d/01proxy" ] || rm -f "$rootfs/etc/apt/apt.conf.d/01proxy"
	# slim: no package cache, no lists, no docs
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
		"$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
		"$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/etc/hostname
	: >"$rootfs/etc/resolv.conf"
	tar -C "$rootfs" --numeric-owner -c . |
		timeout "$(left 300)" "$DOCKER" import --change 'CMD ["bash"]' \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			- debian:bookworm-slim >/dev/null || return 1
	rm -rf "$rootfs"
}

wait_for() { # wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds
	local end=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.5
	done
}

container_of() { "${COMPOSE_CMD[@]}" ps -q "$1" 2>/dev/null | head -n 1; }
health_of() { "$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null; }
is_healthy() { [ "$(health_of "$1")" = healthy ]; }

http() { # http METHOD PATH [curl args...]: prints "CODE BODY" (several may run at once)
	local method=$1 path=$2 out code
	shift 2
	out=$(mktemp "$TMP/http.XXXXXX")
	code=$(curl -sS -m 15 -o "$out" -w '%{http_code}' -X "$method" "$@" \
		"http://127.0.0.1:$HTTP_PORT$path" 2>"$out.err") || true
	printf '%s %s\n' "$code" "$(cat "$out" 2>/dev/null)"
	rm -f "$out" "$out.err"
}

post_event() { # post_event BODY SECRET
	local sig
	sig=$(printf '%s' "$1" | openssl dgst -sha256 -hmac "$2" | sed 's/^.*= *//')
	http POST /webhooks/easypost -H 'Content-Type: application/json' \
		-H "X-Hmac-Signature: hmac-sha256-hex=$sig" --data-binary "$1"
}

psql_in() { # psql_in SQL: run in the postgres container over its unix socket
	"$DOCKER" exec "$PG_CID" psql -X -A -t -q -U "$PG_USER" -d "$PG_DB" -c "$1"
}

show_logs() {
	log "compose logs (last lines):"
	timeout 30 "${COMPOSE_CMD[@]}" logs --no-color --tail=40 2>&1 | sed 's/^/    /'
}

# ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "docker/test.sh must run as root"; echo "docker test: 0 passed, 1 failed"; trap - EXIT; exit 1; }

need=()
command -v dockerd >/dev/null && [ -x "$DOCKER" ] || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! timeout "$(left 300)" apt-get install -y -q "${need[@]}" >/tmp/easypost-sync-apt.log 2>&1; then
		timeout "$(left 300)" apt-get update -q >>/tmp/easypost-sync-apt.log 2>&1
		timeout "$(left 300)" apt-get install -y -q "${need[@]}" >>/tmp/easypost-sync-apt.log 2>&1 ||
			{ tail -n 20 /tmp/easypost-sync-apt.log; abort "apt-get install ${need[*]}"; }
	fi
fi
pass "tools present (dockerd, docker-compose $($COMPOSE version --short 2>/dev/null), debootstrap, curl, openssl)"

mkdir -p "$CACHE/data"
chmod 0700 "$CACHE"
# one test at a time per cache (the data root belongs to one dockerd)
exec 9>"$CACHE/lock"
flock -w "$(left 300)" 9 || abort "another docker/test.sh holds $CACHE/lock"

# A dockerd of an earlier run that was killed before its teardown (its
# pidfile is in the cache; the cmdline names this data root): stop it by PID.
if [ -s "$CACHE/dockerd.pid" ]; then
	old=$(cat "$CACHE/dockerd.pid")
	oldcmd=$(tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null)
	if [[ $oldcmd == *"--data-root $CACHE/data "* ]]; then
		log "stopping the dockerd left by an earlier run (pid $old)"
		DOCKERD_PID=$old
		stop_dockerd
	fi
	rm -f "$CACHE/dockerd.pid"
fi

# short path: unix socket names are limited to 108 bytes
TMP=$(mktemp -d /tmp/epsd.XXXXXX)
export DOCKER_HOST=unix://$TMP/docker.sock
log "starting dockerd (data root $CACHE/data, socket $TMP/docker.sock)"
# 9>&-: the cache lock stays with this script, not with dockerd
dockerd --data-root "$CACHE/data" --exec-root "$TMP/exec" --host "$DOCKER_HOST" \
	--pidfile "$CACHE/dockerd.pid" --bridge none --iptables=false --ip6tables=false \
	--ip-masq=false --userland-proxy=false >"$TMP/dockerd.log" 2>&1 9>&- &
DOCKERD_PID=$!
if ! wait_for 60 "$DOCKER" version >/dev/null 2>&1; then
	tail -n 30 "$TMP/dockerd.log"
	abort "dockerd answers on $DOCKER_HOST"
fi
pass "dockerd $("$DOCKER" version -f '{{.Server.Version}}') up (pid $DOCKERD_PID)"

# Leftovers of an interrupted run in the cached data root: the data root is
# this test's alone, so every container in it goes.
leftovers=$("$DOCKER" ps -aq)
if [ -n "$leftovers" ]; then
	log "removing leftover containers: $(echo "$leftovers" | tr '\n' ' ')"
	# shellcheck disable=SC2086
	timeout "$(left 120)" "$DOCKER" rm -f -v $leftovers >/dev/null 2>&1
fi
"$DOCKER" volume ls -q | grep "^${PROJECT}_" | xargs -r "$DOCKER" volume rm -f >/dev/null 2>&1

if "$DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1; then
	log "debian:bookworm-slim is cached"
	pass "base image debian:bookworm-slim (cached)"
else
	make_base_image || abort "base image debian:bookworm-slim from debootstrap"
	pass "base image debian:bookworm-slim (debootstrap + docker import)"
fi

log "building $IMAGE"
if timeout "$(left 900)" "$DOCKER" build --network host -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$ROOT" \
	>"$TMP/build.log" 2>&1; then
	pass "docker build $IMAGE"
else
	tail -n 40 "$TMP/build.log"
	abort "docker build $IMAGE"
fi

log "building the postgres:15 stand-in"
if timeout "$(left 600)" "$DOCKER" build --network host -t postgres:15 "$ROOT/docker/postgres-standin" \
	>"$TMP/build-pg.log" 2>&1; then
	pass "docker build postgres:15 (docker/postgres-standin)"
else
	tail -n 40 "$TMP/build-pg.log"
	abort "docker build postgres:15"
fi

log "building the PgBouncer image"
if timeout "$(left 600)" "$DOCKER" build --network host -t "$PGB_IMAGE" "$ROOT/docker/pgbouncer" \
	>"$TMP/build-pgb.log" 2>&1; then
	pass "docker build $PGB_IMAGE (docker/pgbouncer)"
else
	tail -n 40 "$TMP/build-pgb.log"
	abort "docker build $PGB_IMAGE"
fi

# --- the image itself --------------------------------------------------------
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
check "image USER is not root ($user)" test -n "$user" -a "${user%%:*}" != 0 -a "${user%%:*}" != root
check "image declares a HEALTHCHECK" \
	test -n "$("$DOCKER" image inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' "$IMAGE")"
check "image exposes 8080/tcp" \
	test -n "$("$DOCKER" image inspect -f '{{index .Config.ExposedPorts "8080/tcp"}}' "$IMAGE")"
ver=$(timeout "$(left 60)" "$DOCKER" run --rm --network none "$IMAGE" easypost-syncd --version 2>&1)
check "easypost-syncd --version in the image ($ver)" grep -q '^easypost-syncd ' <<<"$ver"
tools=$(timeout "$(left 60)" "$DOCKER" run --rm --network none --entrypoint bash "$IMAGE" -c \
	'for t in cc gcc c99 make curl wget; do command -v $t; done; true' 2>&1)
check "no compiler or curl in the runtime image${tools:+ (found: $tools)}" test -z "$tools"
missing=$(timeout "$(left 60)" "$DOCKER" run --rm --network none --entrypoint bash "$IMAGE" -c \
	'ldd /usr/bin/easypost-syncd | grep "not found"; true' 2>&1)
check "every shared library of the daemon is in the image${missing:+ ($missing)}" test -z "$missing"

# --- the stack -----------------------------------------------------------------
HTTP_PORT=${EPS_TEST_HTTP_PORT:-$(free_port 18080)}
HTTP_PORT2=${EPS_TEST_HTTP_PORT2:-$(free_port $((HTTP_PORT + 1)))}
PG_PORT=${EPS_TEST_PG_PORT:-$(free_port 15432)}
PGB_PORT=${EPS_TEST_PGB_PORT:-$(free_port $((PG_PORT + 1000)))}
PG_USER=easypost
PG_DB=easypost_sync
SECRET=$(openssl rand -hex 24)
mkdir -p "$TMP/secrets"
chmod 0700 "$TMP/secrets"
openssl rand -hex 24 >"$TMP/secrets/postgres_password"
printf '%s\n' "$SECRET" >"$TMP/secrets/easypost_webhook_secret"
# readable by uid 10001 (daemon) and 999 (postgres) inside the containers;
# the 0700 directory keeps other users of this machine out
chmod 0644 "$TMP/secrets"/*
cat >"$TMP/test.env" <<EOF
EASYPOST_SYNC_IMAGE=$IMAGE
POSTGRES_IMAGE=postgres:15
POSTGRES_USER=$PG_USER
POSTGRES_DB=$PG_DB
POSTGRES_PASSWORD_PATH=$TMP/secrets/postgres_password
EASYPOST_WEBHOOK_SECRET_PATH=$TMP/secrets/easypost_webhook_secret
EPS_TEST_HTTP_PORT=$HTTP_PORT
EPS_TEST_PG_PORT=$PG_PORT
EPS_TEST_HTTP_PORT2=$HTTP_PORT2
EPS_TEST_PGB_PORT=$PGB_PORT
PGBOUNCER_IMAGE=$PGB_IMAGE
EASYPOST_SYNC_LOG_LEVEL=debug
EOF
COMPOSE_CMD=("$COMPOSE" --ansi never -p "$PROJECT" --env-file "$TMP/test.env"
	-f "$ROOT/docker/docker-compose.yml" -f "$ROOT/docker/docker-compose.hostnet.yml"
	-f "$ROOT/docker/docker-compose.replicas.yml" -f "$ROOT/docker/docker-compose.replicas-hostnet.yml")
export COMPOSE_HTTP_TIMEOUT=120

check "docker-compose.yml alone is valid" timeout "$(left 60)" "$COMPOSE" --env-file "$TMP/test.env" \
	-f "$ROOT/docker/docker-compose.yml" config -q
check "docker-compose.yml + docker-compose.hostnet.yml are valid" \
	timeout "$(left 60)" "$COMPOSE" --env-file "$TMP/test.env" -f "$ROOT/docker/docker-compose.yml" \
	-f "$ROOT/docker/docker-compose.hostnet.yml" config -q
check "docker-compose.yml + docker-compose.replicas.yml are valid" \
	timeout "$(left 60)" "$COMPOSE" --env-file "$TMP/test.env" -f "$ROOT/docker/docker-compose.yml" \
	-f "$ROOT/docker/docker-compose.replicas.yml" config -q
check "the four files together (2 replicas + PgBouncer on the host network) are valid" \
	timeout "$(left 60)" "${COMPOSE_CMD[@]}" config -q

log "docker-compose up -d (replicas on 127.0.0.1:$HTTP_PORT and :$HTTP_PORT2, PgBouncer on :$PGB_PORT, postgres on :$PG_PORT)"
STACK_UP=1
if timeout "$(left 300)" "${COMPOSE_CMD[@]}" up -d --no-build >"$TMP/up.log" 2>&1; then
	pass "docker-compose up -d"
else
	cat "$TMP/up.log"
	show_logs
	abort "docker-compose up -d"
fi

PG_CID=$(container_of postgres)
MIGRATE_CID=$("${COMPOSE_CMD[@]}" ps -a -q migrate 2>/dev/null | head -n 1)
APP_CID=$(container_of easypost-syncd)
APP2_CID=$(container_of easypost-syncd-2)
PGB_CID=$(container_of pgbouncer)
if [ -z "$PG_CID" ] || [ -z "$APP_CID" ] || [ -z "$APP2_CID" ] || [ -z "$PGB_CID" ]; then
	show_logs
	abort "compose created the postgres and daemon containers"
fi

check "postgres is healthy" wait_for 120 is_healthy "$PG_CID"
migrate_rc=$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$MIGRATE_CID" 2>/dev/null)
check "migrate ran once and exited 0 ($migrate_rc)" test "$migrate_rc" = "exited 0"
if wait_for 120 is_healthy "$APP_CID"; then
	pass "easypost-syncd container is healthy (HEALTHCHECK via /dev/tcp)"
else
	fail "easypost-syncd container is healthy (status: $(health_of "$APP_CID"))"
	"$DOCKER" inspect -f '{{json .State.Health}}' "$APP_CID" | head -c 2000
	echo
	show_logs
fi

check "pgbouncer is healthy" wait_for 60 is_healthy "$PGB_CID"
check "the second replica is healthy" wait_for 60 is_healthy "$APP2_CID"

for net in "$PG_CID" "$MIGRATE_CID" "$APP_CID" "$APP2_CID" "$PGB_CID"; do
	mode=$("$DOCKER" inspect -f '{{.HostConfig.NetworkMode}}' "$net" 2>/dev/null)
	check "container ${net:0:12} uses network_mode host ($mode)" test "$mode" = host
done

uid=$("$DOCKER" exec "$APP_CID" id -u 2>/dev/null)
check "daemon container runs as non-root (docker exec id -u = $uid)" test -n "$uid" -a "$uid" != 0
pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$APP_CID")
puid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
pcomm=$(cat "/proc/$pid/comm" 2>/dev/null)
check "PID 1 of the daemon container is easypost-syncd as uid $puid" \
	test "$pcomm" = easypost-syncd -a -n "$puid" -a "$puid" != 0
pguid=$("$DOCKER" exec "$PG_CID" id -u 2>/dev/null)
check "postgres container runs as non-root (uid $pguid)" test -n "$pguid" -a "$pguid" != 0
envs=$("$DOCKER" inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$APP_CID")
check "no secret value in the daemon container's configuration" \
	bash -c '! grep -qF -e "$1" -e "$2" <<<"$3"' _ "$SECRET" "$(cat "$TMP/secrets/postgres_password")" "$envs"

ready() { [ "$(http GET /readyz | cut -d' ' -f1)" = 200 ]; }
check "GET /readyz answers 200 (database connected)" wait_for 60 ready
res=$(http GET /healthz)
check "GET /healthz on 127.0.0.1:$HTTP_PORT answers 200 ($res)" test "${res%% *}" = 200

EVT=evt_dockertest_$(date +%s)_$$
BODY=$(printf '{"id":"%s","object":"Event","description":"tracker.updated","mode":"test","created_at":"2024-01-01T00:00:00Z","result":{"id":"trk_docker_1","object":"Tracker","status":"in_transit"}}' "$EVT")
res=$(post_event "$BODY" "$SECRET")
check "signed webhook is stored ($res)" bash -c '[[ $1 == "200 "*\"status\":\"@(stored|projected)\"* ]]' _ "$res"
rows=$(psql_in "SELECT count(*) FROM webhook_events WHERE event_id = '$EVT'" 2>&1)
check "the row is in webhook_events (count = $rows)" test "$rows" = 1
raw=$(psql_in "SELECT raw FROM webhook_events WHERE event_id = '$EVT'" 2>&1)
check "raw holds the body byte for byte" test "$raw" = "$BODY"
res=$(post_event "$BODY" "$SECRET")
check "the same event again is a duplicate ($res)" bash -c '[[ $1 == "200 "*duplicate* ]]' _ "$res"
res=$(post_event "$BODY" "not-the-secret")
check "a wrong signature gets 401 (${res%% *})" test "${res%% *}" = 401
rows=$(psql_in "SELECT count(*) FROM webhook_events" 2>&1)
check "one row in all ($rows)" test "$rows" = 1
# Two replicas through PgBouncer: every event to both at once, stored once
rep_ok=0
for i in $(seq 1 10); do
	ev=${EVT}_r$i
	body=$(printf '{"id":"%s","object":"Event","description":"tracker.updated","mode":"test","created_at":"2024-01-01T00:00:00Z","result":{"id":"trk_docker_r%s","object":"Tracker","status":"in_transit"}}' "$ev" "$i")
	HTTP_PORT=$HTTP_PORT2 post_event "$body" "$SECRET" >"$TMP/r2-$i" &
	r1=$(post_event "$body" "$SECRET")
	wait $!
	r2=$(cat "$TMP/r2-$i")
	[ "${r1%% *}" = 200 ] && [ "${r2%% *}" = 200 ] && rep_ok=$((rep_ok + 1))
done
check "10 events, each sent to both replicas at once, answered 200 by both ($rep_ok of 10)" test "$rep_ok" = 10
rows=$(psql_in "SELECT count(*) || ' ' || count(DISTINCT event_id) FROM webhook_events WHERE event_id LIKE '${EVT}_r%'" 2>&1)
check "each stored once ($rows)" test "$rows" = "10 10"
logins=$("$DOCKER" logs "$PGB_CID" 2>&1 | grep -c 'login attempt' || true)
check "the replicas reach PostgreSQL through PgBouncer ($logins logins)" test "$logins" -ge 2
res=$(HTTP_PORT=$HTTP_PORT2 http GET /readyz)
check "the second replica's /readyz answers 200 (${res%% *})" test "${res%% *}" = 200

wal=$(psql_in "SELECT current_setting('max_wal_size') || ' ' || current_setting('wal_compression') || ' ' || current_setting('fsync') || ' ' || current_setting('synchronous_commit')" 2>&1)
check "the compose file's WAL settings are in effect, fsync and synchronous_commit on ($wal)" \
	test "$wal" = "4GB lz4 on on"

# SIGHUP re-reads the secret files (docker-compose kill -s HUP easypost-syncd)
"$DOCKER" kill -s HUP "$APP_CID" >/dev/null 2>&1
reloaded() { [[ $("$DOCKER" logs "$APP_CID" 2>&1) == *"configuration reloaded"* ]]; }
check "SIGHUP reloads the configuration" wait_for 15 reloaded
res=$(http GET /healthz)
check "still serving after SIGHUP (${res%% *})" test "${res%% *}" = 200

# SIGTERM from "docker stop": drain and exit 0
log "stopping the daemon container (SIGTERM)"
timeout "$(left 60)" "$DOCKER" stop -t 30 "$APP_CID" >/dev/null 2>&1
st=$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$APP_CID")
check "docker stop: the daemon drains and exits 0 ($st)" test "$st" = "exited 0"
applog=$("$DOCKER" logs "$APP_CID" 2>&1)
check "the daemon logged its drain" grep -q 'drained' <<<"$applog"


[ "$failed" -eq 0 ] || show_logs
exit 0
