"""Which package a job runs: a package folder, a model folder (its highest version) or a name in a models
folder, read and verified by service.repository exactly as the service reads it."""

from __future__ import annotations

from pathlib import Path

import orjson

from service.batch.errors import BatchError
from service.manifest import MANIFEST, PackageError
from service.repository import Package, PackageFolder, Repository


def find_package(model: str, version: int | None, models_dir: Path) -> Package:
    path = Path(model)
    if (path / MANIFEST).is_file():
        if version is not None:
            raise BatchError(f"--model {model} is a package folder: it has one version, drop --version")
        return _read_folder(path)
    if path.is_dir():
        return _read_versioned(Repository(path.parent), path.name, version)
    return _read_versioned(Repository(models_dir), model, version)


def _read_versioned(repository: Repository, name: str, version: int | None) -> Package:
    found = {key[1]: folder for key, folder in repository.scan(only=name).packages.items()}
    where = repository.models_dir / name
    if not found:
        raise BatchError(f"no package of model {name!r} in {where}")
    chosen = max(found) if version is None else version
    if chosen not in found:
        raise BatchError(f"model {name!r} has no version {chosen} in {where}; it has {sorted(found)}")
    return _read(repository, found[chosen])


def _read_folder(path: Path) -> Package:
    # A package copied anywhere (a build artefact, a mounted volume) is read under the name and version its
    # manifest states: the folder's own name need not follow models/<name>/<version>.
    try:
        stated = orjson.loads((path / MANIFEST).read_bytes())
        name, version = str(stated["name"]), int(stated["version"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BatchError(f"{path / MANIFEST}: not a readable manifest ({exc})") from None
    return _read(Repository(path.parent), PackageFolder(name, version, path, ()))


def _read(repository: Repository, folder: PackageFolder) -> Package:
    try:
        return repository.read(folder)
    except PackageError as exc:
        raise BatchError(f"{folder.path}: {exc}") from None
