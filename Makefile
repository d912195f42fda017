# The two commands the README starts with: `make demo` and `make test`; `make serve` runs the platform.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: install demo serve test lint bench services system-deps

$(VENV)/.installed: requirements.txt requirements/*.txt pyproject.toml platform/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The repository's own packages, editable: fedproto + hospital_node (pyproject.toml) and the
	# platform's apps (platform/pyproject.toml). Compat mode puts the two source roots on sys.path,
	# so the demo harness (devstack/) and new apps import without a reinstall.
	$(PY) -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e . -e ./platform
	touch $@

install: $(VENV)/.installed

# A full demo study on the embedded default (SQLite + a broker that needs no server).
demo: install
	$(PY) manage.py demo --summary-json demo-output/summary.json

# The platform on this machine, in the foreground: migrations, gunicorn on $(BIND) and a Celery
# worker with beat; Ctrl-C stops them all. DATABASE_URL / REDIS_URL select PostgreSQL / Redis.
BIND ?= 127.0.0.1:8000
TEST_WORKERS ?= 2
serve: install
	BIND=$(BIND) PY=$(PY) bash deploy/dev/serve.sh

# System packages the tests need (Chromium for the browser tests, Pango for PDF reports).
system-deps:
	bash deploy/dev/ensure-system-deps.sh

# Start PostgreSQL and Redis if they are down.
services:
	bash deploy/dev/ensure-services.sh

# Lint: ruff (errors + import order) on everything, mypy on the node and the protocol code,
# import-linter on the import floors (pyproject.toml [tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The lint step, then the whole suite (TEST_WORKERS pytest-xdist workers, one per core here) on PostgreSQL + Redis with real Celery workers and node daemons.
test: install system-deps services lint
	DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/7} \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

bench: install services
	$(PY) bench/run_all.py
