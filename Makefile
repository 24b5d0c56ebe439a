# Two set-up commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
PORT ?= 3000
# One Dagster instance folder for the demo's runs and the UI (make dev shows what make demo ran).
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# `dagster dev` with Dagster's notices about its own APIs (`dagster dev` superseded, beta parameters) silenced:
# they are not for operators.
DAGSTER_DEV := import sys, warnings, dagster; [warnings.filterwarnings("ignore", category=c) for c in (dagster.SupersessionWarning, dagster.BetaWarning)]; from dagster._cli import main; sys.argv[0] = "dagster"; sys.exit(main())

.PHONY: demo test test-all install install-dev dev serve clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installed once per change of pyproject.toml (a stamp file in the venv): `make serve` and `make dev` start at once
# when nothing changed (the code itself is an editable install: edits need no reinstall).
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/quimbi demo

# The default suite (no `slow` tests) on TEST_WORKERS processes (pytest-xdist, a whole test file to a worker so a
# module's fixtures are built once): about 8 minutes on 2 cores. PostgreSQL tests use QUIMBI_TEST_POSTGRES_URL when
# set (each worker in a database of its own beside it, created when missing), else a throwaway server started by
# each worker where PostgreSQL's binaries exist; they skip (with a message) where neither is possible, unless
# QUIMBI_REQUIRE_POSTGRES=1 (as in .ci/run) makes that an error. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

# Everything, the slow comparisons included: what CI runs (.ci/run).
test-all: install-dev
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The UI on http://localhost:$(PORT) (make dev PORT=3001). Runs launched from it use the demo's flags
# (data/demo_flags.yaml, written by make demo) unless QUIMBI_FLAGS_FILE is set, and its daily partitions span the
# demo's dates (data/demo_partitions.env) unless QUIMBI_PARTITIONS_START is set.
dev: install $(DAGSTER_HOME)/dagster.yaml
	if [ -z "$${QUIMBI_PARTITIONS_START:-}" ] && [ -f data/demo_partitions.env ]; then set -a; . ./data/demo_partitions.env; set +a; fi; \
	cd $(DAGSTER_HOME) && DAGSTER_HOME=$(DAGSTER_HOME) \
	  QUIMBI_FLAGS_FILE=$${QUIMBI_FLAGS_FILE:-$$(test -f $(CURDIR)/data/demo_flags.yaml && echo $(CURDIR)/data/demo_flags.yaml)} \
	  $(CURDIR)/$(BIN)/python -c '$(DAGSTER_DEV)' dev -w $(CURDIR)/workspace.yaml -p $(PORT)

# The read API and pages on http://localhost:$(API_PORT) over the demo's warehouse, with the demo's flags.
API_PORT ?= 8000
serve: install
	if [ -z "$${QUIMBI_ORDERS:-}" ] && [ -f data/demo_partitions.env ]; then set -a; . ./data/demo_partitions.env; set +a; fi; \
	QUIMBI_FLAGS_FILE=$${QUIMBI_FLAGS_FILE:-$$(test -f $(CURDIR)/data/demo_flags.yaml && echo $(CURDIR)/data/demo_flags.yaml)} \
	  $(BIN)/quimbi serve --port $(API_PORT)

bench: install
	$(BIN)/python benchmarks/run.py --customers 100000

clean:
	rm -rf $(VENV) data .dagster_home .pytest_cache
