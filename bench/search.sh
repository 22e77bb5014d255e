#!/usr/bin/env bash
# search.sh - search on SEARCH_N (1,000,000) shipments: how long typical
# searches take (eps_find_shipments under EXPLAIN ANALYZE), what migration
# 0012 costs on a database that already holds them (its backfill of
# shipment_search and the trigram index), the sync worker's cost per search
# row, and the sizes.
#
# A throwaway PostgreSQL (tests/lib/pg.sh, unix socket only, fsync off: the
# load is not what is measured), migrated up to 0010; SEARCH_N shipments,
# each with its recipient address and its tracker, made set-based in SQL
# (generate_series: names, companies, streets and cities from small lists,
# many with accents, so common words match tens of thousands of rows); then
# `easypost-syncd --migrate` applies 0012 and is timed; VACUUM ANALYZE (what
# autovacuum does after such a load); then each search once in a new connection and
# SEARCH_RUNS (5) times more in the same connection, the median of those
# reported (Execution Time: planning is not counted).
# Takes about 3-4 minutes on 2 cores. The EXIT trap stops the server it
# started and removes its directory. BENCH_BUILD: the build directory
# (default build/dev, made if needed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${BENCH_BUILD:-$top/build/dev}
n=${SEARCH_N:-1000000}
runs=${SEARCH_RUNS:-5}
port=${SEARCH_PG_PORT:-$((30000 + $$ % 20000))}

if [ ! -x "$build/easypost-syncd" ]; then
        mkdir -p "$build"
        (cd "$build" && { [ -f Makefile ] || "$top/configure" -q; } && make -s easypost-syncd)
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
work=$(mktemp -d /tmp/eps-search.XXXXXX)
chmod 755 "$work"
cleanup() {
        "$top/tests/lib/pg.sh" stop "$work/pg" immediate >/dev/null 2>&1 || true
        rm -rf "$work"
}
trap cleanup EXIT INT TERM

PG_FSYNC=off "$top/tests/lib/pg.sh" start "$work/pg" "$port" >/dev/null
"$top/tests/lib/pg.sh" createdb "$work/pg" "$port" eps >/dev/null
ci=$("$top/tests/lib/pg.sh" conninfo "$work/pg" "$port" eps)
psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$ci" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# the schema before search: every migration but 0012
mkdir -p "$work/sql"
cp -r "$top/sql/functions" "$work/sql/"
for f in "$top"/sql/0*.sql; do
        case $f in *0012_search.sql) ;; *) cp "$f" "$work/sql/" ;; esac
done
DATABASE_URL=$ci "$build/easypost-syncd" --migrate --sql_dir="$work/sql" 2>/dev/null

t0=$(now)
psql -v n="$n" <<'SQL'
INSERT INTO addresses (id, easypost_id, name, company, street1, street2, city, state, zip, country)
SELECT md5('a' || i)::uuid, 'adr_b' || i,
       (ARRAY['Hans','Anna','José','François','Zoë','Łukasz','Søren','Ana','John','Mary','Björn',
              'Inès','Jürgen','Chloé','Pedro','Mei'])[1 + i % 16] || ' ' ||
       (ARRAY['Müller','Schmidt','García','Dvořák','Smith','Núñez','Ångström','Kowalski','Brown',
              'Lefèvre','Johnson','Øster','Rossi','Nakamura','Wójcik','Williams','Durand','Jones',
              'Fernández','Taylor'])[1 + (i / 16) % 20]
         || CASE WHEN i % 7 = 0 THEN '-' || substr(md5('n' || i), 1, 6) ELSE '' END,
       CASE WHEN i % 3 = 0 THEN (ARRAY['ACME GmbH','Société Générale','Café Zürich AG','Initech',
                                       'Globex','Umbrella Corp','Wäscherei Köhler'])[1 + i % 7]
                                || ' ' || (i % 997) END,
       (i % 9973) || ' ' || (ARRAY['Hauptstraße','Rue de la Paix','Calle Mayor','Main Street',
                                   'Ulica Długa','Elm Street','Avenida Paulista','Königsallee',
                                   'Bahnhofstraße','Oak Avenue'])[1 + (i / 7) % 10],
       CASE WHEN i % 5 = 0 THEN 'Apt ' || (i % 300) END,
       (ARRAY['München','Zürich','São Paulo','Kraków','Besançon','Malmö','Berlin','New York',
              'Chicago','Lyon','Köln','Göteborg','Sevilla','Łódź','Springfield','Portland','Austin',
              'Denver','Dublin','Wien'])[1 + (i / 3) % 20],
       'ST', lpad((i % 99999)::text, 5, '0'), 'DE'
FROM generate_series(1, :n) i;
INSERT INTO shipments (id, easypost_id, status, tracking_code, reference, carrier, service,
                       to_address_id, synced_at, created_at)
SELECT md5('s' || i)::uuid, 'shp_b' || i,
       (ARRAY['pre_transit','in_transit','out_for_delivery','delivered'])[1 + i % 4],
       '1Z' || upper(substr(md5('t' || i), 1, 16)), 'ORD-' || (1000000 + i), 'UPS', 'Ground',
       md5('a' || i)::uuid, now(), now() - make_interval(secs => i)
FROM generate_series(1, :n) i;
INSERT INTO trackers (id, easypost_id, tracking_code, carrier, status, shipment_easypost_id,
                      shipment_id, ep_created_at, ep_updated_at)
SELECT md5('k' || i)::uuid, 'trk_b' || i, '1Z' || upper(substr(md5('t' || i), 1, 16)), 'UPS',
       (ARRAY['pre_transit','in_transit','out_for_delivery','delivered'])[1 + i % 4],
       'shp_b' || i, md5('s' || i)::uuid, now() - make_interval(secs => i), now()
FROM generate_series(1, :n) i;
VACUUM ANALYZE addresses, shipments, trackers;
SQL
fill_s=$(since "$t0")

t0=$(now)
DATABASE_URL=$ci "$build/easypost-syncd" --migrate --sql_dir="$top/sql" 2>/dev/null
migrate_s=$(since "$t0")
psql -c "VACUUM ANALYZE shipment_search"

printf '# bench/search.sh: %s shipments\n\n' "$n"
printf 'PostgreSQL %s, %s cores; filling the tables took %s s.\n\n' \
        "$(psql -At -c 'SHOW server_version')" "$(nproc)" "$fill_s"
printf -- '- migration 0012 (shipment_search for %s fetched shipments, then its trigram index): %s s\n' \
        "$n" "$migrate_s"
psql -At -F ' ' -c "SELECT pg_size_pretty(pg_relation_size('shipment_search')),
                           pg_size_pretty(pg_relation_size('shipment_search_doc')),
                           pg_size_pretty(pg_relation_size('shipments')),
                           pg_size_pretty(pg_relation_size('addresses'))" |
        while read -r a b c d e f g h; do
                printf -- '- sizes: shipment_search %s %s, its trigram index %s %s (shipments %s %s, addresses %s %s)\n' \
                        "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h"
        done

# the sync worker's share: 10,000 search rows written again one by one (GIN
# fast update, as after a fetch)
psql -c "DELETE FROM shipment_search WHERE shipment_id IN
         (SELECT md5('s' || i)::uuid FROM generate_series(1, 10000) i)"
us=$(psql -At <<'SQL'
\set QUIET on
CREATE TEMP TABLE t (a timestamptz);
INSERT INTO t VALUES (clock_timestamp());
SELECT eps_search_refresh('shp_b' || i) FROM generate_series(1, 10000) i \g /dev/null
SELECT round(extract(epoch FROM clock_timestamp() - a) * 1e6 / 10000) FROM t;
SQL
)
printf -- '- eps_search_refresh (the sync worker, per fetched shipment): %s µs\n\n' "$us"

one=$((n / 14 * 7))   # a multiple of 7 in the middle: its name has a suffix no other has
code=$(psql -At -c "SELECT tracking_code FROM shipments WHERE easypost_id = 'shp_b$one'")
name=$(psql -At -c "SELECT split_part(a.name, ' ', 2) FROM shipments s JOIN addresses a ON a.id = s.to_address_id
                    WHERE s.easypost_id = 'shp_b$one'")
printf '| search | what | rows (limit 50) | matching | ms, first in a connection | ms, median of the next %s |\n' "$runs"
printf '|---|---|---:|---:|---:|---:|\n'
search() { # text label
        local text=$1 label=$2 times first warm rows matching
        # in one new connection: once (its caches cold), then SEARCH_RUNS more;
        # psql's :'t' quotes the text as a literal
        times=$(for _ in $(seq 0 "$runs"); do
                        echo "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM eps_find_shipments(:'t');"
                done | psql -At -v t="$text" | grep -o '"Execution Time": [0-9.]*' | grep -o '[0-9.]*$')
        first=$(head -n 1 <<<"$times")
        warm=$(tail -n +2 <<<"$times" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
        rows=$(psql -At -v t="$text" <<<"SELECT count(*) FROM eps_find_shipments(:'t')")
        matching=$(psql -At -v t="$text" <<<"SELECT count(*) FROM eps_find_shipments(:'t', NULL)")
        printf '| `%s` | %s | %s | %s | %s | %s |\n' "$text" "$label" "$rows" "$matching" "$first" "$warm"
}
search "$code" "a whole tracking code"
search "$(printf '%s' "$code" | cut -c 5-12 | tr 'A-Z' 'a-z')" "8 characters inside a tracking code, lower case"
search "ORD-$((1000000 + one))" "a whole reference"
search "$name" "a rare name (with its suffix), as stored"
plain=$(psql -At -v t="$name" <<<"SELECT translate(lower(:'t'), 'üøñřáåóéèçź', 'uonraaoeecz')")
search "$plain" "the same, lower case, without accents"
search "dvorak" "a common name: 1 shipment in 20"
search "KRAKOW" "a city: 1 in 20"
search "societe generale" "a company: 1 in 21"
search "12 hauptstrasse" "a number and street"
search "zzqqxx" "nothing"
