# fleetgrid: the two commands a newcomer needs are `make demo` and `make test`.
# Every install comes from uv.lock (exact versions and hashes of every package, for every extra).
# `make lock` updates it; `make test-latest` runs the suite against the newest releases instead.
PYTHON ?= python3
UV_VERSION := 0.13.10
VENV   ?= .venv
BIN    := $(VENV)/bin
TOOLS  := .uv
UV     := $(TOOLS)/bin/uv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | sha1sum | cut -c1-12)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test lint typecheck unit bench lock test-latest clean

# uv itself, pinned, in its own small venv (it is not part of the project's environment)
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --extra dev --python $(PYTHON)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## demo: create the venv from the lock, install, run a whole depot day end to end
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
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/acn_month.py

## lock: re-resolve uv.lock to the newest releases that pyproject.toml allows (commit the result)
lock: | $(UV)
	$(UV) lock --upgrade

## test-latest: the suite against the newest releases, in a venv of its own (not part of .ci/run)
test-latest: | $(UV)
	rm -rf .venv-latest
	$(UV) venv --quiet --python $(PYTHON) .venv-latest
	VIRTUAL_ENV=.venv-latest $(UV) pip install --quiet --upgrade -e ".[dev]"
	scripts/ensure-services
	.venv-latest/bin/pytest -q

clean:
	rm -rf $(VENV) .venv-latest $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
