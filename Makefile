# Two commands for a newcomer:  `make run` (the pipeline on the sample corpus + tiny model)
# and `make test` (the test suite). Both create .venv and install the project on first use.
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

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: $(STAMP)  ## validate -> preprocess -> model -> tokenize -> train -> evaluate, tracked in mlflow.db
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: $(STAMP)  ## the default suite (no GPU, no network)
	$(BIN)/python -m pytest

test-all: $(STAMP)  ## also GPU and network tests, where the machine has them
	$(BIN)/python -m pytest --run-gpu --run-network

clean-runs:  ## forget local run state (DVC outputs, MLflow store); the data and code stay
	rm -rf data/processed data/tokenized models reports checkpoints mlruns mlflow.db
