# Two commands for users: `make demo` and `make test` (see README.md).
# Everything else here is what they call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU build; an unpinned torch pulls several GB of CUDA libraries.
TORCH_CPU ?= torch==2.13.0

# The JupyterLab extension's sources: a change reinstalls the package, whose build hook
# (hatch-jupyter-builder) rebuilds the prebuilt extension and copies it into the venv.
LAB_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json \
	labextension/tsconfig.json labextension/install.json jupyter-config/server-config/jupyter_gpumarket.json

.PHONY: demo test env node browser contracts check-artifacts bench clean devnet-down

demo: env node
	$(BIN)/gpumarket demo

test: env node browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

env: $(VENV)/.installed
node: node_modules/.installed

$(VENV)/.installed: pyproject.toml node_modules/.installed $(LAB_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_CPU)"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	node_modules/.bin/anvil --version
	touch $@

# tests/lab drives Debian's Chromium with Playwright (no browser download); CI runs as root.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Rebuild the committed ABI + bytecode artifacts from the Solidity sources.
contracts: node
	node scripts/compile_contracts.js

bench: env node
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

devnet-down:
	-$(BIN)/gpumarket devnet down

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis dist build \
		jupyter_gpumarket/labextension labextension/lib labextension/tsconfig.tsbuildinfo
