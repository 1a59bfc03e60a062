# tagway: one command for checks, one for tests, the same locally and in CI.
# Works from a fresh clone with only Python 3.11+ and make: the first target that needs the
# virtual environment creates it and installs tagway with its dev tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help demo test test-slow check lint typecheck imports bench fmt deb clean tools

help:
	@echo "make demo       run the whole product on embedded defaults (cloud, simulated plant, agent)"
	@echo "make test       run the test suite (slow scenarios excluded; see make test-slow)"
	@echo "make check      ruff, mypy --strict on the packages, and the import rules"
	@echo "make bench      run every benchmark in tests/bench/"
	@echo "make deb        build the Debian package"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tagway needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Command-line tools the tests use (mbpoll as an independent Modbus client, shellcheck for the
# package's maintainer scripts, sudo for the README's install walk, node-opcua as a second OPC UA
# server in tests/tools/node_modules).
# Installed when apt (or npm) is available and we may use it; the tests that need a missing tool
# skip and say why (and fail under CI=true where they must run).
tools:
	@if command -v npm >/dev/null 2>&1 && [ ! -d tests/tools/node_modules/node-opcua-server ]; then \
	  npm install --prefix tests/tools --no-audit --no-fund --silent >/dev/null 2>&1 || \
	    echo "note: could not install node-opcua (npm); the tests that use it will skip"; \
	fi
	@for tool in mbpoll shellcheck sudo; do \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq $$tool >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$tool >/dev/null 2>&1)) || \
	    echo "note: could not install $$tool; the tests that use it will skip"; \
	  fi; \
	done

demo: $(STAMP)
	$(BIN)/tagway demo

test: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) tools
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

check: lint typecheck imports

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@set -e; for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

deb: $(STAMP)
	bash packaging/build-deb.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
