#!/bin/sh
# install.sh - `make install DESTDIR=...` installs every file an operator
# needs: the binary, the migrations, the sample config, the Prometheus rules,
# the systemd unit and the man page; and the installed binary finds its
# migrations there.
set -eu
top_builddir=${abs_top_builddir:?}
dest=$(mktemp -d /tmp/eps-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT

make -s -C "$top_builddir" install DESTDIR="$dest" >"$dest.log" 2>&1 ||
        { cat "$dest.log"; rm -f "$dest.log"; exit 1; }
rm -f "$dest.log"
prefix=$(sed -n 's/^prefix = //p' "$top_builddir/Makefile")
sysconfdir=$(sed -n 's/^sysconfdir = //p' "$top_builddir/Makefile" | sed "s|\${prefix}|$prefix|")

fail=0
check() {
        if [ -e "$dest$1" ]; then echo "installed: $1"; else echo "MISSING: $1"; fail=1; fi
}
check "$prefix/bin/easypost-syncd"
for f in "$(dirname "$0")"/../../sql/[0-9][0-9][0-9][0-9]_*.sql; do
        check "$prefix/share/easypost-sync/sql/$(basename "$f")"
done
check "$sysconfdir/easypost-sync/easypost-sync.conf"
check "$prefix/share/easypost-sync/prometheus/easypost-sync.rules.yml"
check "$prefix/lib/systemd/system/easypost-syncd.service"
check "$prefix/share/man/man8/easypost-syncd.8"
"$dest$prefix/bin/easypost-syncd" --version >/dev/null || fail=1
grep -q '^User=' "$dest$prefix/lib/systemd/system/easypost-syncd.service" || fail=1
[ $fail = 0 ] && echo "install: every file in place"
exit $fail
