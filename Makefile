# Two commands for a newcomer: `make lab` and `make test`. Everything else is what they use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Recipes find the venv's tools (jlpm, jupyter, node scripts calling them) without an activated
# virtualenv, as on a fresh machine: CI runs from a minimal PATH.
export PATH := $(abspath $(BIN)):$(PATH)
unexport VIRTUAL_ENV
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# Engine, registry and base image up; JDE_BASE_IMAGE is the base image's reference. A plain
# assignment, so that a failing `make docker` stops the recipe (-e, pipefail) instead of leaving
# an empty reference behind.
DOCKER_UP = base=$$(bash scripts/docker-up.sh | tail -n 1); export JDE_BASE_IMAGE=$$base;
FRONTEND := $(wildcard labextension/src/*.ts labextension/src/*.tsx labextension/src/components/*) labextension/package.json labextension/yarn.lock

.PHONY: lab test docker install lint pytest browser clean bench mutants

## install: a virtualenv with the package (editable, frontend built) and the dev tools
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(FRONTEND) ui-tests/package.json tests/hub/package.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/jupyter server extension enable --sys-prefix jupyter_docker_env >/dev/null
	cd ui-tests && npm ci --no-audit --no-fund --loglevel=error
	cd tests/hub && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## docker: a Docker engine, a registry on 127.0.0.1:5000 and a base image; prints its reference last
docker:
	@bash scripts/docker-up.sh

## browser: Debian's Chromium for the UI tests
browser:
	@command -v chromium >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "Install chromium (sudo apt-get install -y chromium)"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## lint: ruff, mypy, eslint, prettier and tsc
lint: install
	$(BIN)/ruff check jupyter_docker_env tests benchmarks scripts
	$(BIN)/ruff format --check jupyter_docker_env tests benchmarks scripts
	$(BIN)/mypy
	cd labextension && ../$(BIN)/jlpm lint:check

## test: lint, then every test against the real engine and a real browser
test: install lint browser
	$(DOCKER_UP) $(BIN)/pytest $(PYTEST_ARGS)

## mutants: put each safety fault of scripts/mutants.py into the code in turn, run the tests that
## must catch it, and print the kill rate (not part of `make test`; MUTANTS_ARGS="--only hash")
mutants: install
	$(DOCKER_UP) $(BIN)/python scripts/mutants.py $(MUTANTS_ARGS)

## lab: JupyterLab on a workspace with an example environment on the local base image
lab: install
	$(DOCKER_UP) bash scripts/lab.sh

bench: install
	$(DOCKER_UP) \
	$(BIN)/python benchmarks/build_cache.py && $(BIN)/python benchmarks/kernel_start.py

clean:
	rm -rf $(VENV) jupyter_docker_env/labextension labextension/lib labextension/node_modules \
	  ui-tests/node_modules tests/hub/node_modules .lab-workspace
