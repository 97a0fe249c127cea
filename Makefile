# fleetgrid: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## demo: create the venv, install, generate a depot day and compare the MILP with the baseline policies
demo: $(STAMP)
	$(BIN)/fleetgrid demo

## test: install test needs, lint, type-check and run the whole suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	scripts/ensure-services
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/acn_month.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
