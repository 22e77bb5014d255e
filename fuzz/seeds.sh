#!/bin/sh
# seeds.sh OUTDIR - writes a seed corpus per fuzz target into OUTDIR/<target>/.
#
# Built from the EasyPost fixtures ($EASYPOST_FIXTURES, else ../shared/fixtures/
# easypost beside the source tree) when they are there, plus a few hand-written
# seeds. OUTDIR should be a temporary directory: fixtures are never copied
# into the repository. Each seed's first byte is the target's mode selector
# (see the target's header comment).
set -eu

out=${1:?usage: seeds.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
fx=${EASYPOST_FIXTURES:-$top/../shared/fixtures/easypost}
[ -d "$fx" ] || fx=

mkdir -p "$out/sig_fuzz" "$out/epevent_fuzz" "$out/extract_fuzz" "$out/cfg_fuzz"
# seed TARGET MODE [FILE...]: the mode byte (octal) then the files (or stdin),
# named by checksum (seed often runs at the end of a pipe, in a subshell).
seed() {
        t=$1 m=$2
        shift 2
        tmp="$out/$t/.tmp.$$"
        { printf "\\$m"; if [ $# -gt 0 ]; then cat "$@"; else cat; fi; } >"$tmp"
        mv "$tmp" "$out/$t/seed-$(cksum <"$tmp" | cut -d' ' -f1)"
}

# --- epevent: whole bodies ---
for doc in \
        '{"id":"evt_1","object":"Event","description":"tracker.updated","mode":"test","created_at":"2025-01-02T03:04:05.678Z","result":{"id":"trk_1"}}' \
        '{"id":"evt_2","object":"Event","description":"x","result":{"id":"trk_2","note":"a\u0000b"},"l":["\u0000",{"k":"\\u0000"}]}' \
        '{"id":"evt_3","object":"Event","description":"x","created_at":"2025-01-02T03:04:05+05:30"}' \
        '{"id":"evt_4","object":"Event","description":"x","id":"evt_5"}' \
        '{"id":"evt_6","object":"Event","description":"x","n":1e308,"m":-0.0,"i":9223372036854775807}'; do
        printf '%s' "$doc" >"$out/epevent_fuzz/seed-$(printf '%s' "$doc" | cksum | cut -d' ' -f1)"
        printf '%s' "$doc" | seed extract_fuzz 001
done

# a number at numeric's scale limit (16,383 digits after the point): one more is too many
zeros=$(printf '%06382d' 0)
printf '{"id":"evt_7","object":"Event","description":"x","n":0.%s1e-10000}' "$zeros" \
        >"$out/epevent_fuzz/seed-numeric-scale"

# --- extract: timestamps (mode 0) and values holding U+0000 (mode 1) ---
for ts in 2025-01-02T03:04:05Z 2025-01-02T03:04:05.678Z "2025-01-02 03:04:05" 2024-02-29T00:00:00Z \
        2025-01-02T03:04:05+05:30 2025-01-02T03:04:05-0800 2025-01-02T03:04:05+15 \
        2025-01-02T03:04:05.123456789-03:00 1970-01-01T00:00:00Z 9999-12-31T23:59:59Z; do
        printf '%s' "$ts" | seed extract_fuzz 000
done
for v in '"\u0000"' '{"a":"x\u0000y","b":[1,"\u0000\u0000",{"c":"\\u0000"}]}' '[[["\u0000"]]]' 'null'; do
        printf '%s' "$v" | seed extract_fuzz 001
done

# --- sig: mode 0 header\0body, 1 damage\0body, 2 \0body, 3 secret\0body ---
printf 'hmac-sha256-hex=%064d\000{}' 0 | seed sig_fuzz 000
printf '\000{"id":"evt_1"}' | seed sig_fuzz 001
printf '\001\000{"id":"evt_1"}' | seed sig_fuzz 005
printf '\000{}' | seed sig_fuzz 002
printf 's\303\251cret\000{}' | seed sig_fuzz 003
printf 'se\314\201cret\000{}' | seed sig_fuzz 003
printf '\357\254\201\342\204\253\000body' | seed sig_fuzz 003

# --- cfg: file (0), environment (1), overrides (2), host:port (3) ---
# (lines naming a *_file key dropped: the target skips inputs that would read host files)
grep -v -i "_file" "$top/etc/easypost-sync.conf" | seed cfg_fuzz 000
printf '[server]\nlisten = "127.0.0.1:9000"\nmax_body_bytes = 65536\n; c\nlog_level=debug\n' | seed cfg_fuzz 000
printf 'EASYPOST_SYNC_IDLE_TIMEOUT=2\nLISTEN=[::1]:0\nEASYPOST_WEBHOOK_SECRET=x\nDATABASE_URL=dbname=x\n' |
        seed cfg_fuzz 001
printf 'max-body-bytes=2048\nwebhook_path=/x\nwebhook_secret=no\n' | seed cfg_fuzz 002
for hp in 127.0.0.1:8080 '[::1]:0' 'host:65535' ':80' '[::1]80'; do
        printf '%s' "$hp" | seed cfg_fuzz 003
done

# --- the fixtures, when present ---
if [ -n "$fx" ]; then
        for f in "$fx"/*.json; do
                cp "$f" "$out/epevent_fuzz/$(basename "$f")"
                seed extract_fuzz 001 "$f"
                { printf '\000'; cat "$f"; } | seed sig_fuzz 001
                grep -o '"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][^"]*"' "$f" 2>/dev/null |
                        tr -d '"' | sort -u | head -n 20 | while read -r ts; do
                        printf '%s' "$ts" | seed extract_fuzz 000
                done
        done
        # the official vector: body and its signature under the test secret (mode 0)
        if [ -f "$fx/hmac_body_tracker_updated.json" ]; then
                {
                        printf '\000hmac-sha256-hex=38f3f53c103713df81616a0a186d77141957323ec21d5fe9363db93840f527db\000'
                        cat "$fx/hmac_body_tracker_updated.json"
                } >"$out/sig_fuzz/official-vector"
        fi
fi
echo "seeds.sh: $(find "$out" -type f | wc -l) seeds in $out${fx:+ (with fixtures from $fx)}"
