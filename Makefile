# Quick start: `make demo` (set up, run the end-to-end story) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: demo demo-serve test install tools proto lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

tools: node_modules/.installed

demo: install
	$(BIN)/python scripts/demo.py

demo-serve: install
	$(BIN)/python scripts/demo.py --keep-running

lint: install tools
	cd proto && ../node_modules/.bin/buf lint
	$(BIN)/python scripts/gen_proto.py --check

test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

proto: install
	$(BIN)/python scripts/gen_proto.py

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf var build *.egg-info
