# Two commands for a new user: `make demo` and `make test` (both set up .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
STUDY ?= studies/digits.yaml

.PHONY: install browser demo ui test test-slow lint format bench bench-e2e clean

# pip's and the build backend's output go to a log that is shown only when a step fails,
# so `make demo` shows the study and nothing else.
PIP := PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off $(BIN)/pip
INSTALL_LOG := $(VENV)/install.log

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (pip log: $(INSTALL_LOG))"
	@$(PY) -m venv $(VENV)
	@{ $(PIP) install --upgrade pip && $(PIP) install -e '.[dev,postgres]'; } \
		> $(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG); \
		echo "install failed; the whole log: $(INSTALL_LOG)" >&2; exit 1; }
	@touch $@

install: $(STAMP)

# Headless Chromium for the report's browser test (tests/test_tracking_report.py skips
# without it): apt-get installs it when it is missing and we are root; otherwise nothing.
# Never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	! command -v apt-get >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 \
	&& apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	echo "browser: could not install chromium; the browser test will be skipped"; }

demo: install
	@$(BIN)/tunetrack run $(STUDY)

# the MLflow UI on the demo's store; the query opens MLflow 3.17 in Model training mode
# (GenAI otherwise), and the link `tunetrack run` prints goes straight to its study's runs
ui: install
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	@$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# any nonzero pytest exit fails, 5 ("no tests collected") included: a run that tested
# nothing is not a pass
test: install browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.trainer_throughput
	$(BIN)/python -m bench.pruning
	$(BIN)/python -m bench.study_time_to_target
	$(BIN)/python -m bench.tracking_overhead
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.workers_scaling
	$(BIN)/python -m bench.fused_trials
	$(BIN)/python -m bench.dropout_masks
	$(BIN)/python -m bench.figure_costs
	$(MAKE) bench-e2e

# the whole-process benchmarks: what a user waits for, imports and stores included
bench-e2e: install
	$(BIN)/python -m bench.end_to_end_trial
	$(BIN)/python -m bench.study_vs_script
	$(BIN)/python -m bench.overhead

clean:
	rm -rf $(VENV) mlruns mlflow.db tunetrack.db .pytest_cache .ruff_cache
