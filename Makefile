# Quick start: `make demo` and `make test` each set everything up on their own.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/triforce

test: setup
	$(PY) -m pytest -q -n auto

test-fast: setup
	$(PY) -m pytest -q -n auto -m "not slow"

clean:
	rm -rf outputs multirun .pytest_cache
