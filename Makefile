# mlops_assets — every target creates the environment from uv.lock by itself.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN = $(UV) run --locked $(EXTRAS)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export UV_LINK_MODE ?= copy
# compile .pyc files at install: imports stay fast even where PYTHONDONTWRITEBYTECODE is set
export UV_COMPILE_BYTECODE ?= 1
PYTEST_ARGS ?=
# test processes (pytest-xdist, tests handed out one at a time); 1 runs the suite in one process
TEST_WORKERS ?= 2
XDIST = $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
# the project spec for demo/ui (empty: [tool.mlops] spec in pyproject.toml, the churn example)
SPEC ?=
SPEC_ARG = $(if $(SPEC),--spec $(SPEC))
export MLOPS_SPEC ?= $(if $(SPEC),$(abspath $(SPEC)))
# the scale-out integrations are part of the development environment: their tests run in `make test`
EXTRAS ?= --extra postgres --extra celery
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo live test test-fast test-scaleout ui bench lint format env clean dagster-home services workers workers-stop schema observability-tools mlflow-ui

env: .venv/.synced

.venv/.synced: uv.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked $(EXTRAS)
	@touch $@

dagster-home: env
	@$(RUN) python -c "from mlops_assets.instance import ensure_dagster_home; ensure_dagster_home()"

demo: dagster-home
	$(RUN) mlops demo --fresh $(SPEC_ARG)

# the live replay: dagster-webserver + dagster-daemon on 127.0.0.1 (UI on LIVE_PORT), one simulated day landing every
# DRIP seconds; its own data folder and Dagster instance (both wiped at start). Ctrl-C stops every process it started.
LIVE_PORT ?= 3000
DRIP ?= 5
LIVE_DIR ?= $(CURDIR)/.live
live: env
	MLOPS_DATA_DIR=$(LIVE_DIR)/data $(RUN) mlops demo --live $(SPEC_ARG) --data-dir $(LIVE_DIR)/data \
	  --dagster-home $(LIVE_DIR)/dagster_home --port $(LIVE_PORT) --drip-seconds $(DRIP) \
	  --hold-for-champion $(LIVE_ARGS)

test: env services observability-tools
	$(RUN) pytest $(XDIST) $(PYTEST_ARGS)

test-fast: env
	$(RUN) pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# only the tests on real PostgreSQL / Redis / Celery / MLflow servers
test-scaleout: env services
	$(RUN) pytest -m scaleout $(PYTEST_ARGS)

ui: dagster-home
	$(RUN) dagster dev -w workspace.yaml --host 127.0.0.1

bench: env
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk unavailable: the serving benchmark uses its httpx load generator"
	$(RUN) python -m benchmarks.run_all

lint: env
	$(RUN) ruff check mlops_assets mlops_assets_tests benchmarks examples
	$(RUN) ruff format --check mlops_assets mlops_assets_tests benchmarks examples

format: env
	$(RUN) ruff check --fix mlops_assets mlops_assets_tests benchmarks examples
	$(RUN) ruff format mlops_assets mlops_assets_tests benchmarks examples

# the JSON Schema of spec files, shipped with the package (a test checks it is current)
schema: env
	$(RUN) python -m mlops_assets.spec.schema

# PostgreSQL and Redis servers from Debian's packages for the scale-out tests (started by the tests
# themselves on free loopback ports; the packages' own services are not used).
# promtool (Debian's `prometheus` package) checks deploy/prometheus/ in mlops_assets_tests/test_observability.py
observability-tools:
	@command -v promtool >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus)

# the MLflow UI on the local store (127.0.0.1:$(MLFLOW_PORT)); Dagster metadata links to it when
# MLOPS_MLFLOW_UI_URL=http://127.0.0.1:$(MLFLOW_PORT) is set for the demo and the UI
MLFLOW_PORT ?= 5000
MLFLOW_DATA ?= $(or $(MLOPS_DATA_DIR),$(CURDIR)/data)/mlflow
mlflow-ui: env
	@mkdir -p $(MLFLOW_DATA)
	$(RUN) mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(MLFLOW_DATA)/mlflow.db --default-artifact-root $(MLFLOW_DATA)/artifacts

# chromium: the browser the UI test (mlops_assets_tests/test_ui_browser.py) drives through Playwright
services:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 \
	  && command -v chromium >/dev/null 2>&1; then :; \
	else $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql redis-server chromium; fi

# Celery workers for runs on the Celery executor (MLOPS_EXECUTOR=celery). Each worker runs in its own
# process group, one task at a time; `make workers-stop` ends them. The broker is in CELERY_CONFIG.
WORKERS ?= 2
CELERY_CONFIG ?= deploy/dagster.celery.yaml
WORKERS_DIR ?= $(DAGSTER_HOME)/celery-workers
workers: env
	@mkdir -p $(WORKERS_DIR)
	@# the instance's storage is created once, here: workers starting together on a fresh database collide on its schema
	@if [ -n "$$DAGSTER_HOME" ]; then $(RUN) python -c "import sys; from mlops_assets.instance import open_instance; open_instance(sys.argv[1])" "$$DAGSTER_HOME"; fi
	@for i in $$(seq 1 $(WORKERS)); do \
	  PATH=$(CURDIR)/.venv/bin:$$PATH MLOPS_EXECUTOR=celery setsid dagster-celery worker start -A dagster_celery.app \
	    -y $(CELERY_CONFIG) -n mlops-w$$i -- --concurrency=1 >$(WORKERS_DIR)/w$$i.log 2>&1 </dev/null & \
	  echo $$! >$(WORKERS_DIR)/w$$i.pid; \
	  echo "celery worker mlops-w$$i started (pid $$!, log $(WORKERS_DIR)/w$$i.log)"; \
	done

workers-stop:
	@for f in $(WORKERS_DIR)/w*.pid; do \
	  [ -f "$$f" ] || continue; pid=$$(cat $$f); \
	  kill -TERM -- -$$pid 2>/dev/null && echo "stopping celery worker group $$pid"; \
	  for _ in $$(seq 1 60); do kill -0 -- -$$pid 2>/dev/null || break; sleep 0.5; done; \
	  kill -KILL -- -$$pid 2>/dev/null; rm -f $$f; \
	done

clean:
	rm -rf .venv .dagster_home .dagster_live .live .pytest_cache .ruff_cache
