# Two commands do everything on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./clients/python
	touch $(STAMP)

run: $(STAMP)
	COUNTERS_DEV_MODE=1 $(BIN)/counters serve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict clients/python/examples/app.py
	$(BIN)/python -m pytest

bench: $(STAMP)  # make bench BENCH="--only metrics --repeat 1": a few rows (python -m bench --help)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .counters .pytest_cache .mypy_cache .ruff_cache
