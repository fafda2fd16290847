# The commands the README shows. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
MODELS_DIR ?= models

.PHONY: serve test lint models evaluate bench screenshots install-service install-train install-dev install-bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.service-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.service-installed $(VENV)/.train-installed

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@ $(VENV)/.service-installed

$(VENV)/.train-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'
	touch $@ $(VENV)/.service-installed

install-service: $(VENV)/.service-installed
# torch (CPU wheel, pinned), onnx, scikit-learn...: what `python -m training` needs beside the service.
install-train: $(VENV)/.train-installed
install-dev: $(VENV)/.dev-installed
install-bench: $(VENV)/.bench-installed

serve: install-service
	$(BIN)/python -m service --models-dir $(MODELS_DIR)

# Tools the tests call that pip cannot install, Debian's packages: docker-compose checks docker-compose.yml,
# chromium is the browser tests/ui drives (Playwright with executable_path: no browser download).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
SYSTEM_TOOLS := docker-compose chromium
system-deps:
	@missing="$(strip $(foreach tool,$(SYSTEM_TOOLS),$(if $(shell command -v $(tool)),,$(tool))))"; \
		[ -z "$$missing" ] || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }

test: install-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

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
bench: install-bench
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends wrk; }
	$(BIN)/python bench/run.py --seconds $(BENCH_SECONDS) $(foreach target,$(COMPARE),--compare $(target))

# The README's screenshots of the page and /docs, taken by the browser tests.
screenshots: install-dev system-deps
	UI_SCREENSHOTS=docs/ui $(BIN)/python -m pytest tests/ui

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The default recipes against PCA and IsolationForest; tables, JSON and charts in reports/evaluation/.
evaluate: install-dev
	$(BIN)/python -m training evaluate mnist --data $(DATA)/mnist
	$(BIN)/python -m training evaluate tabular --data $(DATA)/adbench $(DATA)/adbench-more
