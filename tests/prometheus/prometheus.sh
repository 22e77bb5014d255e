#!/bin/sh
# prometheus.sh - Debian's Prometheus against the running daemon. Starts a
# throwaway PostgreSQL, the daemon and a Prometheus (127.0.0.1, free ports,
# storage in a temp dir, scrape and rule evaluation every second, the rules
# of etc/prometheus/ loaded with every `for:` shortened to 2s so an alert
# fires within seconds), then checks:
#   - /metrics passes `promtool check metrics`;
#   - the target is up and every rule evaluates without error;
#   - EasyPostSyncNoWebhooks fires while no webhook comes and clears after
#     one signed event;
#   - EasyPostSyncDatabaseDown is not active while PostgreSQL runs, fires
#     (through /api/v1/alerts) once PostgreSQL is stopped, and clears when it
#     runs again.
# Every wait polls a condition under one deadline (150 s for the whole run).
# Ends with a Check-style summary line. Run by `make check`.
set -u

top_srcdir=${abs_top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
top_builddir=${abs_top_builddir:-$top_srcdir}
for tool in prometheus promtool curl jq; do
        command -v $tool >/dev/null 2>&1 ||
                { echo "prometheus.sh: $tool not found (scripts/deps.sh installs it)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/eps-prom.XXXXXX)
chmod 755 "$tmp" # PostgreSQL runs as another user when we are root
end=$(($(date +%s) + 150))
daemon_pid=
daemon_port=
prom_pid=
pid= # a server being launched
pg_started=
stop_pid() { # stop_pid PID: SIGTERM, then wait for it
        [ -n "$1" ] || return 0
        kill "$1" 2>/dev/null
        wait "$1" 2>/dev/null
}
cleanup() {
        stop_pid "$pid"
        stop_pid "$prom_pid"
        stop_pid "$daemon_pid"
        [ -n "$pg_started" ] && "$top_srcdir/tests/lib/pg.sh" stop "$tmp/pg" immediate
        if [ -z "${KEEP_TEST_TMPDIR:-}" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT PIPE TERM

checks=0
failures=0
fail() {
        failures=$((failures + 1))
        echo "FAILED: $*"
}
ok() { echo "ok: $*"; }
finish() {
        echo "Checks: $checks, Failures: $failures, Errors: 0"
        [ "$failures" = 0 ] && exit 0
        for f in "$tmp"/daemon.log "$tmp"/prometheus.log; do
                [ -f "$f" ] && { echo "--- last lines of $(basename "$f")"; tail -n 30 "$f"; }
        done
        exit 1
}
# check NAME COMMAND...: one check, failed when COMMAND fails.
check() {
        name=$1
        shift
        checks=$((checks + 1))
        if "$@"; then ok "$name"; else fail "$name"; fi
}
# must NAME COMMAND...: a check whose failure ends the run.
must() {
        check "$@" || true
        [ "$failures" = 0 ] || finish
}
# until_true COMMAND...: polls COMMAND until it succeeds or the deadline.
until_true() {
        while ! "$@"; do
                [ "$(date +%s)" -lt "$end" ] || return 1
                sleep 0.2
        done
}

status_is() { # status_is URL CODE
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ]
}
# listens PID PORT: PID holds the socket listening on PORT (its inode, from
# /proc/net/tcp*, is among PID's descriptors), not some other process.
listens() {
        for inode in $(awk -v h="$(printf ':%04X' "$2")" \
                'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h { print $10 }' \
                /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
                ls -l "/proc/$1/fd" 2>/dev/null | grep -q "socket:\[$inode\]" && return 0
        done
        return 1
}
gone_or_listens() { # gone_or_listens PID PORT
        ! kill -0 "$1" 2>/dev/null || listens "$1" "$2"
}

# A TCP port no socket uses (from /proc/net/tcp*), below the ephemeral
# range, tried from a PID-dependent start so parallel runs pick different
# ones. A server that still loses the race exits and is started again on
# another port.
free_port() {
        p=$((10000 + ($$ * 7 + $1) % 20000))
        while awk -v h="$(printf ':%04X' "$p")" \
                'FNR > 1 && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
                /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
                p=$((p + 1))
        done
        echo "$p"
}

# --- PostgreSQL, migrations, the daemon
pg_port=$(free_port 0) # names its unix socket only: listen_addresses is empty
"$top_srcdir/tests/lib/pg.sh" start "$tmp/pg" "$pg_port" || { fail "PostgreSQL starts"; finish; }
pg_started=1
"$top_srcdir/tests/lib/pg.sh" createdb "$tmp/pg" "$pg_port" eps_test
conninfo=$("$top_srcdir/tests/lib/pg.sh" conninfo "$tmp/pg" "$pg_port" eps_test)
DATABASE_URL="$conninfo" "$top_builddir/easypost-syncd" --migrate --sql_dir="$top_srcdir/sql" \
        >"$tmp/migrate.log" 2>&1 || { cat "$tmp/migrate.log"; fail "migrations apply"; finish; }

# launch OFFSET PATH FUNCTION: runs FUNCTION PORT in the background on a free
# port until it answers PATH there; sets pid and port. A server that lost its
# port (it exits) or never answers is stopped and started on another one.
launch() {
        for try in 1 2 3 4 5; do
                port=$(free_port $(($1 + try * 10)))
                "$3" "$port" &
                pid=$!
                until_true gone_or_listens "$pid" "$port" && listens "$pid" "$port" &&
                        until_true status_is "http://127.0.0.1:$port$2" 200 && return 0
                stop_pid "$pid"
                pid=
        done
        return 1
}
run_daemon() {
        DATABASE_URL="$conninfo" EASYPOST_WEBHOOK_SECRET=prometheus-test-secret \
                EASYPOST_SYNC_LISTEN="127.0.0.1:$1" EASYPOST_SYNC_LOG_LEVEL=info \
                exec "$top_builddir/easypost-syncd" >>"$tmp/daemon.log" 2>&1
}
launch 100 /healthz run_daemon && daemon_pid=$pid daemon_port=$port pid=
daemon="http://127.0.0.1:$daemon_port"
must "daemon started" [ -n "$daemon_pid" ]
must "daemon ready (/readyz 200)" until_true status_is "$daemon/readyz" 200

metrics_lint() {
        curl -sf "$daemon/metrics" >"$tmp/metrics.txt" || return 1
        promtool check metrics <"$tmp/metrics.txt" >"$tmp/lint.txt" 2>&1 ||
                { cat "$tmp/lint.txt"; return 1; }
        [ ! -s "$tmp/lint.txt" ] || { cat "$tmp/lint.txt"; return 1; }
        grep -q '^easypost_sync_db_connections{state="up"} [1-9]' "$tmp/metrics.txt"
}
check "promtool check metrics: /metrics is clean" metrics_lint

# --- Prometheus
sed 's/^\( *for:\).*/\1 2s/' "$top_srcdir/etc/prometheus/easypost-sync.rules.yml" >"$tmp/rules.yml"
cat >"$tmp/prometheus.yml" <<EOT
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $tmp/rules.yml
scrape_configs:
  - job_name: easypost-sync
    static_configs:
      - targets: ['127.0.0.1:$daemon_port']
EOT
run_prometheus() {
        exec prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
                --web.listen-address="127.0.0.1:$1" >>"$tmp/prometheus.log" 2>&1
}
launch 200 /-/ready run_prometheus && prom_pid=$pid pid=
prom="http://127.0.0.1:$port"
must "Prometheus ready" [ -n "$prom_pid" ]

api() { # api PATH JQ-FILTER [CURL-ARGS...]: the filter's output on the answer; fails without one
        path=$1 filter=$2
        shift 2
        answer=$(curl -sfG "$prom$path" "$@") || return 1
        printf '%s' "$answer" | jq -er "$filter"
}
query() { # query PROMQL: the first sample's value, empty when none
        api /api/v1/query '.data.result[0].value[1] // ""' --data-urlencode "query=$1"
}
is() { # is WANT COMMAND...: COMMAND succeeds and prints WANT
        want=$1
        shift
        got=$("$@" 2>/dev/null) || return 1
        [ "$got" = "$want" ]
}
must "target scraped and up" until_true is 1 query 'up{job="easypost-sync"}'
# The rules have run on scraped series once a recording rule has a value.
check "rules evaluated on the daemon's series" \
        until_true is 0 query 'instance:easypost_sync_queue_usage:ratio{job="easypost-sync"}'
check "17 rules loaded, every one evaluating without error" until_true \
        is "17 17" api /api/v1/rules '[.data.groups[].rules[]] | "\(length) \([.[] | select(.health == "ok")] | length)"'

alert_state() { # alert_state NAME: pending, firing or nothing
        api /api/v1/alerts "[.data.alerts[] | select(.labels.alertname == \"$1\") | .state] | join(\" \")"
}
check "EasyPostSyncDatabaseDown not active while PostgreSQL runs" is "" alert_state EasyPostSyncDatabaseDown

# --- No webhook yet: EasyPostSyncNoWebhooks fires; one signed event clears it
check "EasyPostSyncNoWebhooks firing while the daemon is up and gets no webhook" \
        until_true is firing alert_state EasyPostSyncNoWebhooks
check "a signed test event is accepted" env EASYPOST_WEBHOOK_SECRET=prometheus-test-secret \
        "$top_builddir/easypost-syncd" --send-test-event "$daemon/webhooks/easypost" >"$tmp/send.log" 2>&1
check "EasyPostSyncNoWebhooks cleared by it" until_true is "" alert_state EasyPostSyncNoWebhooks

# --- PostgreSQL stopped: the alert fires
"$top_srcdir/tests/lib/pg.sh" stop "$tmp/pg" immediate
must "EasyPostSyncDatabaseDown firing after PostgreSQL stopped" \
        until_true is firing alert_state EasyPostSyncDatabaseDown
check "the firing alert names the target and is critical" \
        is "127.0.0.1:$daemon_port critical README.md#easypostsyncdatabasedown" \
        api /api/v1/alerts '.data.alerts[] | select(.labels.alertname == "EasyPostSyncDatabaseDown")
                | "\(.labels.instance) \(.labels.severity) \(.annotations.runbook_url)"'
check "/readyz 503 meanwhile" status_is "$daemon/readyz" 503

# --- PostgreSQL back: the alert clears
"$top_srcdir/tests/lib/pg.sh" start "$tmp/pg" "$pg_port" || { fail "PostgreSQL starts again"; finish; }
check "/readyz 200 after PostgreSQL is back" until_true status_is "$daemon/readyz" 200
check "EasyPostSyncDatabaseDown cleared" until_true is "" alert_state EasyPostSyncDatabaseDown
check "daemon still running" kill -0 "$daemon_pid"
finish
