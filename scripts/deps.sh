#!/bin/sh
# deps.sh - installs the Debian packages the build and the local database
# need, skipping what is already there; --test adds what only the tests use
# (valgrind, the fuzzers' clang, Prometheus, PgBouncer, HAProxy: on a systemd
# host the last three packages enable services of their own, which a
# machine that only runs the daemon does not want). Needs root (or sudo)
# only when something is missing.
set -eu

pkgs="build-essential autoconf automake pkg-config libevent-dev libpq-dev
libcurl4-openssl-dev libjansson-dev libssl-dev uuid-dev check libunistring-dev
postgresql curl openssl"
test_pkgs="valgrind clang libclang-rt-14-dev prometheus jq pgbouncer haproxy"
[ "${1:-}" = "--test" ] && shift && pkgs="$pkgs $test_pkgs"
[ "${1:-}" = "--extra" ] && shift && pkgs="$pkgs $*"

missing=
for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
                missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps.sh: installing:$missing" >&2
if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2086
$sudo apt-get install -y -q --no-install-recommends $missing
