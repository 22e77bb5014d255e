# scripts/steps.bash - counted steps for the deployment tests (bash, sourced).
#
# The sourcing script sets T0 (start, epoch seconds), DEADLINE (epoch seconds
# by which every step must be done), passed=0 and failed=0, and prints
# "NAME test: $passed passed, $failed failed" last. Output goes to fd 7 when
# it is open (a trap may run while a command's output goes to a log file),
# else to stdout. http() needs TMP (a scratch directory) and HTTP_PORT.
# shellcheck shell=bash disable=SC2034 # passed/failed belong to the caller

log() {
	if { true >&7; } 2>/dev/null; then
		printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&7
	else
		printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*"
	fi
}
pass() { passed=$((passed + 1)); log "PASS $*"; }
fail() { failed=$((failed + 1)); log "FAIL $*"; }
abort() { fail "$*"; exit 1; }
check() { # check NAME CMD...: one counted assertion
	local name=$1
	shift
	if "$@"; then pass "$name"; else fail "$name"; fi
}
left() { # left MAX: seconds a step may take, at most MAX and what the budget has left
	local l=$((DEADLINE - $(date +%s)))
	[ "$l" -lt "$1" ] || l=$1
	[ "$l" -gt 1 ] || l=1
	echo "$l"
}
wait_for() { # wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds
	local end=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.5
	done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http() { # http METHOD PATH [curl args...]: prints "CODE BODY" from 127.0.0.1:$HTTP_PORT
	local method=$1 path=$2
	shift 2
	curl -sS -m 15 -o "$TMP/body" -w '%{http_code}' -X "$method" "$@" \
		"http://127.0.0.1:$HTTP_PORT$path" 2>"$TMP/curl.err" >"$TMP/code" || true
	printf '%s %s\n' "$(cat "$TMP/code")" "$(cat "$TMP/body" 2>/dev/null)"
}
