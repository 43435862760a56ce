# Quick start: `make demo` (set up, run the end-to-end story) and `make test`.
# npm packages (buf, bcoin, anvil) are pinned in package-lock.json and installed by `npm ci`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: demo demo-serve test install tools softhsm proto lint bench bench-all bench-scanning bench-signer bench-matching bench-withdrawals nodes-up nodes-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The example chain plugin (docs/chain-plugins.md) is installed too: the tests
# load it through its entry point, as a third party's plugin would be.
$(VENV)/.installed: pyproject.toml examples/chain-plugin/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e examples/chain-plugin
	touch $@

install: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

tools: node_modules/.installed

demo: install tools
	$(BIN)/python scripts/demo.py

demo-serve: install tools
	$(BIN)/python scripts/demo.py --keep-running

nodes-up: install tools
	$(BIN)/custody nodes up

nodes-down: install
	$(BIN)/custody nodes down

lint: install tools
	cd proto && ../node_modules/.bin/buf lint
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/ruff check .

# SoftHSM2 for the signer's PKCS#11 tests: installed here when missing and we
# are root; otherwise those tests fail with a message saying how to install it.
SOFTHSM_LIB := /usr/lib/softhsm/libsofthsm2.so
softhsm:
	@test -e $(SOFTHSM_LIB) || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing softhsm2"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; }; \
	  else \
	    echo "WARNING: softhsm2 is not installed and we are not root: the PKCS#11 signer tests will fail." \
	         "Install it with: sudo apt-get install softhsm2"; \
	  fi; }

test: lint softhsm
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

proto: install
	$(BIN)/python scripts/gen_proto.py

bench: install
	$(BIN)/python -m benchmarks.run

bench-scanning: install tools
	$(BIN)/python -m benchmarks.scanning

bench-signer: install softhsm
	$(BIN)/python -m benchmarks.signer

bench-withdrawals: install tools
	$(BIN)/python -m benchmarks.withdrawals

bench-matching: install
	$(BIN)/python -m benchmarks.matching

# Every benchmark, one after another (about 25 minutes on 2 cores).
bench-all: bench bench-scanning bench-signer bench-matching bench-withdrawals

clean:
	-$(BIN)/custody nodes down 2>/dev/null
	rm -rf var build *.egg-info
