# recflow: `make run` runs the nightly DAG end to end on generated data; `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3.11
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recflow-installed
CLASS_ARCHIVE_STAMP := $(VENV)/.recflow-class-archive
RUN_DATE ?= 2026-01-14
PYTEST_ARGS ?=
# make test runs the suite on this many pytest-xdist workers (0: in one process); tests/conftest.py hands them
# whole modules, so that module fixtures and the tiny DAG run are built once per run
TEST_WORKERS ?= 2

export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)
export SPARK_LOCAL_IP := 127.0.0.1
export AIRFLOW_HOME := $(CURDIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG := 2
export TF_CPP_MIN_LOG_LEVEL := 2
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help install java run test test-quick lint format bench bench-first-pass bench-quality bench-score bench-warm-start clean-lake \
	ui ui-stop backfill browser-deps test-browser mlflow-ui

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

java: ## install OpenJDK 17 if no java is on PATH (Debian)
	@command -v java >/dev/null 2>&1 || { echo "installing OpenJDK 17"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless) \
	  || { echo "could not install Java 17: install openjdk-17-jre-headless and retry" >&2; exit 1; }; }

install: java $(STAMP) $(CLASS_ARCHIVE_STAMP) ## create .venv and install recflow with its pinned dependencies

# pyspark (with the pandas and pyarrow its archive workload uses) goes in first, so that Spark's class archive
# (tools/class_archive.py: ~1 min, mostly one core) is built while pip installs the rest on the other core
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $$(grep -Eo '^ +(pyspark|pyarrow|pandas)[=<>!~][^ #]*' setup.cfg | tr -d ' ')
	@$(PY) -m tools.class_archive > $(VENV)/class-archive.log 2>&1 & archive=$$!; \
	  echo "$(PY) -m pip install -q -e '.[dev]'  (class archive building beside it)"; \
	  $(PY) -m pip install -q -e '.[dev]'; installed=$$?; \
	  wait $$archive; cat $(VENV)/class-archive.log; exit $$installed
	@touch $@

# Spark's class archive: nothing left to do after the step above, unless the venv was installed before it existed
$(CLASS_ARCHIVE_STAMP): $(STAMP)
	$(PY) -m tools.class_archive
	@touch $@

run: install ## generate demo logs and run the nightly DAG for RUN_DATE end to end, then show the results
	$(PY) -m tools.run_demo --date $(RUN_DATE)

test: install ## run the test suite (real Spark, Airflow, Great Expectations, TensorFlow)
	$(PY) -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder $(PYTEST_ARGS)

test-quick: install ## the fast unit tests only
	$(PY) -m pytest -m 'not slow and not airflow' $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-lake: ## remove the local lake and Airflow home (generated data only)
	rm -rf lake airflow_home

# ---- operations: local Airflow UI, browser test dependencies, benchmarks ------------------------------------
PLAYWRIGHT_PREFIX := $(CURDIR)/.cache/playwright

ui: install ## start the Airflow UI (api-server, scheduler, dag-processor) on 127.0.0.1:8080 and print the login
	$(PY) -m tools.local_airflow ui

ui-stop: ## stop exactly the processes `make ui` started (PIDs in airflow_home/pids/)
	$(PY) -m tools.local_airflow ui-stop

backfill: install ## run the nightly DAG for days FROM..TO (YYYY-MM-DD) in date order through a scheduler [CONF='{json}']
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD [CONF='{...}']" >&2; exit 2; }
	$(PY) -m tools.local_airflow backfill $(FROM) $(TO) $(if $(CONF),--conf '$(CONF)')

mlflow-ui: install ## the MLflow UI of the lake's tracking store on 127.0.0.1:5000 (own venv; stop: python -m tools.mlflow_ui stop)
	$(PY) -m tools.mlflow_ui start

browser-deps: ## Debian chromium and npm playwright-core for the browser test (tests/browser/)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@test -d $(PLAYWRIGHT_PREFIX)/node_modules/playwright-core || \
	  npm install --silent --no-audit --no-fund --prefix $(PLAYWRIGHT_PREFIX) playwright-core

test-browser: install browser-deps ## the UI browser test (marker browser, ~12 min; screenshots in test-artifacts/)
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS)

define run_bench
	$(PY) -m benchmarks.$(1) $(BENCH_ARGS)
endef

bench: install ## clean + features throughput vs a plain Spark copy and DuckDB (1M/4M/16M events)
	$(call run_bench,bench_clean)

bench-first-pass: install ## clean's first pass piece by piece against the floor's JSON reader (one warm JVM, 1M events)
	$(call run_bench,bench_first_pass)

bench-quality: install ## every model on MovieLens (fixed 100k split, or DATA=ratings file), the published protocol
	$(call run_bench,bench_quality) $(if $(DATA),--data '$(DATA)')

bench-score: install ## batch scoring vs the bare matrix product and ALS recommendForAllUsers
	$(call run_bench,bench_score)

bench-warm-start: install ## the deep model warm-started vs cold over a 7-night backfill: training time, next-day nDCG@10
	$(call run_bench,bench_warm_start)
