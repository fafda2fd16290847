"""The model repository: finds every models/<name>/<version>/ package, validates it against its manifest,
loads it, and answers which model a request means. A broken package is listed with its reason; the others
are served."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from service.errors import ServiceError
from service.manifest import MANIFEST, Manifest, PackageError, parse_manifest
from service.runtime import ModelRuntime, SessionConfig

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]*$")
Status = Literal["loading", "ready", "unavailable"]


@dataclass
class ModelEntry:
    """One package as the service sees it: where it is, what its manifest says, and whether it serves."""

    name: str
    version: int
    folder: Path
    status: Status = "loading"
    reason: str | None = None
    manifest: Manifest | None = None
    runtime: ModelRuntime | None = None

    def fail(self, reason: str) -> None:
        self.status, self.reason, self.runtime = "unavailable", reason, None
        logger.error("model %s/%s is unavailable: %s", self.name, self.version, reason)


class Repository:
    def __init__(self, models_dir: Path, sessions: SessionConfig, default_model: str | None = None) -> None:
        self.models_dir = models_dir
        self.sessions = sessions
        self._default_model = default_model
        self._entries: dict[str, dict[int, ModelEntry]] = {}
        self._loaded = False

    def discover(self) -> None:
        """Reads every manifest (cheap); the packages are verified and loaded by `load()`."""
        entries: dict[str, dict[int, ModelEntry]] = {}
        for folder in _package_folders(self.models_dir):
            entry = ModelEntry(name=folder.parent.name, version=int(folder.name), folder=folder)
            try:
                entry.manifest = parse_manifest(_read_json(folder / MANIFEST), entry.name, entry.version)
            except PackageError as exc:
                entry.fail(str(exc))
            entries.setdefault(entry.name, {})[entry.version] = entry
        self._entries = entries

    def load(self) -> None:
        """Verifies, loads and warms up every package `discover()` found readable, one after another."""
        for entry in self.entries():
            if entry.status == "loading":
                self._load(entry)
        self._loaded = True

    def _load(self, entry: ModelEntry) -> None:
        assert entry.manifest is not None
        try:
            _verify_files(entry.folder, entry.manifest)
            runtime = ModelRuntime(entry.manifest, entry.folder, self.sessions)
            runtime.load()
        except PackageError as exc:
            entry.fail(str(exc))
        except Exception as exc:  # a package must never take the service down with it
            logger.exception("loading %s failed", entry.folder)
            entry.fail(f"loading failed: {type(exc).__name__}: {exc}")
        else:
            entry.runtime, entry.status = runtime, "ready"
            logger.info("model %s/%s ready on %s", entry.name, entry.version, runtime.providers)

    @property
    def ready(self) -> bool:
        """True once `load()` has been through every package (the broken ones count as settled)."""
        return self._loaded

    def entries(self) -> list[ModelEntry]:
        return [self._entries[name][v] for name in sorted(self._entries) for v in sorted(self._entries[name])]

    @property
    def default_name(self) -> str | None:
        return self._default_model or next(iter(sorted(self._entries)), None)

    def default_version(self, name: str) -> int:
        return max(self._entries[name])

    def find(self, name: str | None = None, version: str | None = None) -> ModelEntry:
        """The entry a request means: the named model (else the default) at the version (else the highest)."""
        name = name or self.default_name
        if name is None:
            raise ServiceError(404, "model_not_found", f"no models are served from {self.models_dir}")
        versions = self._entries.get(name)
        if versions is None:
            raise ServiceError(404, "model_not_found", f"unknown model {name!r}; served: {sorted(self._entries)}")
        if version is None:
            return versions[max(versions)]
        entry = versions.get(int(version)) if VERSION_PATTERN.match(version) else None
        if entry is None:
            raise ServiceError(
                404, "version_not_found", f"model {name!r} has no version {version!r}; versions: {sorted(versions)}"
            )
        return entry

    def runtime(self, name: str | None = None, version: str | None = None) -> ModelRuntime:
        """The loaded runtime of `find(name, version)`; 503 while it loads or when its package is broken."""
        entry = self.find(name, version)
        if entry.runtime is None or not entry.runtime.ready:
            why = "is still loading" if entry.status == "loading" else f"is unavailable: {entry.reason}"
            raise ServiceError(503, "model_unavailable", f"model {entry.name}/{entry.version} {why}")
        return entry.runtime


def _package_folders(models_dir: Path) -> list[Path]:
    """models/<name>/<version>/ folders; anything else (staging folders, stray files) is not a package."""
    return sorted(
        version
        for name in models_dir.iterdir()
        if name.is_dir() and NAME_PATTERN.match(name.name)
        for version in name.iterdir()
        if version.is_dir() and VERSION_PATTERN.match(version.name)
    )


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise PackageError(f"{path.name} is missing") from None
    except orjson.JSONDecodeError as exc:
        raise PackageError(f"{path.name} is not valid JSON: {exc}") from None


def _verify_files(folder: Path, manifest: Manifest) -> None:
    unlisted = sorted({graph.file for graph in manifest.graphs.values()} - set(manifest.files))
    if unlisted:
        raise PackageError(f"graphs {unlisted} are not listed in the manifest's files")
    for file, expected in manifest.files.items():
        path = folder / file
        if not path.is_file():
            raise PackageError(f"{file} is missing")
        if _sha256(path) != expected:
            raise PackageError(f"{file}: sha256 does not match the manifest")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
