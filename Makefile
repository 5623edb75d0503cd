# Switchboard: `make run` runs the whole stack locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
PORT ?= 8000
NATS_PORT ?= 4222
export PORT NATS_PORT

.PHONY: help setup run test lint fmt bench docs lock clean

help:
	@echo "make run    - set up (venv, pinned deps, nats-server) and run the stack on http://127.0.0.1:$(PORT)"
	@echo "make test   - set up and run every test (lint, unit, integration)"
	@echo "make bench  - run the benchmarks and print their ratios to the baselines"
	@echo "make lint / make fmt - ruff"
	@echo "make docs   - regenerate docs/configuration.md and the Grafana dashboards from the code"

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)
	@bash scripts/ensure-tools.sh

run: $(STAMP)
	@bash scripts/ensure-tools.sh promtool
	$(PY) -m switchboard.localstack

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: setup
	$(PY) -m bench

# generated files (committed; unit tests check they are current)
docs: setup
	$(PY) -m switchboard.configdoc
	$(PY) infra/grafana/build_dashboards.py

# Maintainers: re-pin after editing requirements*.in (needs uv in the venv).
lock: setup
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile -q requirements.in -o requirements.txt --python-version 3.11
	$(VENV)/bin/uv pip compile -q requirements-dev.in -o requirements-dev.txt --python-version 3.11

clean:
	rm -rf var .pytest_cache .ruff_cache

# --- containers (docs/docker.md) ---------------------------------------------------
.PHONY: env compose-test

# .env for docker compose, from .env.example with fresh random secrets
env:
	@bash scripts/init-env.sh

# the real docker-compose.yml, scaled (3 codec, 2 gateways), driven through the edge,
# then torn down; needs ../shared/tools/compose-up (podman and image stand-ins)
compose-test: setup
	bash scripts/compose-test.sh
