# pg_segment — the two commands a new machine needs: `make demo` and `make test`.
# Works as root or as a user with sudo on Debian 12; installs whatever is missing.

PG_MAJOR    ?= 15
PG_CONFIG   ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
PG_BIN      := /usr/lib/postgresql/$(PG_MAJOR)/bin
PGRX        := 0.18.1
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:$(PATH)

APT_PACKAGES := postgresql-$(PG_MAJOR) postgresql-server-dev-$(PG_MAJOR) postgresql-$(PG_MAJOR)-cron \
                libclang-dev clang pkg-config sudo chromium

.PHONY: demo test deps build install cluster unit pgtest regress client stress bench shards-test clean help

help:
	@echo "make demo   - set up everything, install pg_segment, segment demo data, print the result"
	@echo "make test   - set up everything and run all test layers (unit, pg_test, pg_regress, client)"
	@echo "make bench  - live-path benchmarks, written to BENCHMARKS.md (not part of make test)"

## ---- set-up ------------------------------------------------------------------------------

deps:
	@scripts/deps.sh "$(PG_MAJOR)" "$(PGRX)" $(APT_PACKAGES)

build: deps
	cargo build --release

install: deps
	scripts/as-root.sh cargo pgrx install --release --pg-config $(PG_CONFIG)
	scripts/as-root.sh install -m 644 sql/pg_segment--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

cluster: deps
	@scripts/cluster.sh $(PG_MAJOR)

## ---- the two commands ----------------------------------------------------------------------

demo: install cluster
	@scripts/demo.sh

test: deps unit pgtest regress client
	@echo "all test layers passed"

## ---- test layers -----------------------------------------------------------------------------

unit: deps
	cargo test --lib -- --skip pg_test_

stress: install cluster
	STRESS_SECONDS=600 CRASH_ROUNDS=30 scripts/client.sh

shards-test: install
	@scripts/shards.sh $(PG_MAJOR)

pgtest: deps
	@scripts/pgtest.sh $(PG_MAJOR)

regress: install cluster
	@scripts/regress.sh $(PG_MAJOR)

client: install cluster
	@scripts/client.sh

bench: install cluster
	@scripts/bench.sh


clean:
	cargo clean
