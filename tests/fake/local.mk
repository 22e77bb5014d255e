# tests/fake/local.mk - the fake EasyPost API (included by Makefile.am)
#
# tests/fake/fake_easypost is a stand-alone test server (no libcore.a): integration
# tests start it, read "port=N" from its stdout and point the sync worker at it.
# Built by plain `make` (noinst) so test scripts can rely on it being there.
noinst_PROGRAMS += tests/fake/fake_easypost
tests_fake_fake_easypost_SOURCES = tests/fake/fake_easypost.c
tests_fake_fake_easypost_CFLAGS = $(AM_CFLAGS)
tests_fake_fake_easypost_LDADD = $(LIBEVENT_LIBS) $(JANSSON_LIBS) $(OPENSSL_LIBS)
EXTRA_DIST += tests/fake/fake_easypost.md
