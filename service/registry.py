"""What serves: the live runtimes, one per package version, and which version answers a request.

Every change goes the same way, whether a poll found it or the repository API asked for it: read and verify
the package, load and warm up its sessions (in a thread, off the event loop), then swap it in on the event
loop, where requests pick their runtime. A runtime that is replaced or whose folder went is retired: it
takes no new requests, and closes once the ones it lent itself to have finished. A package that fails to
load never replaces what serves. All state changes on the event loop, so requests see one consistent view,
and one change at a time: a load or unload through the API waits for the change before it, and answers
with the state it made itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

import anyio
from anyio import to_thread

from service.errors import ServiceError
from service.manifest import VERSION_PATTERN, Manifest, PackageError
from service.metrics import UNKNOWN_MODEL, Metrics
from service.repository import ROOT, Fingerprint, Key, PackageFolder, Repository, Scan
from service.runtime import ModelRuntime, SessionConfig

logger = logging.getLogger(__name__)

Status = Literal["loading", "ready", "unavailable", "unloaded"]


@dataclass
class Entry:
    """One package version as the service sees it. `runtime` is what serves it (possibly an older copy of
    the folder than `fingerprint`, the copy last tried, when that copy failed to load)."""

    name: str
    version: int
    status: Status = "loading"
    reason: str | None = None
    manifest: Manifest | None = None
    runtime: ModelRuntime | None = None
    fingerprint: Fingerprint | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def serving(self) -> bool:
        return self.runtime is not None and self.runtime.ready


@dataclass(frozen=True)
class _Loaded:
    runtime: ModelRuntime


@dataclass(frozen=True)
class _Failed:
    reason: str
    manifest: Manifest | None


class Registry:
    def __init__(
        self, repository: Repository, sessions: SessionConfig, metrics: Metrics, default_model: str | None = None
    ) -> None:
        self.repository = repository
        self.sessions = sessions
        self.metrics = metrics
        self._default_model = default_model
        self._entries: dict[str, dict[int, Entry]] = {}
        self._unloaded: set[str] = set()
        self._settled = False
        self._missing: set[Key] = set()  # missing from the last scan, removed if missing from the next
        self._unreadable: dict[str, str] = {}  # folders the last scan could not list, with why
        self._lock = anyio.Lock()

    # --- what serves -------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        return [self._entries[name][v] for name in sorted(self._entries) for v in sorted(self._entries[name])]

    @property
    def default_name(self) -> str | None:
        return self._default_model or next(iter(sorted(self._entries)), None)

    def metric_label(self, name: str | None) -> str:
        """The model label a request is counted under: its model if it exists, else one label for all others."""
        name = name or self.default_name
        return name if name in self._entries else UNKNOWN_MODEL

    def default_version(self, name: str) -> int | None:
        """The highest version that serves; None when none does."""
        serving = [version for version, entry in self._entries.get(name, {}).items() if entry.serving]
        return max(serving, default=None)

    def find(self, name: str | None = None, version: str | None = None) -> Entry:
        """The entry a request means: the named model (else the default) at the version (else the default)."""
        name = name or self.default_name
        if name is None:
            raise ServiceError(404, "model_not_found", "no models are served")
        versions = self._entries.get(name)
        if not versions:
            raise ServiceError(404, "model_not_found", f"unknown model {name!r}; served: {sorted(self._entries)}")
        if version is None:
            return versions[self.default_version(name) or max(versions)]
        entry = versions.get(int(version)) if VERSION_PATTERN.fullmatch(version) else None
        if entry is None:
            raise ServiceError(
                404,
                "version_not_found",
                f"model {name!r} has no version {version[:40]!r}; versions: {sorted(versions)}",
            )
        return entry

    def runtime(self, name: str | None = None, version: str | None = None) -> ModelRuntime:
        """The serving runtime of `find(name, version)`; 503 while it loads, is unloaded or is broken."""
        entry = self.find(name, version)
        if entry.runtime is None or not entry.runtime.ready:
            why = {
                "loading": "is still loading",
                "unloaded": f"is unloaded; POST /v2/repository/models/{entry.name}/load serves it again",
            }.get(entry.status, f"is unavailable: {entry.reason}")
            raise ServiceError(503, "model_unavailable", f"model {entry.label} {why}")
        return entry.runtime

    @contextmanager
    def lease(self, name: str | None = None, version: str | None = None) -> Iterator[ModelRuntime]:
        """The runtime for one request, kept open until the request is done with it."""
        runtime = self.runtime(name, version)
        runtime.acquire()
        try:
            yield runtime
        finally:
            runtime.release()

    @property
    def unreadable(self) -> dict[str, str]:
        """The folders the last scan could not list (ROOT for the models folder, else a model's folder), with
        why; the packages they hold keep serving as they were."""
        return dict(self._unreadable)

    @property
    def settled(self) -> bool:
        """Whether the packages found at start-up have each been loaded or found broken."""
        return self._settled

    def readiness(self) -> tuple[bool, str]:
        """Ready once the packages found at start-up have each been loaded (or found broken) and one serves."""
        if not self._settled:
            loading = [entry.label for entry in self.entries() if entry.status == "loading"]
            return False, f"still loading: {loading}" if loading else "the models folder has not been scanned yet"
        if not any(entry.serving for entry in self.entries()):
            if ROOT in self._unreadable:
                return False, f"no model serves: {self._unreadable[ROOT]}"
            return False, "no model serves: every package is broken, unloaded or gone"
        return True, "ready"

    # --- changes -----------------------------------------------------------------------------------------

    async def poll(self, interval: float) -> None:
        """Refreshes every `interval` seconds, forever; a failing refresh is logged and the next one tried."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                logger.exception("polling the models folder failed; serving what was loaded")

    async def discover(self) -> None:
        """Lists the packages in the folder as loading, without loading them (`refresh` does): requests and
        readiness then name what is coming from the start."""
        async with self._lock:
            scan = await self._scan(None)
            self._add_pending(scan)
            self._note_unreadable(scan, None)

    async def refresh(self, only: str | None = None) -> None:
        """Brings what serves in line with the folder: loads new and changed packages, retires removed ones.
        Models unloaded through the API are left alone unless `only` names them."""
        async with self._lock:
            await self._refresh(only)

    async def _refresh(self, only: str | None) -> None:
        scan = await self._scan(only)
        self._add_pending(scan)
        self._note_unreadable(scan, only)
        # `training fit --replace` moves the old folder aside and the new one in: a scan can fall between
        # the two renames. So a folder goes only when two scans in a row miss it.
        gone = set(self._gone(scan, only))
        for key in gone & self._missing:
            self._remove(key)
        scanned = {key for key in self._missing if only is None or key[0] == only}
        self._missing = (self._missing - scanned) | (gone - self._missing)
        for folder in scan.packages.values():
            if folder.name in self._unloaded:
                continue
            if self._entries[folder.name][folder.version].fingerprint != folder.fingerprint:
                outcome = await to_thread.run_sync(self._prepare, folder, abandon_on_cancel=True)
                self._install(folder, outcome)
        self._settled = True

    async def unload(self, name: str) -> list[Entry]:
        """Retires every version of `name`; it stays unloaded across polls until `load(name)`."""
        async with self._lock:
            versions = self._entries.get(name)
            if not versions:
                raise ServiceError(404, "model_not_found", f"unknown model {name!r}; known: {sorted(self._entries)}")
            self._unloaded.add(name)
            for entry in versions.values():
                if entry.runtime is not None:
                    entry.runtime.retire()
                entry.status, entry.reason, entry.runtime, entry.fingerprint = "unloaded", None, None, None
            self._publish_default(name)
            logger.info("model %s unloaded through the repository API", name)
            return list(versions.values())

    async def load(self, name: str) -> list[Entry]:
        """Rescans `name` and serves what can be served; the entries, once at least one version serves."""
        # Under the lock from the rescan to the answer: an unload between the two would fail a healthy load.
        async with self._lock:
            self._unloaded.discard(name)
            await self._refresh(only=name)
            versions = self._entries.get(name, {})
            unreadable = [self._unreadable[folder] for folder in (ROOT, name) if folder in self._unreadable]
            if not versions and not unreadable:
                raise ServiceError(404, "model_not_found", f"no package of model {name!r} in the models folder")
            if self.default_version(name) is None:
                reasons = unreadable + [f"{entry.label}: {entry.reason or entry.status}" for entry in versions.values()]
                raise ServiceError(400, "load_failed", f"no version of {name!r} could be loaded: {'; '.join(reasons)}")
            return list(versions.values())

    async def _scan(self, only: str | None) -> Scan:
        scan = await to_thread.run_sync(self.repository.scan, only)
        for folder, why in scan.unreadable.items():
            if self._unreadable.get(folder) != why:  # once, not at every poll
                logger.error("%s; the packages it holds keep serving as they were", why)
        return scan

    def _note_unreadable(self, scan: Scan, only: str | None) -> None:
        if only is None:
            self._unreadable = dict(scan.unreadable)
        else:
            for folder in (ROOT, only):
                self._unreadable.pop(folder, None)
            self._unreadable.update(scan.unreadable)

    def _add_pending(self, scan: Scan) -> None:
        for name, version in scan.packages:
            if name not in self._unloaded:
                self._entries.setdefault(name, {}).setdefault(version, Entry(name, version))

    def _gone(self, scan: Scan, only: str | None) -> list[Key]:
        """Entries the scan missed, in folders it listed: one it could not list says nothing of them."""
        return [
            entry_key
            for entry in self.entries()
            if (only is None or entry.name == only)
            and scan.listed(entry.name)
            and (entry_key := (entry.name, entry.version)) not in scan.packages
        ]

    def _prepare(self, folder: PackageFolder) -> _Loaded | _Failed:
        """Reads, verifies, loads and warms up one package (in a worker thread)."""
        manifest = None
        try:
            package = self.repository.read(folder)
            manifest = package.manifest
            runtime = ModelRuntime(package, self.sessions, self.metrics)
            runtime.load()
        except PackageError as exc:
            return _Failed(str(exc), manifest)
        except Exception as exc:  # a package must never take the service down with it
            logger.exception("loading %s failed", folder.label)
            return _Failed(f"loading failed: {type(exc).__name__}: {exc}", manifest)
        return _Loaded(runtime)

    def _install(self, folder: PackageFolder, outcome: _Loaded | _Failed) -> None:
        entry = self._entries[folder.name][folder.version]
        entry.fingerprint = folder.fingerprint
        if isinstance(outcome, _Loaded):
            previous, entry.runtime = entry.runtime, outcome.runtime
            entry.status, entry.reason, entry.manifest = "ready", None, outcome.runtime.manifest
            if previous is not None:
                previous.retire()
            self.metrics.loads.labels(folder.name, str(folder.version), "loaded").inc()
            logger.info("model %s ready on %s", folder.label, outcome.runtime.providers)
        else:
            if entry.serving:
                entry.reason = f"a changed copy failed to load, the previous one still serves: {outcome.reason}"
            else:
                entry.status, entry.reason, entry.manifest = "unavailable", outcome.reason, outcome.manifest
            self.metrics.loads.labels(folder.name, str(folder.version), "failed").inc()
            logger.error("model %s cannot be loaded: %s", folder.label, outcome.reason)
        self._publish_default(folder.name)

    def _remove(self, key: Key) -> None:
        name, version = key
        entry = self._entries[name].pop(version)
        if entry.runtime is not None:
            entry.runtime.retire()
        if not self._entries[name]:
            del self._entries[name]
        logger.info("model %s removed from the models folder", entry.label)
        self._publish_default(name)

    def _publish_default(self, name: str) -> None:
        version = self.default_version(name)
        if name in self._entries:
            self.metrics.default_version.labels(name).set(version or 0)
        else:
            with suppress(KeyError):  # never published: it went in the scan that found it
                self.metrics.default_version.remove(name)
