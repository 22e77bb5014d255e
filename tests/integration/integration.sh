#!/bin/sh
# integration.sh - starts a throwaway PostgreSQL (unless TEST_PG_CONNINFO
# points at one), applies the migrations, runs the integration suites, stops
# what it started. Run by `make check`.
set -eu

top_srcdir=${abs_top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
top_builddir=${abs_top_builddir:-$top_srcdir}
export abs_top_srcdir="$top_srcdir" abs_top_builddir="$top_builddir"

TEST_TMPDIR=$(mktemp -d /tmp/eps-itest.XXXXXX)
export TEST_TMPDIR
chmod 755 "$TEST_TMPDIR"
started=
cleanup() {
        [ -n "$started" ] && "$top_srcdir/tests/lib/pg.sh" stop "$TEST_PG_DIR" immediate
        if [ "${KEEP_TEST_TMPDIR:-}" = "" ]; then rm -rf "$TEST_TMPDIR"; fi
}
trap cleanup EXIT INT TERM

if [ -z "${TEST_PG_CONNINFO:-}" ]; then
        TEST_PG_DIR="$TEST_TMPDIR/pg"
        TEST_PG_PORT=${TEST_PG_PORT:-$((20000 + $$ % 20000))}
        export TEST_PG_DIR TEST_PG_PORT
        "$top_srcdir/tests/lib/pg.sh" start "$TEST_PG_DIR" "$TEST_PG_PORT"
        started=1
        "$top_srcdir/tests/lib/pg.sh" createdb "$TEST_PG_DIR" "$TEST_PG_PORT" eps_test
        TEST_PG_CONNINFO=$("$top_srcdir/tests/lib/pg.sh" conninfo "$TEST_PG_DIR" "$TEST_PG_PORT" eps_test)
        export TEST_PG_CONNINFO
fi

DATABASE_URL="$TEST_PG_CONNINFO" "$top_builddir/easypost-syncd" --migrate \
        --sql_dir="$top_srcdir/sql" 2>"$TEST_TMPDIR/migrate.log" ||
        { cat "$TEST_TMPDIR/migrate.log"; exit 1; }

status=0
# TEST_RUNNER_WRAPPER (e.g. valgrind) runs the suites' own process under a
# tool; TEST_DAEMON_WRAPPER (itest.c) does the same for the daemons.
${TEST_RUNNER_WRAPPER:-} "$top_builddir/tests/integration/check_integration" || status=$?

# No secret may ever reach a log line.
# (the test secret, the API keys the sync and webhook_health suites use, and
# the Basic auth password in the latter's public_url)
if grep -l -F -e "sécret" -e "EZTKtestkey0123456789" -e "EZTKwrongkey" -e "EZTKhealthkey0123456789" \
        -e "EZTKconvergekey0123456789" \
        -e "hookpass0123" "$TEST_TMPDIR"/*.log 2>/dev/null; then
        echo "integration.sh: a secret or API key appears in a log" >&2
        status=1
fi
exit $status
