# The front door: `make run` (the demo) and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.DEFAULT_GOAL := help
.PHONY: help install system-deps test test-unit test-dates lint format typecheck check migrate run demo worker daemon status bench bench-quick soak docs docs-build check-wheel clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,local]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with every extra (idempotent)

system-deps:  ## the Debian packages the tests run or start (apt-get, as root)
	scripts/system-deps.sh

test: install system-deps  ## run the whole test suite (embedded servers unless TEST_*_URL are set)
	$(PY) -m pytest

test-unit: install  ## unit tests only: no I/O, a few seconds
	$(PY) -m pytest tests/unit

test-dates: install system-deps  ## unit + integration tests with the clock at month ends, Feb 29, 23:59:59, years away
	scripts/test-dates.sh $(PY)

lint: install  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install  ## mypy --strict on app, tests and benchmarks
	$(VENV)/bin/mypy --strict app tests benchmarks

check-wheel: install  ## build the wheel, install it outside the checkout, migrate beside another app's tables
	scripts/check-wheel.sh $(PY)

docs-build: install  ## build the manual (docs/) with mkdocs --strict: a broken link fails
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs: install  ## serve the manual on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

check: lint typecheck docs-build test  ## lint + types + docs + tests, what CI runs

migrate: install  ## upgrade DATABASE_URL to head
	$(PY) -m app migrate

run: install  ## the demo: a fleet of agents sleeps and wakes over simulated days
	$(PY) -m app demo

worker: install  ## run the wake worker
	$(PY) -m app worker

daemon: install  ## run the budget daemon
	$(PY) -m app daemon

status: install  ## counts by status, due sleepers, today's spend
	$(PY) -m app status

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,local,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmarks against raw asyncpg and LangGraph, resume delivery, the ledger at 10M rows (several minutes)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.resume
	$(PY) -m benchmarks.ledger

bench-quick: $(BENCH_STAMP)  ## a smoke run of the benchmarks, under 2 minutes
	$(PY) -m benchmarks.run --quick
	$(PY) -m benchmarks.resume --sessions 2000
	$(PY) -m benchmarks.ledger --rows 200000 --sessions 10000 --users 1000

soak: install  ## the reliability suite with a 60 s soak (make check runs a 10 s one)
	SOAK_SECONDS=60 $(PY) -m pytest tests/reliability -p no:cacheprovider

clean:  ## remove the virtualenv, embedded servers' data and caches
	-[ -x $(PY) ] && $(PY) -c "from app.local_services import stop_leftovers; stop_leftovers()" 2>/dev/null || true
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
