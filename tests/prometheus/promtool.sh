#!/bin/sh
# promtool.sh - checks the Prometheus rules in etc/prometheus/: `promtool
# check rules` (syntax, PromQL), `promtool test rules` on tests/prometheus/
# (every alert fires on its series and stays quiet on the others), and that
# every alert has a severity, a summary and a runbook_url naming a heading of
# README.md. Ends with a Check-style summary line. Run by `make check`.
set -u

top_srcdir=${abs_top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
command -v promtool >/dev/null 2>&1 ||
        { echo "promtool.sh: promtool not found (apt-get install prometheus; scripts/deps.sh)" >&2; exit 1; }

checks=0
failures=0
check() { # check NAME COMMAND... : one check, its output shown on failure
        checks=$((checks + 1))
        if out=$("$@" 2>&1); then
                echo "ok: $*"
        else
                failures=$((failures + 1))
                echo "FAILED: $*"
                echo "$out"
        fi
}

# An alert's block: its labels and annotations, up to the next rule.
alert_block() {
        awk -v name="$2" '
                /^ *- (alert|record):/ { inblock = ($2 == "alert:" && $3 == name) }
                inblock' "$1"
}

# The alert names severity, has a summary, and its runbook_url is
# README.md#<name in lower case>, a heading of README.md.
runbook() {
        block=$(alert_block "$1" "$2")
        anchor=$(echo "$2" | tr '[:upper:]' '[:lower:]')
        echo "$block" | grep -Eq '^ +severity: (critical|warning)$' || { echo "$2: no severity"; return 1; }
        echo "$block" | grep -Eq '^ +summary: ' || { echo "$2: no summary"; return 1; }
        echo "$block" | grep -Fxq "          runbook_url: README.md#$anchor" ||
                { echo "$2: runbook_url is not README.md#$anchor"; return 1; }
        grep -Eq "^#+ $2\$" "$top_srcdir/README.md" || { echo "$2: no README heading"; return 1; }
}

for f in "$top_srcdir"/etc/prometheus/*.rules.yml; do
        check promtool check rules "$f"
        for a in $(sed -n 's/^ *- alert: *//p' "$f"); do
                check runbook "$f" "$a"
        done
done
for f in "$top_srcdir"/tests/prometheus/*.test.yml; do
        check promtool test rules "$f"
done

echo "Checks: $checks, Failures: $failures, Errors: 0"
[ "$failures" = 0 ]
