# tests/fake.mk - the fake EasyPost API (included by Makefile.am)
