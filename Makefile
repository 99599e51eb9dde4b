# Two commands for users: `make demo` and `make test` (see README.md).
# Everything else here is what they call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU build; an unpinned torch pulls several GB of CUDA libraries.
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test env node contracts check-artifacts bench clean devnet-down

demo: env node
	$(BIN)/gpumarket demo

test: env node
	$(BIN)/python -m pytest $(PYTEST_ARGS)

env: $(VENV)/.installed
node: node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_CPU)"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	node_modules/.bin/anvil --version
	touch $@

# Rebuild the committed ABI + bytecode artifacts from the Solidity sources.
contracts: node
	node scripts/compile_contracts.js

bench: env node
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

devnet-down:
	-$(BIN)/gpumarket devnet down

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis dist build
