#!/bin/sh
# replicas.sh - three replicas of the daemon on one PostgreSQL through
# Debian's PgBouncer in pool_mode = transaction, HAProxy in front of them,
# the fake EasyPost API behind their sync workers. Run by `make check`.
#
# The load is duplicate-heavy: every event is sent twice at once, the copies
# pinned (X-Replica, see tests/system/replicas-lib.sh) to two different replicas,
# each copy retried until it is answered 2xx (curl --retry-all-errors). When
# a third of the events are stored, one replica is killed with SIGKILL; HAProxy
# sends what was meant for it to the others. Then it checks that
#   - every event was answered 2xx, and every event answered 2xx is stored
#     exactly once, byte for byte, and nothing else is;
#   - the kill landed mid-load;
#   - each analytics slot refreshed each view once across the replicas (one
#     analytics_refreshes row per view and slot, none failed, and the
#     replicas' "refreshed" log lines match the rows one for one), and the
#     refreshes went on after the kill;
#   - each sync job was fetched once (the fake API's request counts; a job
#     the killed replica held may be fetched once more when its lease runs
#     out), and every job ended;
#   - system_metrics rows carry each replica's instance id, and only those;
#   - when the event tables are partitioned (pg_partitioned_table), no
#     partition was made twice: no "already exists" or overlap error in
#     PostgreSQL's log, no partition warning or error in a replica's log;
#   - PgBouncer logged no warning (an answer reaching a server connection it
#     had given back: pipelined Syncs); three concurrent --migrate through
#     PgBouncer succeed, and the survivors drain and exit 0 on SIGTERM.
# Ends with a summary line and a Check-style "Checks: N, Failures: F, Errors: E".
# REPLICAS_EVENTS (default 3000) events; KEEP_TEST_TMPDIR=1 keeps the logs.
set -eu
LC_ALL=C # sort, join and comm agree
export LC_ALL

top_srcdir=${abs_top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
top_builddir=${abs_top_builddir:-$top_srcdir}
RL_NAME=replicas
# shellcheck source=tests/system/replicas-lib.sh
. "$top_srcdir/tests/system/replicas-lib.sh"

N=${REPLICAS_EVENTS:-3000}
T0=$(date +%s)
RL_DIR=$(mktemp -d /tmp/eps-replicas.XXXXXX)
chmod 755 "$RL_DIR"
PG_DIR=$RL_DIR/pg
PG_PORT=$((20000 + ($$ + 7) % 20000))
DB=eps_test
SECRET=replicas-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
API_KEY=EZTKtestkey0123456789
KILLED=replica-2
pg_started=
LOAD_PID=
checks=0
failures=0
errors=0

summary_line() {
        pct=100
        [ "$checks" -gt 0 ] && pct=$(((checks - failures - errors) * 100 / checks))
        echo "$pct%: Checks: $checks, Failures: $failures, Errors: $errors"
}
cleanup() {
        [ -n "$LOAD_PID" ] && kill -TERM "$LOAD_PID" 2>/dev/null
        rl_stop_all
        [ -n "$pg_started" ] && "$top_srcdir/tests/lib/pg.sh" stop "$PG_DIR" immediate
        if [ -z "${KEEP_TEST_TMPDIR:-}" ]; then rm -rf "$RL_DIR"; else echo "kept $RL_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# die MSG: a setup step failed: one error, the summary, exit 1
die() {
        rl_log "ERROR: $*"
        for f in "$RL_DIR"/replica-*.log "$RL_DIR/haproxy.log" "$RL_DIR/pgbouncer/pgbouncer.log"; do
                [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
        done
        checks=$((checks + 1))
        errors=$((errors + 1))
        summary_line
        exit 1
}
# check NAME CMD...: one assertion
check() {
        name=$1
        shift
        checks=$((checks + 1))
        if "$@"; then
                echo "PASS: $name"
        else
                echo "FAIL: $name"
                failures=$((failures + 1))
        fi
}
q() { psql -X -qAt -h "$PG_DIR" -p "$PG_PORT" -U postgres -d "$DB" -c "$1"; }
eq() { [ "$1" = "$2" ] || { echo "   got \"$1\", want \"$2\""; return 1; }; }
same_files() { diff "$1" "$2" >"$RL_DIR/diff.out" || { head -n 10 "$RL_DIR/diff.out"; return 1; }; }

for tool in pgbouncer haproxy psql curl; do
        command -v "$tool" >/dev/null || die "$tool not found (scripts/deps.sh installs it)"
done

rl_port PGB_PORT && rl_port HAP_PORT && rl_port D1_PORT && rl_port D2_PORT && rl_port D3_PORT ||
        die "free ports"

# --- PostgreSQL, the fake API, PgBouncer, the schema ---------------------------
"$top_srcdir/tests/lib/pg.sh" start "$PG_DIR" "$PG_PORT" || die "PostgreSQL did not start"
pg_started=1
"$top_srcdir/tests/lib/pg.sh" createdb "$PG_DIR" "$PG_PORT" "$DB" || die "createdb"

"$top_builddir/tests/fake/fake_easypost" --listen 127.0.0.1:0 --api-key "$API_KEY" --no-fixtures \
        >"$RL_DIR/fake.out" 2>"$RL_DIR/fake.log" &
RL_PIDS="$RL_PIDS $!"
fake_up() { grep -q '^port=' "$RL_DIR/fake.out"; }
rl_wait 30 fake_up || die "the fake EasyPost API did not start"
FAKE_PORT=$(sed -n 's/^port=//p' "$RL_DIR/fake.out")

rl_pgbouncer_start "$PGB_PORT" "$PG_DIR" "$PG_PORT" "$DB" || die "PgBouncer did not start"
DATABASE_URL="host=127.0.0.1 port=$PGB_PORT dbname=$DB user=postgres"
EASYPOST_WEBHOOK_SECRET=$SECRET
EASYPOST_API_KEY=$API_KEY
export DATABASE_URL EASYPOST_WEBHOOK_SECRET EASYPOST_API_KEY

# three replicas migrating at once, as a compose stack of N replicas would
mpids=
for i in 1 2 3; do
        "$top_builddir/easypost-syncd" --migrate --sql_dir="$top_srcdir/sql" >"$RL_DIR/migrate-$i.log" 2>&1 &
        mpids="$mpids $!"
done
mfail=0
for pid in $mpids; do wait "$pid" || mfail=$((mfail + 1)); done
check "three concurrent --migrate through PgBouncer exit 0 ($mfail failed)" eq "$mfail" 0
[ "$mfail" = 0 ] || { cat "$RL_DIR"/migrate-*.log; die "migrations"; }

# --- three replicas behind HAProxy ------------------------------------------
for i in 1 2 3; do
        eval "port=\$D${i}_PORT"
        rl_daemon_start "replica-$i" "$port" --metrics_interval=1 --analytics_interval=2 \
                --api_url="http://127.0.0.1:$FAKE_PORT/v2" --api_rate=100 --api_concurrency=8 \
                --api_timeout=5 --sync_interval=1 --backfill_interval=0
        eval "D${i}_PID=$RL_LAST_PID"
done
for port in "$D1_PORT" "$D2_PORT" "$D3_PORT"; do
        rl_wait 60 rl_ready "$port" || die "replica on port $port not ready"
done
rl_haproxy_start "$HAP_PORT" "$D1_PORT" "$D2_PORT" "$D3_PORT" || die "HAProxy did not start"

# the killed replica must have written its metrics row before it dies
all_metrics() { [ "$(q "SELECT count(DISTINCT instance_id) FROM system_metrics")" = 3 ]; }
rl_wait 60 all_metrics || die "no system_metrics row from every replica"

# --- the load ----------------------------------------------------------------
mkdir -p "$RL_DIR/ev"
"$top_builddir/bench/loadgen" -n "$N" --seed $$ -s "$SECRET" --dump-dir "$RL_DIR/ev" ||
        die "loadgen --dump-dir"
# event I: one copy to replica I%3+1, one to the next, at once (--parallel)
awk -v url="http://127.0.0.1:$HAP_PORT/webhooks/easypost" -v dir="$RL_DIR/ev" '
{
        for (k = 0; k < 2; k++) {
                r = ($1 + k) % 3 + 1
                if (NR > 1 || k > 0) print "next"
                printf "url = \"%s\"\n", url
                print "header = \"Content-Type: application/json\""
                printf "header = \"X-Hmac-Signature: %s\"\n", $3
                printf "header = \"X-Replica: %d\"\n", r
                printf "data-binary = \"@%s/%s.json\"\n", dir, $1
                print "output = \"/dev/null\""
                printf "write-out = \"%s %d %%{http_code}\\n\"\n", $2, r
                print "fail\nretry = 100\nretry-all-errors\nretry-delay = 1\nretry-max-time = 100\nmax-time = 30"
        }
}' "$RL_DIR/ev/events.txt" >"$RL_DIR/curl.cfg"

log_start=$(date +%s)
timeout 150 curl -s --no-progress-meter --parallel --parallel-max 32 -K "$RL_DIR/curl.cfg" \
        >"$RL_DIR/answers.txt" 2>"$RL_DIR/curl.err" &
LOAD_PID=$!

third=$((N / 3))
stored() { q "SELECT count(*) FROM webhook_events"; }
third_stored() { [ "$(stored)" -ge "$third" ] || ! kill -0 "$LOAD_PID" 2>/dev/null; }
rl_wait 120 third_stored || true
load_running=0
kill -0 "$LOAD_PID" 2>/dev/null && load_running=1
at_kill=$(stored)
kill -KILL "$D2_PID"
wait "$D2_PID" 2>/dev/null || true
kill_time=$(date +%s)
# the sync jobs it held: their leases run out and another replica fetches them
q "SELECT object_id FROM sync_jobs WHERE status = 'running' AND instance_id = '$KILLED'" \
        >"$RL_DIR/killed-jobs.txt"
check "$KILLED killed with SIGKILL mid-load ($at_kill of $N events stored)" \
        test "$load_running" = 1 -a "$at_kill" -lt "$N"

load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=
load_s=$(($(date +%s) - log_start))

# --- let the survivors finish: sync jobs end, one more analytics slot -------
settled() { [ "$(q "SELECT count(*) FROM sync_jobs WHERE status IN ('pending', 'running')")" = 0 ]; }
rl_wait 90 settled || rl_log "sync jobs still open after 90 s"
last_tick=$(q "SELECT coalesce(max(tick), 0) FROM analytics_refreshes")
next_slot() { [ "$(q "SELECT count(*) FROM analytics_refreshes WHERE tick > $last_tick")" -ge 3 ]; }
rl_wait 60 next_slot || rl_log "no analytics slot after $last_tick within 60 s"
survivors_ok=0
exits=
for pid in "$D1_PID" "$D3_PID"; do
        kill -TERM "$pid" 2>/dev/null || true # a survivor that died already shows in its exit status
        rc=0
        wait "$pid" || rc=$?
        exits="$exits $rc"
        [ "$rc" = 0 ] && survivors_ok=$((survivors_ok + 1))
done
check "the two survivors drain and exit 0 on SIGTERM (exit status:$exits)" eq "$survivors_ok" 2

# --- events: answered 2xx, stored once, byte for byte -----------------------
awk '$3 ~ /^2/ { print $1 }' "$RL_DIR/answers.txt" | sort -u >"$RL_DIR/acked.txt"
acked=$(wc -l <"$RL_DIR/acked.txt")
check "every event answered 2xx through retries ($acked of $N; curl exit $load_rc)" eq "$acked" "$N"
# expected: id|1|md5 of the body, for each acknowledged event
(cd "$RL_DIR/ev" && md5sum ./*.json) | sed 's|  \./\([0-9]*\)\.json$| \1|' | sort -k2,2 >"$RL_DIR/md5.txt"
sort -k1,1 "$RL_DIR/ev/events.txt" | join -1 1 -2 2 - "$RL_DIR/md5.txt" |
        awk '{ print $2 "|1|" $4 }' | sort >"$RL_DIR/want-all.txt"
join -t '|' "$RL_DIR/acked.txt" "$RL_DIR/want-all.txt" >"$RL_DIR/want.txt"
q "SELECT event_id, count(*), md5(min(raw)) FROM webhook_events GROUP BY event_id" | sort >"$RL_DIR/got.txt"
check "every event answered 2xx is stored exactly once, byte for byte, and nothing else" \
        same_files "$RL_DIR/got.txt" "$RL_DIR/want.txt"

# the premise: the copies of an event pinned to replicas 3 and 1 (never killed)
# were answered by those two, not by one twice (HAProxy's log names the server
# and the signature; it may drop a line under load, so: no contradiction, and
# most of them seen whole)
awk '$4 ~ /^daemons\/d[0-9]+$/ && $6 ~ /^2/ { for (f = 7; f <= NF; f++) if ($f ~ /^\{hmac/) {
             sig = substr($f, 2, length($f) - 2); srv[sig] = srv[sig] " " substr($4, 9) } }
     END { for (k in srv) print k, srv[k] }' "$RL_DIR/haproxy.log" | sort >"$RL_DIR/served.txt"
awk 'FILENAME == ARGV[1] { if ($1 % 3 == 2) want[$3] = 1; next }
     ($1 in want) { for (f = 2; f <= NF; f++) if ($f != "d1" && $f != "d3") bad++
                    if (NF > 3 || (NF == 3 && $2 == $3)) bad++; else if (NF == 3) both++ }
     END { print both + 0, bad + 0 }' "$RL_DIR/ev/events.txt" "$RL_DIR/served.txt" >"$RL_DIR/pinned.txt"
read -r pinned_both pinned_bad <"$RL_DIR/pinned.txt"
pinned_want=$(awk '$1 % 3 == 2' "$RL_DIR/ev/events.txt" | wc -l)
distinct=$(awk 'NF == 3 && $2 != $3' "$RL_DIR/served.txt" | wc -l)
check "copies pinned to replicas 3 and 1 answered by those two, never one twice ($pinned_both of $pinned_want seen whole, $pinned_bad contradictions)" \
        test "$pinned_bad" = 0 -a "$((pinned_both * 2))" -ge "$pinned_want"

# --- analytics: each view once per slot across the replicas -----------------
dups=$(q "SELECT count(*) FROM (SELECT 1 FROM analytics_refreshes GROUP BY view_name, tick HAVING count(*) > 1) d")
bad=$(q "SELECT count(*) FROM analytics_refreshes WHERE outcome <> 'ok'")
slots=$(q "SELECT count(DISTINCT tick) FROM analytics_refreshes")
refreshers=$(q "SELECT string_agg(DISTINCT instance_id, ',') FROM analytics_refreshes")
check "one analytics_refreshes row per view and slot, none failed ($slots slots; by $refreshers)" \
        test "$dups" = 0 -a "$bad" = 0 -a "$slots" -ge 2
refreshed() { sed -n 's/.*refreshed \([a-z_]*\) slot \([0-9]*\):.*/\1 \2/p' "$@" | sort; }
refreshed "$RL_DIR/replica-1.log" "$RL_DIR/replica-3.log" >"$RL_DIR/ref-log.txt"
q "SELECT view_name || ' ' || tick FROM analytics_refreshes WHERE instance_id <> '$KILLED'" | sort \
        >"$RL_DIR/ref-db.txt"
# the killed replica may have committed a refresh and died before logging it
refreshed "$RL_DIR/$KILLED.log" >"$RL_DIR/ref-log-killed.txt"
q "SELECT view_name || ' ' || tick FROM analytics_refreshes WHERE instance_id = '$KILLED'" | sort \
        >"$RL_DIR/ref-db-killed.txt"
killed_unrecorded=$(comm -23 "$RL_DIR/ref-log-killed.txt" "$RL_DIR/ref-db-killed.txt" | wc -l)
twice=$(cat "$RL_DIR/ref-log.txt" "$RL_DIR/ref-log-killed.txt" | sort | uniq -d | wc -l)
check "each refresh a replica ran is logged once across the replicas and recorded once" \
        test "$twice" = 0 -a "$killed_unrecorded" = 0
check "the refreshes went on after the kill" \
        test "$(q "SELECT count(*) FROM analytics_refreshes WHERE started_at > to_timestamp($kill_time)")" -ge 3
# a refresh in flight when a survivor drains is not waited for: it may have
# committed with no "refreshed" line, and says so in a line of its own
sed -n 's/.*refresh \([a-z_]*\) slot \([0-9]*\) in flight at shutdown.*/\1 \2/p' \
        "$RL_DIR/replica-1.log" "$RL_DIR/replica-3.log" | sort >"$RL_DIR/ref-inflight.txt"
comm -23 "$RL_DIR/ref-db.txt" "$RL_DIR/ref-log.txt" >"$RL_DIR/ref-unlogged.txt"
unexplained=$(comm -23 "$RL_DIR/ref-unlogged.txt" "$RL_DIR/ref-inflight.txt" | wc -l)
unrecorded=$(comm -23 "$RL_DIR/ref-log.txt" "$RL_DIR/ref-db.txt" | wc -l)
check "the survivors' refresh log lines match their analytics_refreshes rows ($(wc -l <"$RL_DIR/ref-unlogged.txt") recorded while in flight at shutdown)" \
        test "$unexplained" = 0 -a "$unrecorded" = 0

# --- sync: each job fetched once ---------------------------------------------
curl -s -m 10 "http://127.0.0.1:$FAKE_PORT/_control/stats" >"$RL_DIR/stats.json" || die "fake API stats"
tr ',{}' '\n\n\n' <"$RL_DIR/stats.json" |
        sed -n 's|^ *"/v2/[a-z]*/\([a-z]*_[^"/]*\)": *\([0-9]*\) *$|\1 \2|p' | sort >"$RL_DIR/fetches.txt"
q "SELECT object_id || ' ' || count(*) FROM sync_jobs GROUP BY object_id" | sort >"$RL_DIR/jobs.txt"
njobs=$(q "SELECT count(*) FROM sync_jobs")
open_jobs=$(q "SELECT count(*) FROM sync_jobs WHERE status IN ('pending', 'running')")
check "sync jobs were made and every one ended ($njobs jobs, $open_jobs still open)" \
        test "$njobs" -gt 0 -a "$open_jobs" = 0
# per object: fetches == jobs; a job the killed replica held: jobs..jobs+1
wrong=$(awk 'FILENAME == ARGV[1] { k[$1] = 1; next }
             FILENAME == ARGV[2] { f[$1] = $2; next }
             { j = $2; n = f[$1] + 0; delete f[$1]
               if (!(n == j || (k[$1] && n == j + 1))) { print $1, "jobs", j, "fetches", n } }
             END { for (o in f) print o, "fetched", f[o], "without a job" }' \
        "$RL_DIR/killed-jobs.txt" "$RL_DIR/fetches.txt" "$RL_DIR/jobs.txt")
refetched=$(awk 'FILENAME == ARGV[1] { k[$1] = 1; next } k[$1] && $2 > 1' \
        "$RL_DIR/killed-jobs.txt" "$RL_DIR/fetches.txt" | wc -l)
none() { [ -z "$1" ] || { echo "$1" | head -n 5; return 1; }; }
check "each sync job fetched once ($(wc -l <"$RL_DIR/fetches.txt") objects; $refetched held by $KILLED fetched again)" \
        none "$wrong"

# --- PgBouncer: nothing astray ----------------------------------------------
# e.g. "got packet 'D' from server when not linked": answers to a second
# pipelined Sync arriving after PgBouncer 1.18 gave the server connection back
# at the first ReadyForQuery (they may reach another client)
pgb_warn=$(grep -c -E ' (WARNING|ERROR|FATAL) ' "$RL_DIR/pgbouncer/pgbouncer.log" || true)
check "PgBouncer logged no warning or error ($pgb_warn)" eq "$pgb_warn" 0
[ "$pgb_warn" = 0 ] || grep -m 5 -E ' (WARNING|ERROR|FATAL) ' "$RL_DIR/pgbouncer/pgbouncer.log"

# --- metrics rows name each replica ------------------------------------------
check "system_metrics rows carry each instance id, and only those" \
        eq "$(q "SELECT string_agg(DISTINCT instance_id, ' ') FROM system_metrics")" "replica-1 replica-2 replica-3"

# --- partitions, when the event tables have them -----------------------------
nparted=$(q "SELECT count(*) FROM pg_partitioned_table")
if [ "$nparted" -gt 0 ]; then
        perr=$(grep -c -E 'ERROR: .*(already exists|would overlap)' "$PG_DIR/postgres.log" || true)
        lerr=$(grep -h -i -E 'lvl=(warn|error).*partition' "$RL_DIR"/replica-*.log | wc -l)
        nparts=$(q "SELECT count(*) FROM pg_inherits i JOIN pg_partitioned_table p ON p.partrelid = i.inhparent")
        check "partitions made once across the replicas ($nparts of $nparted tables; $perr PostgreSQL errors, $lerr log lines)" \
                test "$perr" = 0 -a "$lerr" = 0 -a "$nparts" -ge "$nparted"
fi

# HAProxy's log: answers that were not 2xx (the kill's), each retried by its client
# and requests HAProxy itself sent again to another replica (retries field "+N")
non2xx=$(grep -c -E 'webhooks daemons/d[0-9]+ [-0-9/]+ [013-5][0-9][0-9] ' "$RL_DIR/haproxy.log" || true)
redisp=$(awk '$4 ~ /^daemons\// { split($11, a, "/"); if (a[5] ~ /^\+/) n++ } END { print n + 0 }' "$RL_DIR/haproxy.log")
echo "replicas: $N events x 2 copies through HAProxy + PgBouncer (transaction) to 3 replicas in ${load_s} s," \
        "$KILLED killed at $at_kill stored; $distinct answered by two different replicas; $acked acknowledged ($non2xx non-2xx answers retried by the client, $redisp requests redispatched by HAProxy); $slots analytics slots; $njobs sync jobs;" \
        "partitioned tables: $nparted; $(($(date +%s) - T0)) s in all"
summary_line
[ "$failures" = 0 ] && [ "$errors" = 0 ]
