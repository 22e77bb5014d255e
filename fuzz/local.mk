# fuzz/local.mk - libFuzzer targets (included by Makefile.am)
#
# Not built by automake: the main build uses gcc, the targets need clang's
# -fsanitize=fuzzer. fuzz/build.sh compiles them (with the pure modules'
# sources) into build/fuzz; fuzz/run.sh [SECONDS] builds, seeds and runs them.
# This fragment only ships the sources in the tarball.
EXTRA_DIST += fuzz/build.sh fuzz/run.sh fuzz/seeds.sh fuzz/fuzz_common.h \
	fuzz/sig_fuzz.c fuzz/epevent_fuzz.c fuzz/extract_fuzz.c fuzz/cfg_fuzz.c \
	fuzz/json.dict fuzz/cfg.dict
