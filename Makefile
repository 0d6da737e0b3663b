# Two commands for a newcomer:  `make run` (the pipeline on the sample corpus + tiny model)
# and `make test` (the fast default suite: code, data and model tests, a few minutes on 2 cores).
# `make test-all` adds the flow, serving, browser, end-to-end and scale tests: what CI runs.
# Every target creates .venv and installs the project on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off for every tool the project runs.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# dvc.yaml stages call `python`; make it the project's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-all clean-runs
FAST_TESTS := tests/code tests/data tests/model

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(STAMP)  ## every dvc.yaml stage on the sample corpus and the tiny model, tracked in mlflow.db
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show --md reports/evaluate/metrics.json

test: $(STAMP)  ## the fast default suite (no GPU, no network)
	$(BIN)/python -m pytest $(FAST_TESTS)

test-all: $(STAMP)  ## the whole suite, as CI runs it (GPU and network tests only with --run-gpu / --run-network)
	$(BIN)/python -m pytest

clean-runs:  ## forget local run state (DVC outputs, MLflow store); the data and code stay
	rm -rf data/processed data/tokenized models reports checkpoints mlruns mlflow.db dvc_plots
