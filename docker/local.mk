# docker/local.mk - packaging files (included by Makefile.am)

# Container image, compose stack and its deployment test (docker/README.md).
EXTRA_DIST += \
	docker/README.md \
	docker/Dockerfile \
	docker/entrypoint.sh \
	docker/docker-compose.yml \
	docker/docker-compose.hostnet.yml \
	docker/docker-compose.replicas.yml \
	docker/docker-compose.replicas-hostnet.yml \
	docker/pgbouncer/Dockerfile \
	docker/pgbouncer/entrypoint.sh \
	docker/.env.example \
	docker/postgres-standin/Dockerfile \
	docker/postgres-standin/docker-entrypoint.sh \
	docker/test.sh \
	docker/local.mk

# easypost-syncd(8)
dist_man8_MANS = doc/easypost-syncd.8

# systemd unit, installed as $(prefix)/lib/systemd/system/easypost-syncd.service
# (/usr/lib/systemd/system with --prefix=/usr).
systemdunitdir = $(prefix)/lib/systemd/system
dist_systemdunit_DATA = etc/easypost-syncd.service
