# Everything a fresh machine needs is installed by these targets; see README.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := tools/buf/node_modules/.bin/buf
BUF_STAMP := tools/buf/node_modules/.installed
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
IMAGE_DIR := build/proto
BASELINE := proto/breaking-baseline.binpb

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: FORCE help setup bench bench-tools codegen codegen-check proto-image proto-lint proto-breaking proto-baseline \
	lint test run clean

help:
	@echo "make run      set up and start the local stack (moto + accounts + transfers)"
	@echo "make test     set up and run every test (lint, types, contracts, codegen drift, pytest)"
	@echo "make codegen  regenerate gen/ from proto/"
	@echo "make bench    measure the chains against bare grpc.aio, and the ledger's transfers/s"

# The editable install maps each top-level package when it is made: a package added
# later (a new contract's in gen/, a new service's) needs it made again. Rewritten
# only when the set of packages changes, so regenerating gen/ reinstalls nothing.
PACKAGES := $(sort $(patsubst %/__init__.py,%,$(wildcard gen/*/__init__.py */__init__.py)))
PACKAGES_SEEN := build/packages.txt

$(PACKAGES_SEEN): FORCE
	@mkdir -p $(@D)
	@echo '$(PACKAGES)' | cmp -s - $@ || echo '$(PACKAGES)' > $@

$(STAMP): pyproject.toml $(PACKAGES_SEEN)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF_STAMP): tools/buf/package.json
	cd tools/buf && npm install --silent --no-audit --no-fund
	touch $@

$(DEPLOY_STAMP): tools/deploy/requirements.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r tools/deploy/requirements.txt
	touch $@

$(CHECKOV_STAMP): tools/deploy/checkov-requirements.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r tools/deploy/checkov-requirements.txt
	touch $@

setup: $(STAMP) $(BUF_STAMP) $(DEPLOY_STAMP) $(CHECKOV_STAMP)

codegen: $(STAMP)
	$(PY) -m codegen
	@$(MAKE) --no-print-directory $(STAMP)  # a new contract package: importable at once

codegen-check: $(STAMP)
	$(PY) -m codegen --check

proto-image: $(STAMP)
	mkdir -p $(IMAGE_DIR)
	$(PY) -m codegen --image $(IMAGE_DIR)/image.binpb

proto-lint: proto-image $(BUF_STAMP)
	$(BUF) lint $(IMAGE_DIR)/image.binpb --config proto/buf.yaml

proto-breaking: proto-image $(BUF_STAMP)
	$(BUF) breaking $(IMAGE_DIR)/image.binpb --against $(BASELINE) --config proto/buf.yaml

# Accept the current contracts as the new compatibility baseline (a deliberate act).
proto-baseline: proto-image
	cp $(IMAGE_DIR)/image.binpb $(BASELINE)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/mypy $$(find gen -name '*_platform.py' | sort)

test: setup
	$(MAKE) --no-print-directory lint proto-lint proto-breaking codegen-check
	$(VENV)/bin/pytest

# h2load (Debian's nghttp2-client) drives the servers in `make bench`.
bench-tools:
	command -v h2load >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq nghttp2-client; }

bench: setup bench-tools
	$(PY) -m bench.server_bench
	$(PY) -m bench.client_bench
	$(PY) -m bench.tls_bench
	$(PY) -m bench.ledger_bench

run: $(STAMP)
	$(PY) tools/devstack.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(CHECKOV_VENV) build tools/buf/node_modules .mypy_cache .ruff_cache .pytest_cache
