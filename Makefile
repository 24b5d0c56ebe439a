# Two set-up commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install install-dev dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/quimbi demo

# PostgreSQL tests use QUIMBI_TEST_POSTGRES_URL when set, else a throwaway server started by the
# test session where PostgreSQL's binaries exist; they skip (with a message) where neither is
# possible, unless QUIMBI_REQUIRE_POSTGRES=1 (as in .ci/run) makes that an error.
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

dev: install
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home} sh -c 'mkdir -p "$$DAGSTER_HOME" && cp -n dagster.yaml "$$DAGSTER_HOME/dagster.yaml"; $(BIN)/dagster dev -w workspace.yaml'

bench: install
	$(BIN)/python benchmarks/run.py --customers 100000

clean:
	rm -rf $(VENV) data .dagster_home .pytest_cache
