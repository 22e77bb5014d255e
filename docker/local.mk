# docker/local.mk - packaging files (included by Makefile.am)
