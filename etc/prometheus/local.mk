# etc/prometheus/local.mk - Prometheus rules and their tests (included by Makefile.am)

# Recording and alerting rules, installed as data (not configuration: an
# upgrade replaces them): $(pkgdatadir)/prometheus/easypost-sync.rules.yml.
promrulesdir = $(pkgdatadir)/prometheus
dist_promrules_DATA = etc/prometheus/easypost-sync.rules.yml

# promtool.sh: `promtool check rules` and `promtool test rules`;
# prometheus.sh: a real Prometheus scraping the daemon, one alert firing and
# clearing.
TESTS += tests/prometheus/promtool.sh tests/prometheus/prometheus.sh
EXTRA_DIST += etc/prometheus/local.mk tests/prometheus/promtool.sh tests/prometheus/prometheus.sh \
	tests/prometheus/easypost-sync.test.yml
