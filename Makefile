# The commands the README shows. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
MODELS_DIR ?= models

.PHONY: serve test lint models install-service install-dev clean

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

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

# Reproduces the committed default models from the datasets in $(DATA).
models: install-dev
	$(BIN)/python -m training fit --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --arch dense \
		--latent 32 --name mnist-dense --version 1 --models-dir $(MODELS_DIR) --replace
	$(BIN)/python -m training fit --data $(DATA)/mnist/t10k-images-idx3-ubyte.gz --arch conv \
		--latent 16 --name mnist-conv --version 1 --models-dir $(MODELS_DIR) --replace
	$(BIN)/python -m training fit --data $(DATA)/adbench/cardio.npz --arch dense \
		--name cardio --normal-label 0 --version 1 --models-dir $(MODELS_DIR) --replace

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
