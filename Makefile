# FeatureOps Console. The two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint check bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## Run the console and a Celery worker with beat on the embedded defaults (SQLite, filesystem broker).
run: $(VENV)/.installed
	DEBUG=$${DEBUG:-1} HOST=$(HOST) PORT=$(PORT) PY=$(PY) ./scripts/run.sh

## Lint, Django checks, migrations check, then the whole suite.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	DEBUG=1 $(PY) manage.py check
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	@for script in bench/[!_]*.py; do [ -e "$$script" ] || continue; echo "== $$script"; $(PY) "$$script"; done

clean:
	rm -rf $(VENV) var db.sqlite3 .pytest_cache .ruff_cache
