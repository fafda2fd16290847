# The commands the README shows. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
MODELS_DIR ?= models
# The port of `make serve`, `make bench` and `make soak` (unset: 8000, 8100 and 8299); 0 takes a free one.
PORT ?=
PORT_FLAG := $(if $(PORT),--port $(PORT))

.PHONY: serve test test-fast lint lock grpc-stubs models evaluate bench bench-grpc bench-batch soak install-wrk install-h2load screenshots install-service install-train install-dev install-bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The service's runtime at the versions the images install (requirements/service-common.txt, the lock):
# constraints, so the extras' tools add packages but never move a pinned one.
LOCK := requirements/service-cpu.txt requirements/service-common.txt
PIP_INSTALL := $(BIN)/pip install -q -c requirements/service-cpu.txt

# Stamps re-run the install whenever pyproject.toml or the lock changes.
$(VENV)/.service-installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP_INSTALL) -e '.[train,dev]'
	touch $@ $(VENV)/.service-installed $(VENV)/.train-installed

$(VENV)/.bench-installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP_INSTALL) -e '.[bench]'
	touch $@ $(VENV)/.service-installed

$(VENV)/.train-installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP_INSTALL) -e '.[train]'
	touch $@ $(VENV)/.service-installed

# Rewrites the pins of requirements/service-common.txt (its comment header kept) from a fresh environment:
# the newest versions pyproject.toml's ranges allow, onnxruntime left to service-cpu.txt and service-gpu*.txt.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --only-binary=:all: .
	{ sed '/^[^#]/,$$d' requirements/service-common.txt; \
	  $(LOCK_VENV)/bin/pip freeze | grep -viE '^(autoencoder-service|onnxruntime)( @|==)' | sort -f; } > $(LOCK_VENV)/lock.txt
	mv $(LOCK_VENV)/lock.txt requirements/service-common.txt
	rm -rf $(LOCK_VENV)

# The gRPC service's Python modules (service/grpc/open_inference_pb2*.py, committed) from its .proto, with the
# grpcio-tools of the dev extra: its protobuf is the oldest runtime the generated code accepts.
grpc-stubs: install-dev
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. service/grpc/open_inference.proto

install-service: $(VENV)/.service-installed
# torch (CPU wheel, pinned), onnx, scikit-learn...: what `python -m training` needs beside the service.
install-train: $(VENV)/.train-installed
install-dev: $(VENV)/.dev-installed
install-bench: $(VENV)/.bench-installed

# On a machine with an NVIDIA GPU (nvidia-smi answers), or with GPU=1, the service runs from its own
# .venv-gpu with onnxruntime-gpu and CUDA 13 + cuDNN 9 as pip packages (requirements/service-gpu-host.txt)
# in place of the CPU onnxruntime, which cannot share a virtual environment with it; GET /models shows the
# provider each model got. GPU=0 keeps the CPU build on a GPU machine.
GPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,0)
GPU_VENV := .venv-gpu
$(GPU_VENV)/.service-installed: requirements/service-gpu-host.txt requirements/service-common.txt pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --upgrade pip
	$(GPU_VENV)/bin/pip install -q -r requirements/service-gpu-host.txt
	$(GPU_VENV)/bin/pip install -q --no-deps -e .
	touch $@

SERVE_VENV := $(if $(filter 1,$(GPU)),$(GPU_VENV),$(VENV))
# On gunicorn's arbiter (docs/deploy.md): kill -HUP replaces the workers one at a time, -TTIN/-TTOU add
# and remove one.
serve: $(SERVE_VENV)/.service-installed
	$(SERVE_VENV)/bin/python -m service --models-dir $(MODELS_DIR) $(PORT_FLAG)

# Tools the tests call that pip cannot install, Debian's packages: docker-compose checks docker-compose.yml,
# chromium is the browser tests/ui drives (Playwright with executable_path: no browser download), prometheus
# (its package has promtool too) checks and runs deploy/monitoring's rules.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# A tool whose package is named otherwise is TOOL:PACKAGE: dockerd (docker.io) runs the images tests/deploy builds.
SYSTEM_TOOLS := docker-compose chromium prometheus dockerd:docker.io
system_tool = $(firstword $(subst :, ,$(1)))
system_package = $(lastword $(subst :, ,$(1)))
system-deps:
	@missing="$(strip $(foreach t,$(SYSTEM_TOOLS),$(if $(shell command -v $(call system_tool,$(t))),,$(call system_package,$(t)))))"; \
		[ -z "$$missing" ] || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }

test: install-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The units and the in-process app tests, under a minute: no server process, venv build, Schemathesis,
# torchrun or browser (the `e2e` and `slow` markers); `make test` runs them all.
test-fast: install-dev
	$(BIN)/python -m pytest -m "not e2e and not slow"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

# Reproduces the committed default models from the datasets in $(DATA): the default recipes
# (training/recipes.py) choose epochs, loss, noise and scaling from the data.
FIT := $(BIN)/python -m training fit --models-dir $(MODELS_DIR) --version 1 --replace
models: install-dev
	$(FIT) --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --arch dense --latent 32 --epochs 60 --name mnist-dense
	$(FIT) --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --name mnist-conv
	$(FIT) --data $(DATA)/adbench/cardio.npz --name cardio

# Load benchmark (docs/benchmark.md): the service on models/mnist-dense against in-process onnxruntime, and
# against other servers already running: make bench COMPARE="naive=http://127.0.0.1:8101/score"
COMPARE ?=
BENCH_SECONDS ?= 6
bench: install-bench install-wrk
	$(BIN)/python bench/run.py --seconds $(BENCH_SECONDS) $(PORT_FLAG) $(foreach target,$(COMPARE),--compare $(target))

# wrk, the load generator of bench and soak, from Debian when it is missing.
install-wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends wrk; }

# gRPC ModelInfer against MLServer's gRPC and our HTTP V2 binary, and V2 JSON against REST JSON, in one run
# (docs/benchmark.md); MLServer when installed in /tmp/mls (../shared/peers/README.md), skipped otherwise.
bench-grpc: install-bench install-wrk install-h2load
	$(BIN)/python bench/grpc_bench.py --seconds $(BENCH_SECONDS)

# Batch jobs (docs/batch.md): 1,000,000 x 64 Parquet rows through python -m service.batch, local and Ray
# engines, against in-process onnxruntime and the service over HTTP; reports/batch/. It trains its model.
bench-batch: install-dev
	$(BIN)/python bench/batch.py

# h2load (Debian's nghttp2-client), the gRPC load generator of bench-grpc: it replays a framed ModelInfer.
install-h2load:
	@command -v h2load >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends nghttp2-client; }

# Ten minutes of mixed traffic against the service, reporting how its resident memory grows
# (reports/soak/: JSON and a chart); SOAK_SECONDS=60 for a short look.
SOAK_SECONDS ?= 600
soak: install-bench install-wrk
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) $(PORT_FLAG)

# The README's screenshots of the page and /docs, taken by the browser tests.
screenshots: install-dev system-deps
	UI_SCREENSHOTS=docs/ui $(BIN)/python -m pytest tests/ui

clean:
	rm -rf $(VENV) $(GPU_VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache

# The default recipes against PCA and IsolationForest; tables, JSON and charts in reports/evaluation/.
evaluate: install-dev
	$(BIN)/python -m training evaluate mnist --data $(DATA)/mnist
	$(BIN)/python -m training evaluate tabular --data $(DATA)/adbench $(DATA)/adbench-more
