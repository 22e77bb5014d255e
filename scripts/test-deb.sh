#!/bin/bash
# scripts/test-deb.sh - the Debian package test: build easypost-sync_*.deb
# from a clean copy of HEAD (git archive), run lintian on it, install it into
# a fresh Debian 12 root (debootstrap --variant=minbase) and, chrooted there:
# --version, --check-config with the shipped conffile, --migrate and a signed
# event against a throwaway PostgreSQL; then remove the package and check that
# nothing of it is left but the conffile, and purge it.
#
#   sudo scripts/test-deb.sh     (root: it installs packages, chroots and mounts)
#
# The PostgreSQL cluster runs on the host (tests/lib/pg.sh) with a second socket
# in the root's /run/postgresql, so the chrooted daemon reaches it without a
# bind mount. The root gets /proc and /dev (bind) while the test runs; both are
# unmounted on exit, whatever happens.
# The debootstrapped root is kept as a tarball in $EPS_DEB_CACHE (default
# /var/tmp/easypost-sync-deb) so a second run skips debootstrap; delete it to
# test from nothing.
#
# Environment: EPS_DEB_CACHE, EPS_DEBIAN_MIRROR (default: this machine's
# bookworm mirror, from apt), EPS_DEB_REF (the commit to build, default HEAD;
# EPS_DEB_REF=$(git stash create) builds the working tree), EPS_TEST_BUDGET (seconds for all steps, default
# 600; each step's timeout is cut to what is left), EPS_TEST_KEEP=1 (keep the
# temporary directory, unmounted).
# The last line is "deb test: N passed, M failed"; exit 1 on any failure.
# shellcheck disable=SC2317,SC2016 # functions run from traps and check; format strings
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EPS_DEB_CACHE:-/var/tmp/easypost-sync-deb}
PKG=easypost-sync
CONF=/etc/easypost-sync/easypost-sync.conf
T0=$(date +%s)
DEADLINE=$((T0 + ${EPS_TEST_BUDGET:-600}))

passed=0
failed=0
TMP=
CH=
PG_STARTED=0
DAEMON_PID=
MOUNTS=()

# fd 7: the test's own output (scripts/steps.bash)
exec 7>&1
# shellcheck source=scripts/steps.bash
. "$ROOT/scripts/steps.bash"

unmount_all() {
	local i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null ||
			log "could not unmount ${MOUNTS[i]}"
	done
	MOUNTS=()
}

mounted_under() { # mounted_under DIR: prints the mount points below DIR
	awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts
}

finish() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -KILL "$DAEMON_PID" 2>/dev/null
		wait "$DAEMON_PID" 2>/dev/null
	fi
	[ "$PG_STARTED" = 1 ] && "$ROOT/tests/lib/pg.sh" stop "$TMP/pg" immediate
	unmount_all
	if [ -n "$TMP" ]; then
		if [ -n "$(mounted_under "$TMP")" ]; then
			# never remove a tree something is still mounted in (a bind of /dev)
			log "still mounted under $TMP, left in place: $(mounted_under "$TMP" | tr '\n' ' ')"
			failed=$((failed + 1))
		elif [ "${EPS_TEST_KEEP:-0}" = 1 ]; then
			log "EPS_TEST_KEEP=1: kept $TMP"
		else
			rm -rf --one-file-system "$TMP"
		fi
	fi
	[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
	log "finished in $(($(date +%s) - T0)) s"
	echo "deb test: $passed passed, $failed failed" >&7
	[ "$failed" -eq 0 ]
	exit $?
}
trap finish EXIT
trap 'log "interrupted"; failed=$((failed + 1)); exit 1' INT TERM

# chroot into the root with a clean environment; every command there execs the
# next, so a background daemon's PID is the daemon's own.
root_cmd() {
	ROOT_CMD=(chroot "$CH" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
}
in_root() { # in_root CMD...: run CMD in the root as root, bounded in time
	timeout "$(left 300)" "${ROOT_CMD[@]}" "$@"
}
as_daemon() { # as_daemon CMD...: run CMD in the root as the system user, with $DAEMON_ENV
	in_root "${DAEMON_ENV[@]}" setpriv --reuid=easypost-sync --regid=easypost-sync --init-groups "$@"
}
apt_step() { # apt_step NAME APT-GET-ARGS...: apt-get in the root, one counted step
	local name=$1
	shift
	if in_root apt-get "$@" >>"$TMP/apt.log" 2>&1; then
		pass "$name"
	else
		tail -n 20 "$TMP/apt.log"
		fail "$name"
		return 1
	fi
}
cannot_read() { ! in_root setpriv --reuid=nobody --regid=nogroup --clear-groups cat "$1" >/dev/null 2>&1; }
unit_user_ok() { grep -qx 'User=easypost-sync' "$1" && grep -qx 'Group=easypost-sync' "$1"; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# The machine's mirror for a suite, as apt sees it (sources.list or deb822).
mirror_of() {
	apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
		awk -v s="$1" '$2 == s { print $1; exit }'
}

# A fresh bookworm minbase root in $CH: from the cached tarball, or
# debootstrapped and then cached.
make_root() {
	local base=$CACHE/bookworm-minbase.tar.gz mirror
	mkdir -p "$CACHE" && chmod 0700 "$CACHE"
	exec 8>"$CACHE/lock"
	flock -w "$(left 300)" 8 || return 1
	if [ -s "$base" ]; then
		log "unpacking the cached root ($base)"
		tar -C "$CH" --numeric-owner -xzf "$base" || return 1
	else
		mirror=${EPS_DEBIAN_MIRROR:-$(mirror_of bookworm)}
		mirror=${mirror:-http://deb.debian.org/debian}
		log "debootstrap --variant=minbase bookworm from $mirror"
		if ! timeout "$(left 420)" debootstrap --variant=minbase bookworm "$CH" "$mirror" \
			>"$TMP/debootstrap.log" 2>&1; then
			tail -n 30 "$TMP/debootstrap.log"
			return 1
		fi
		rm -rf "$CH"/var/cache/apt/archives/*.deb
		tar -C "$CH" --numeric-owner -czf "$base.tmp" . && mv "$base.tmp" "$base"
	fi
	exec 8>&-
}

# apt in the root reaches the same mirrors, with the same proxy, as this machine.
configure_apt() {
	local mirror security
	mirror=${EPS_DEBIAN_MIRROR:-$(mirror_of bookworm)}
	mirror=${mirror:-http://deb.debian.org/debian}
	security=$(mirror_of bookworm-security)
	rm -f "$CH/etc/apt/sources.list"
	{
		printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
		[ -z "$security" ] || printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
	} >"$CH/etc/apt/sources.list.d/debian.sources"
	apt-config dump | grep -Ei '^Acquire::(https?|ftp)::Proxy' | sed 's/$/;/' >"$CH/etc/apt/apt.conf.d/01proxy"
	[ -s "$CH/etc/apt/apt.conf.d/01proxy" ] || rm -f "$CH/etc/apt/apt.conf.d/01proxy"
	cp -L /etc/resolv.conf "$CH/etc/resolv.conf"
}

mount_root() {
	mount -t proc proc "$CH/proc" && MOUNTS+=("$CH/proc") &&
		mount --bind /dev "$CH/dev" && MOUNTS+=("$CH/dev")
}

# Every file of the root but the ones apt and dpkg keep for themselves.
snapshot() {
	(cd "$CH" && find . -xdev \( -path ./proc -o -path ./dev -o -path ./tmp -o -path ./run \
		-o -path ./var/lib/apt -o -path ./var/cache -o -path ./var/log -o -path ./var/lib/dpkg \) \
		-prune -o -print) | sort
}

ready() { [ "$(http GET /readyz | cut -d' ' -f1)" = 200 ]; }
psql_host() { psql -X -A -t -q -h "$TMP/pg" -p "$PG_PORT" -U postgres -d easypost_sync -c "$1"; }

# ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "scripts/test-deb.sh must run as root"; echo "deb test: 0 passed, 1 failed"; trap - EXIT; exit 1; }

log "installing what is missing (scripts/deps.sh)"
timeout "$(left 600)" "$ROOT/scripts/deps.sh" --extra debhelper lintian debootstrap >"/tmp/eps-deb-deps.$$.log" 2>&1 ||
	{ tail -n 20 "/tmp/eps-deb-deps.$$.log"; rm -f "/tmp/eps-deb-deps.$$.log"; abort "scripts/deps.sh"; }
rm -f "/tmp/eps-deb-deps.$$.log"
pass "tools present (debhelper $(dpkg-query -W -f='${Version}' debhelper), lintian, debootstrap, postgresql)"

TMP=$(mktemp -d /tmp/eps-deb.XXXXXX)
chmod 0755 "$TMP" # the host's postgres user reaches its cluster below it
CH=$TMP/root
root_cmd
mkdir -p "$TMP/src" "$CH"

# --- build ---------------------------------------------------------------------
REF=${EPS_DEB_REF:-HEAD}
head=$(git -C "$ROOT" rev-parse --short "$REF" 2>/dev/null) || abort "$ROOT is a git checkout with $REF"
git -C "$ROOT" archive --format=tar "$REF" | tar -x -C "$TMP/src" || abort "git archive $REF"
pass "clean copy of $REF ($head) in $TMP/src"

ver=$(sed -n 's/^AC_INIT(\[easypost-sync\], \[\([^]]*\)\].*/\1/p' "$TMP/src/configure.ac")
debver=$(cd "$TMP/src" && dpkg-parsechangelog -S Version)
check "debian/changelog's version is configure.ac's ($debver = $ver)" test -n "$ver" -a "$debver" = "$ver"

log "dpkg-buildpackage -us -uc -b"
if (cd "$TMP/src" && timeout "$(left 600)" env DEB_BUILD_OPTIONS="parallel=$(nproc)" \
	dpkg-buildpackage -us -uc -b) >"$TMP/build.log" 2>&1; then
	pass "dpkg-buildpackage -us -uc -b ($(grep -c '^PASS: ' "$TMP/build.log") test program passed in the build)"
else
	tail -n 40 "$TMP/build.log"
	abort "dpkg-buildpackage -us -uc -b"
fi
debs=("$TMP/${PKG}_${debver}_"*.deb)
DEB=${debs[0]}
[ -f "$DEB" ] || abort "the build made ${PKG}_${debver}_*.deb"
pass "built $(basename "$DEB") ($(stat -c %s "$DEB") bytes)"

timeout "$(left 300)" lintian --display-info --show-overrides "$TMP/${PKG}_${debver}_"*.changes >"$TMP/lintian.out" 2>&1
counts=
for sev in E W I O; do counts="$counts $sev=$(grep -c "^$sev: " "$TMP/lintian.out")"; done
log "lintian (errors, warnings, info, overridden):$counts"
grep -E '^[EWO]: ' "$TMP/lintian.out" | sed 's/^/    /'
check "lintian reports no error" test "$(grep -c '^E: ' "$TMP/lintian.out")" = 0

# --- the root ------------------------------------------------------------------
make_root || abort "a Debian 12 minbase root"
pass "Debian 12 root: $(cat "$CH/etc/debian_version")"
configure_apt
mount_root || abort "mount /proc and /dev in the root"

apt_step "apt-get update in the root" update -q || exit 1
# the package's dependencies first, so that the snapshot below holds them
depends=$(dpkg-deb -f "$DEB" Depends)
log "apt-get satisfy: $depends"
apt_step "the package's dependencies in the root" satisfy -y -q --no-install-recommends "$depends" || exit 1
snapshot >"$TMP/before"
cp "$DEB" "$CH/tmp/"
apt_step "apt-get install ./$(basename "$DEB") in the root" \
	install -y -q --no-install-recommends "/tmp/$(basename "$DEB")" || exit 1
in_root dpkg -L "$PKG" >"$TMP/files" || abort "dpkg -L $PKG"

# --- what it installed -------------------------------------------------------------
has() { grep -qxF "$1" "$TMP/files" && [ -e "$CH$1" ]; }
check "/usr/sbin/easypost-syncd" has /usr/sbin/easypost-syncd
check "the man page easypost-syncd(8)" has /usr/share/man/man8/easypost-syncd.8.gz
check "the systemd unit" has /lib/systemd/system/easypost-syncd.service
missing_sql=
for f in "$TMP"/src/sql/*.sql "$TMP"/src/sql/functions/*.sql; do
	rel=${f#"$TMP/src/sql/"}
	has "/usr/share/easypost-sync/sql/$rel" || missing_sql="$missing_sql $rel"
done
check "every SQL file in /usr/share/easypost-sync/sql${missing_sql:+ (missing:$missing_sql)}" test -z "$missing_sql"
rules=$(cd "$TMP/src" && ls etc/prometheus/*.yml 2>/dev/null)
if [ -n "$rules" ]; then
	missing_rules=
	for f in $rules; do
		has "/usr/share/easypost-sync/prometheus/${f##*/}" || missing_rules="$missing_rules ${f##*/}"
	done
	check "the Prometheus rules in /usr/share/easypost-sync/prometheus${missing_rules:+ (missing:$missing_rules)}" \
		test -z "$missing_rules"
else
	log "no etc/prometheus/*.yml in this tree: no rules to check"
fi
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' "$PKG" | awk 'NF { print $1 }')
check "the only conffile is $CONF ($(echo "$conffiles" | tr '\n' ' '))" test "$conffiles" = "$CONF"
pw=$(in_root getent passwd easypost-sync)
uid=$(cut -d: -f3 <<<"$pw")
check "system user easypost-sync (${pw:-none})" test -n "$uid" -a "${uid:-1000}" -lt 1000 -a "${pw##*:}" = /usr/sbin/nologin
perm=$(in_root stat -c '%a %U:%G' "$CONF")
check "$CONF is 640 root:easypost-sync ($perm)" test "$perm" = "640 root:easypost-sync"
check "another user cannot read $CONF" cannot_read "$CONF"
unit=$CH/lib/systemd/system/easypost-syncd.service
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "$unit")
check "the unit's ExecStart is the installed binary ($exec_start)" test "$exec_start" = /usr/sbin/easypost-syncd
check "the unit's User= and Group= are easypost-sync" unit_user_ok "$unit"
check "the unit's -c is the conffile" grep -q "^ExecStart=.* -c $CONF\$" "$unit"
enabled=$(find "$CH/etc/systemd" -name 'easypost-syncd*' 2>/dev/null)
check "the unit is not enabled (no symlink under /etc/systemd${enabled:+: $enabled})" test -z "$enabled"
# With systemd running (not in a chroot), postinst only try-restarts on upgrade and prerm stops on remove.
dpkg-deb -e "$DEB" "$TMP/control"
scripts_ok() {
	grep -q "deb-systemd-invoke try-restart 'easypost-syncd.service'" "$TMP/control/postinst" &&
		! grep -Eq 'deb-systemd-invoke (start|restart)|systemctl .*(start|enable)' "$TMP/control/postinst" &&
		grep -q 'deb-systemd-invoke stop easypost-syncd.service' "$TMP/control/prerm"
}
check "postinst starts nothing (try-restart on upgrade only), prerm stops the service on remove" scripts_ok
started=
for p in /proc/[0-9]*; do
	[ "$(readlink "$p/root" 2>/dev/null)" = "$CH" ] && started="$started $(cat "$p/comm" 2>/dev/null)"
done
check "installing started nothing in the root${started:+ (running:$started)}" test -z "$started"

# --- running it ----------------------------------------------------------------------
out=$(in_root easypost-syncd --version 2>&1)
check "easypost-syncd --version ($out)" test "$out" = "easypost-syncd $ver"

PG_PORT=5432
# whichever user tests/lib/pg.sh runs the cluster as may make its socket there
mkdir -p "$CH/run/postgresql" && chmod 1777 "$CH/run/postgresql"
log "starting PostgreSQL (tests/lib/pg.sh, sockets in $TMP/pg and the root's /run/postgresql)"
PG_OPTS="-c unix_socket_directories='$TMP/pg,$CH/run/postgresql'" \
	timeout "$(left 120)" "$ROOT/tests/lib/pg.sh" start "$TMP/pg" "$PG_PORT" || abort "PostgreSQL started"
PG_STARTED=1
"$ROOT/tests/lib/pg.sh" createdb "$TMP/pg" "$PG_PORT" easypost_sync || abort "createdb easypost_sync"
pass "PostgreSQL $(psql_host 'SHOW server_version') up"

SECRET=$(openssl rand -hex 24)
# below the ephemeral range (32768-60999), which outgoing connections take
# ports from between the check and the listen
HTTP_PORT=$((20000 + $$ % 10000))
until port_free "$HTTP_PORT"; do HTTP_PORT=$((HTTP_PORT + 1)); done
DAEMON_ENV=()
out=$(as_daemon easypost-syncd --check-config -c "$CONF" 2>&1)
check "--check-config without a secret is refused ($out)" grep -q 'no webhook secret' <<<"$out"
DAEMON_ENV=("DATABASE_URL=host=/run/postgresql port=$PG_PORT user=postgres dbname=easypost_sync"
	"EASYPOST_WEBHOOK_SECRET=$SECRET" "LISTEN=127.0.0.1:$HTTP_PORT")
out=$(as_daemon easypost-syncd --check-config -c "$CONF" 2>&1)
check "--check-config -c $CONF as easypost-sync ($out)" test "$out" = "configuration ok"

if as_daemon easypost-syncd -c "$CONF" --migrate >"$TMP/migrate.log" 2>&1; then
	pass "--migrate as easypost-sync (the default sql_dir)"
else
	cat "$TMP/migrate.log"
	fail "--migrate as easypost-sync"
fi
migrations=("$TMP"/src/sql/[0-9][0-9][0-9][0-9]_*.sql)
want=${#migrations[@]}
got=$(psql_host 'SELECT count(*) FROM schema_migrations' 2>&1)
check "every migration applied from /usr/share/easypost-sync/sql ($got of $want)" test "$got" = "$want"

"${ROOT_CMD[@]}" "${DAEMON_ENV[@]}" setpriv --reuid=easypost-sync --regid=easypost-sync --init-groups \
	easypost-syncd -c "$CONF" >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
if wait_for "$(left 60)" ready; then
	pass "the daemon in the root answers GET /readyz 200 on 127.0.0.1:$HTTP_PORT"
else
	tail -n 20 "$TMP/daemon.log"
	fail "the daemon in the root answers GET /readyz 200"
fi
EVT=evt_debtest_$(date +%s)_$$
BODY=$(printf '{"id":"%s","object":"Event","description":"tracker.updated","mode":"test","created_at":"2024-01-01T00:00:00Z","result":{"id":"trk_deb_1","object":"Tracker","status":"in_transit"}}' "$EVT")
SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.*= *//')
res=$(http POST /webhooks/easypost -H 'Content-Type: application/json' \
	-H "X-Hmac-Signature: hmac-sha256-hex=$SIG" --data-binary "$BODY")
check "a signed event is stored ($res)" bash -c '[[ $1 == "200 "*\"status\":\"stored\"* ]]' _ "$res"
raw=$(psql_host "SELECT raw FROM webhook_events WHERE event_id = '$EVT'" 2>&1)
check "webhook_events holds it byte for byte" test "$raw" = "$BODY"
duid=$(awk '/^Uid:/ { print $2 }' "/proc/$DAEMON_PID/status" 2>/dev/null)
check "the daemon runs as easypost-sync (uid $duid)" test "$duid" = "$uid"
kill -TERM "$DAEMON_PID"
wait_for "$(left 30)" gone "$DAEMON_PID"
wait "$DAEMON_PID"
rc=$?
DAEMON_PID=
check "SIGTERM: the daemon drains and exits 0 (exit $rc)" test "$rc" = 0
"$ROOT/tests/lib/pg.sh" stop "$TMP/pg" fast
PG_STARTED=0

# --- remove, then purge -----------------------------------------------------------------
apt_step "apt-get remove $PKG" remove -y -q "$PKG"
st=$(in_root dpkg-query -W -f='${Status}' "$PKG" 2>&1)
check "dpkg keeps only its configuration ($st)" test "$st" = "deinstall ok config-files"
left_over=
while read -r f; do
	[ -e "$CH$f" ] || [ -L "$CH$f" ] || continue
	[ "$f" = "$CONF" ] && continue
	# Each file is checked on its own line, so a directory that stays holds
	# nothing of the package but the conffile: it may stay unless it is empty
	# and no other package owns it (/lib is bookworm's link to /usr/lib).
	if [ -d "$CH$f" ] && { [ -n "$(ls -A "$CH$f")" ] || in_root dpkg-query -S "$f" >/dev/null 2>&1; }; then
		continue
	fi
	left_over="$left_over $f"
done <"$TMP/files"
check "nothing of dpkg -L is left but the conffile${left_over:+ (left:$left_over)}" test -z "$left_over"
check "the conffile is kept" test -f "$CH$CONF"
snapshot >"$TMP/after"
# The system user stays after remove and purge (Debian policy), and with it
# the backups adduser's tools keep of the account files; deb-systemd-helper
# keeps the unit's (empty) enablement state until purge, like the conffile.
ACCOUNT_BACKUPS=(-e ./etc/passwd- -e ./etc/group- -e ./etc/shadow- -e ./etc/gshadow-)
new=$(comm -13 "$TMP/before" "$TMP/after" | grep -vxF -e ./etc/easypost-sync -e ".$CONF" "${ACCOUNT_BACKUPS[@]}" \
	-e ./var/lib/systemd/deb-systemd-helper-enabled/easypost-syncd.service.dsh-also)
check "no other new file in the root after remove${new:+ (new: $(echo "$new" | tr '\n' ' '))}" test -z "$new"

apt_step "apt-get purge $PKG" purge -y -q "$PKG"
snapshot >"$TMP/purged"
new=$(comm -13 "$TMP/before" "$TMP/purged" | grep -vxF "${ACCOUNT_BACKUPS[@]}")
check "after purge no file is left but the account backups${new:+ (new: $(echo "$new" | tr '\n' ' '))}" \
	test -z "$new"
exit 0
