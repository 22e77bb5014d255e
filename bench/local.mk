# bench/local.mk - benchmark programs (included by Makefile.am)
