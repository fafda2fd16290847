# The commands the README shows. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
MODELS_DIR ?= models

.PHONY: serve test lint models install-service install-dev system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.service-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(VENV)/.service-installed

install-service: $(VENV)/.service-installed
install-dev: $(VENV)/.dev-installed

serve: install-service
	$(BIN)/python -m service --models-dir $(MODELS_DIR)

# Tools the tests call that pip cannot install: docker-compose (Debian's package) checks docker-compose.yml.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@command -v docker-compose >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends docker-compose; }

test: install-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

# Reproduces the committed default models from the datasets in $(DATA).
FIT := $(BIN)/python -m training fit --models-dir $(MODELS_DIR) --version 1 --replace
models: install-dev
	$(FIT) --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --arch dense --latent 32 --epochs 60 --name mnist-dense
	$(FIT) --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --arch conv --latent 16 --epochs 40 --name mnist-conv
	$(FIT) --data $(DATA)/adbench/cardio.npz --arch dense --normal-label 0 --epochs 200 --patience 20 --name cardio

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
