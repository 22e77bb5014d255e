# bench/local.mk - benchmark programs (included by Makefile.am)
# loadgen drives the daemon (or bare_server, the evhttp-only ceiling) with
# signed EasyPost events (profiles unique and progressive); run.sh is the
# whole suite; bench/peer/ is the Node.js same-work peer it compares against.
# Built by plain `make` (noinst, not check) so the suite never needs a
# separate target.
# Makefile.am sets noinst_PROGRAMS before including the fragments.
noinst_PROGRAMS += bench/loadgen bench/bare_server

bench_loadgen_SOURCES = bench/loadgen.c
bench_loadgen_CFLAGS = $(AM_CFLAGS)
bench_loadgen_LDADD = libcore.a $(CORE_LIBS) -lm

bench_bare_server_SOURCES = bench/bare_server.c
bench_bare_server_CFLAGS = $(AM_CFLAGS)
bench_bare_server_LDADD = libcore.a $(CORE_LIBS)

EXTRA_DIST += bench/run.sh bench/ab.sh bench/lib.sh bench/soak.sh bench/pgprofile.sh bench/partition_drop.sh bench/replicas.sh \
	bench/wal.sh bench/search.sh bench/README.md \
	bench/peer/peer.js bench/peer/package.json bench/peer/package-lock.json bench/peer/.gitignore
