# trashseg — every entry point. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
BUILD := build
# The setup stamp is keyed by pyproject's content, so re-running setup with nothing
# changed costs seconds, and any pin change reinstalls.
SETUP_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
SETUP_STAMP := $(VENV)/.setup-$(SETUP_HASH)
# torch first (the CPU wheel on these machines), then natten built against it without
# build isolation (seconds instead of minutes); versions come from pyproject's pins.
PIN = $(shell grep -oE '"$(1)==[^"]+"' pyproject.toml | tr -d '"')

PYTEST_ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1

##@ Getting started

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m [VAR=value]\n"} \
	  /^[a-zA-Z0-9_.-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: setup
setup: $(SETUP_STAMP) ## Create .venv and install trashseg with its test tools (idempotent)

$(SETUP_STAMP): pyproject.toml
	@command -v $(PYTHON_BOOT) >/dev/null || { echo "error: $(PYTHON_BOOT) not found; install Python 3.11 or set PYTHON_BOOT=/path/to/python3.11" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(call PIN,torch)
	$(PIP) install -q --no-build-isolation $(call PIN,natten)
	$(PIP) install -q -e ".[test]"
	$(PIP) check
	@rm -f $(VENV)/.setup-* && touch $@
	@echo "setup done: $(VENV)"

.PHONY: lint
lint: setup ## Lint Python (ruff)
	$(VENV)/bin/ruff check trashseg components pipelines tests benchmarks

.PHONY: test
test: setup ## Run the test suite (installs what it needs first)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: clean
clean: ## Remove build outputs and local run state (keeps .venv)
	rm -rf $(BUILD) runs local_outputs mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache
