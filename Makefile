# The two commands of a fresh machine: `make run` and `make test` (each creates .venv when missing).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Pinned so pip takes the local CPU build instead of a multi-GB CUDA one.
TORCH   := torch==2.13.0
DATA    ?= $(abspath ../shared/data)
# Test processes: each test runs one torch thread, so two processes (one per test file) keep both cores busy.
JOBS    ?= 2

.PHONY: run test test-fast lint venv clean

$(BIN)/poisonlab: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/poisonlab

run: venv
	$(BIN)/poisonlab run --out runs/default

test: venv
	$(BIN)/ruff check src tests benchmarks
	POISONLAB_DATA=$(DATA) $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

test-fast: venv   # the everyday lane, under a minute; CI runs `make test`
	$(BIN)/ruff check src tests benchmarks
	POISONLAB_DATA=$(DATA) $(BIN)/python -m pytest -q -m fast

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
