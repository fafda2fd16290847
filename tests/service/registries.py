"""Registries and packages as the service builds them, for tests that work below the HTTP layer."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

from service.metrics import Metrics
from service.registry import Registry
from service.repository import Package, Repository
from service.runtime import SessionConfig
from training.package import staging_folder

CPU = SessionConfig(providers=("CPUExecutionProvider",), intra_op_threads=1, inter_op_threads=1)


def refreshed(registry: Registry) -> Registry:
    """The registry after one refresh, as at start-up; run on a loop of its own, so that async tests (whose
    loop is running) can build one too."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(anyio.run, registry.refresh).result()
    return registry


def serving(models_dir: Path, default_model: str | None = None) -> Registry:
    """A registry that has loaded every package in `models_dir`."""
    return refreshed(Registry(Repository(models_dir), CPU, Metrics(), default_model))


def package_at(folder: Path) -> Package:
    """The package in `models/<name>/<version>/` folder, read and verified."""
    repository = Repository(folder.parent.parent)
    return repository.read(repository.scan(folder.parent.name).packages[folder.parent.name, int(folder.name)])


def publish(folder: Path, models_dir: Path) -> Path:
    """Publishes the package in `folder` (…/<name>/<version>) into `models_dir` the way `python -m training
    fit` does: written into a hidden staging folder beside its destination, then renamed into place."""
    name, version = folder.parent.name, int(folder.name)
    with staging_folder(models_dir, name, version) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
    return models_dir / name / str(version)
