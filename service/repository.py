"""What is on disk: the models/<name>/<version>/ package folders, and reading one package whole.

`scan()` only stats (it is what every poll runs, so unchanged packages are never re-hashed); `read()`
parses the manifest and checks every file against its sha256. The graphs are returned as the very bytes
that were hashed, so what serves is what was verified, however the folder changes afterwards. What serves
is service.registry's business; this module never loads a session.

Anyone who can write into the models folder can put anything there: symlink loops, folders nobody may
read, FIFOs, sockets, sparse files of terabytes. Neither function raises for any of them: an entry that
cannot be read breaks only the package it belongs to, with the reason, and a folder that cannot be listed
is reported by the scan. Sizes are checked with stat before a byte is read, and files are read in chunks."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.manifest import MANIFEST, NAME_PATTERN, VERSION_PATTERN, Manifest, PackageError, parse_manifest

# A manifest is a few KB (a thousand quantiles and a few thousand feature names fit in well under 1 MB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# The largest file a manifest may list; graphs are the largest. The autoencoders trained here are a few MB,
# a dense layer of 50,000 features into 512 units is 100 MB; each worker holds every graph it serves in
# memory, so a graph of gigabytes is refused before it is read.
MAX_FILE_BYTES = 256 * 1024 * 1024
# Files are hashed a chunk at a time: memory stays flat whatever a file's size.
CHUNK_BYTES = 1024 * 1024
# The label of the models folder itself among the folders a scan could not list.
ROOT = "."

Key = tuple[str, int]
# (file name, size, mtime in ns, inode) of every entry of the package folder: a copy, an edit or a rename
# into place changes it. An entry that cannot be stat'ed has size and mtime -1 and inode -errno.
Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class PackageFolder:
    name: str
    version: int
    path: Path
    fingerprint: Fingerprint
    problem: str | None = None
    """Why the folder itself cannot be read, when it cannot: the package is broken with this reason."""

    @property
    def key(self) -> Key:
        return self.name, self.version

    @property
    def label(self) -> str:
        """How messages and GET /models name the package: relative to the models folder."""
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Scan:
    """What one scan found: the package folders, and the folders it could not list with why, by their path
    relative to the models folder (ROOT for the folder itself, else a model name)."""

    packages: dict[Key, PackageFolder] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def listed(self, name: str) -> bool:
        """Whether the scan saw every version folder of `name`: only then is a version it missed gone."""
        return ROOT not in self.unreadable and name not in self.unreadable


@dataclass(frozen=True)
class Package:
    """A package read whole and verified: its manifest and its graphs' bytes by role."""

    manifest: Manifest
    graphs: dict[str, bytes]


class Repository:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def scan(self, only: str | None = None) -> Scan:
        """Every package folder (of model `only`, if given) with its fingerprint; stats, never reads files."""
        scan = Scan()
        try:
            names = _subfolders(self.models_dir, NAME_PATTERN)
        except OSError as exc:
            scan.unreadable[ROOT] = f"the models folder cannot be listed: {_why(exc)}"
            return scan
        for name, problem in names.items():
            if only is not None and name != only:
                continue
            try:
                if problem is not None:
                    raise problem
                versions = _subfolders(self.models_dir / name, VERSION_PATTERN)
            except OSError as exc:
                scan.unreadable[name] = f"{name} cannot be listed: {_why(exc)}"
                continue
            for version, problem in versions.items():
                package = _package_folder(self.models_dir / name / version, problem)
                if package is not None:
                    scan.packages[package.key] = package
        return scan

    def read(self, folder: PackageFolder) -> Package:
        """The manifest, validated against the folder it is in, and every file checked against its hash."""
        if folder.problem is not None:
            raise PackageError(folder.problem)
        raw = b"".join(_chunks(folder.path, MANIFEST, MAX_MANIFEST_BYTES))
        manifest = parse_manifest(_json(raw), folder.name, folder.version)
        unlisted = sorted({graph.file for graph in manifest.graphs.values()} - set(manifest.files))
        if unlisted:
            raise PackageError(f"graphs {unlisted} are not listed in the manifest's files")
        graph_files = {graph.file: role for role, graph in manifest.graphs.items()}
        graphs = {}
        for file, expected in manifest.files.items():
            digest, kept = hashlib.sha256(), []
            for chunk in _chunks(folder.path, file, MAX_FILE_BYTES):
                digest.update(chunk)
                if file in graph_files:
                    kept.append(chunk)
            if digest.hexdigest() != expected:
                raise PackageError(f"{file}: sha256 does not match the manifest")
            if file in graph_files:
                graphs[graph_files[file]] = b"".join(kept)
        return Package(manifest, graphs)


def _subfolders(folder: Path, pattern: re.Pattern[str]) -> dict[str, OSError | None]:
    """Entries whose names match that are folders, or whose kind cannot be told (a symlink loop, a link
    into a folder nobody may search), with that error; anything else (staging folders, stray files, FIFOs,
    dangling links) is not part of a package. Raises OSError when `folder` itself cannot be listed."""
    found: dict[str, OSError | None] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not pattern.fullmatch(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=True):
                        found[entry.name] = None
                except OSError as exc:  # is_dir is False for a dangling link, raises for a loop
                    found[entry.name] = exc
    except (FileNotFoundError, NotADirectoryError):
        return {}  # removed between two listings: the next scan sees the new state
    return dict(sorted(found.items()))


def _package_folder(path: Path, problem: OSError | None) -> PackageFolder | None:
    """The package folder at models/<name>/<version>, broken with its reason if it cannot be listed; None
    when it is gone."""
    name, version = path.parent.name, int(path.name)
    try:
        if problem is not None:
            raise problem
        return PackageFolder(name, version, path, _fingerprint(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        # The error is the fingerprint: the package is retried once the folder changes or becomes readable.
        reason = f"the package folder cannot be listed: {_why(exc)}"
        return PackageFolder(name, version, path, ((reason, -1, -1, -(exc.errno or 0)),), reason)


def _fingerprint(folder: Path) -> Fingerprint:
    entries = []
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError as exc:
                # Gone since the listing, a loop or a dangling link: reading the package says which, if the
                # manifest lists it, and a change of the entry changes the fingerprint.
                entries.append((entry.name, -1, -1, -(exc.errno or 0)))
            else:
                entries.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(sorted(entries))


def _chunks(folder: Path, file: str, limit: int) -> Iterator[bytes]:
    """The bytes of `file` in `folder`, a chunk at a time, once it is known to be a regular file inside the
    package of at most `limit` bytes."""
    # Files are named by the manifest, which a package's author controls: only plain names inside the folder.
    if "/" in file or "\\" in file or "\0" in file or file in ("", ".", ".."):
        raise PackageError(f"files: {file!r} is not a plain file name inside the package")
    path = folder / file
    _check(file, _stat(path, file), limit)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
        raise PackageError(f"{file} is a link that leaves the package")
    # O_NONBLOCK: should the file be swapped for a FIFO after the check, opening it does not wait for a writer.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(file, exc) from None
    with open(descriptor, "rb", buffering=0) as stream:
        _check(file, os.fstat(descriptor), limit)  # what was opened is what is read
        total = 0
        while chunk := stream.read(CHUNK_BYTES):
            total += len(chunk)
            if total > limit:  # it grew after the check
                raise PackageError(f"{file} is larger than {limit} bytes")
            yield chunk


def _stat(path: Path, file: str) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise _unreadable(file, exc) from None


def _check(file: str, info: os.stat_result, limit: int) -> None:
    # Opening a FIFO or a device would block or never end; only regular files are read.
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{file} is not a regular file")
    if info.st_size > limit:
        raise PackageError(f"{file} is larger than {limit} bytes")


def _unreadable(file: str, exc: OSError) -> PackageError:
    if isinstance(exc, FileNotFoundError):
        return PackageError(f"{file} is missing")
    return PackageError(f"{file} cannot be read: {_why(exc)}")


def _why(exc: OSError) -> str:
    """The error without its path: reasons name files relative to the models folder."""
    return exc.strerror or type(exc).__name__


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PackageError(f"{MANIFEST} is not valid JSON: {exc}") from None
