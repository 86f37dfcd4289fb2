# The three commands a newcomer needs: `make demo`, `make test`, `make dev`.
# Each creates .venv and installs the project into it by itself.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test dev bench lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mt5-pipeline demo

LINTED := mt5_pipeline api ml benchmarks tools mt5_pipeline_tests

test: lint
	$(BIN)/python -m pytest -q mt5_pipeline_tests

dev: $(STAMP)
	$(BIN)/mt5-pipeline dev

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
