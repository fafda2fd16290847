"""Writing model packages atomically: a temporary folder beside the destination, renamed into place."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.manifest import MANIFEST, NAME_PATTERN
from training.data import file_sha256
from training.errors import DataError


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise DataError(f"model name {name!r} must match {NAME_PATTERN.pattern} (lower case, digits, . _ -)")
    return name


def existing_versions(models_dir: Path, name: str) -> list[int]:
    folder = models_dir / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def choose_version(models_dir: Path, name: str, requested: int | None, replace: bool) -> int:
    versions = existing_versions(models_dir, name)
    if requested is None:
        return (versions[-1] + 1) if versions else 1
    if requested < 1:
        raise DataError(f"--version must be a positive integer, got {requested}")
    if requested in versions and not replace:
        raise DataError(f"{models_dir / name / str(requested)} exists; pass --replace to overwrite it")
    return requested


@contextmanager
def staging_folder(models_dir: Path, name: str, version: int) -> Iterator[Path]:
    """Yields an empty folder to write the package into; renames it into place only if the block succeeds.

    On any failure, an interrupt included, the temporary folder is removed and `models/` is unchanged.
    """
    parent = models_dir / name
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent))
    try:
        yield staging
        _readable_by_all(staging)
        _move_into_place(staging, parent / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _readable_by_all(folder: Path) -> None:
    # mkdtemp makes the folder 0700 and the umask may narrow the files: a service running as another user (a
    # container's, a Kubernetes pod's) must read the package, so folders 0755 and files 0644, whatever the umask.
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _move_into_place(staging: Path, destination: Path) -> None:
    if destination.exists():
        # Move the old package aside first, so the destination is never half old, half new.
        retired = Path(tempfile.mkdtemp(prefix=f".old-{destination.name}-", dir=destination.parent))
        destination.rename(retired / "package")
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(destination)


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        path.name: file_sha256(path) for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
