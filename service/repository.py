"""What is on disk: the models/<name>/<version>/ package folders, and reading one package whole.

`scan()` only stats (it is what every poll runs, so unchanged packages are never re-hashed); `read()`
parses the manifest and checks every file against its sha256. The graphs are returned as the very bytes
that were hashed, so what serves is what was verified, however the folder changes afterwards. What serves
is service.registry's business; this module never loads a session."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.manifest import MANIFEST, Manifest, PackageError, parse_manifest

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
# A manifest or file larger than this is not a package anyone wrote (the manifest is a few KB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

Key = tuple[str, int]
# (file name, size, mtime in ns, inode) of every entry of the package folder: a copy, an edit or a rename
# into place changes it.
Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class PackageFolder:
    name: str
    version: int
    path: Path
    fingerprint: Fingerprint

    @property
    def key(self) -> Key:
        return self.name, self.version

    @property
    def label(self) -> str:
        """How messages and GET /models name the package: relative to the models folder."""
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Package:
    """A package read whole and verified: its manifest and its graphs' bytes by role."""

    manifest: Manifest
    graphs: dict[str, bytes]


class Repository:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def scan(self, only: str | None = None) -> dict[Key, PackageFolder]:
        """Every package folder (of model `only`, if given) with its fingerprint; stats, never reads files."""
        found = {}
        for name in _subfolders(self.models_dir, NAME_PATTERN):
            if only is not None and name.name != only:
                continue
            for version in _subfolders(name, VERSION_PATTERN):
                fingerprint = _fingerprint(version)
                if fingerprint is not None:
                    package = PackageFolder(name.name, int(version.name), version, fingerprint)
                    found[package.key] = package
        return found

    def read(self, folder: PackageFolder) -> Package:
        """The manifest, validated against the folder it is in, and every file checked against its hash."""
        manifest = parse_manifest(_read_json(folder.path / MANIFEST), folder.name, folder.version)
        unlisted = sorted({graph.file for graph in manifest.graphs.values()} - set(manifest.files))
        if unlisted:
            raise PackageError(f"graphs {unlisted} are not listed in the manifest's files")
        graph_files = {graph.file: role for role, graph in manifest.graphs.items()}
        graphs = {}
        for file, expected in manifest.files.items():
            data = _read_file(folder.path, file)
            if hashlib.sha256(data).hexdigest() != expected:
                raise PackageError(f"{file}: sha256 does not match the manifest")
            if file in graph_files:
                graphs[graph_files[file]] = data
        return Package(manifest, graphs)


def _subfolders(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Subfolders whose names match; anything else (staging folders, stray files) is not part of a package."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed between two listings: the next scan sees the new state
    return sorted(Path(e.path) for e in entries if pattern.match(e.name) and e.is_dir(follow_symlinks=True))


def _fingerprint(folder: Path) -> Fingerprint | None:
    try:
        entries = []
        for entry in os.scandir(folder):
            info = entry.stat(follow_symlinks=True)
            entries.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    except FileNotFoundError:
        return None
    return tuple(sorted(entries))


def _read_file(folder: Path, file: str) -> bytes:
    # Files are named by the manifest, which a package's author controls: only plain names inside the folder.
    if "/" in file or "\\" in file or file in ("", ".", ".."):
        raise PackageError(f"files: {file!r} is not a plain file name inside the package")
    path = folder / file
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PackageError(f"{file} is missing") from None
    if path.resolve().parent != folder.resolve():
        raise PackageError(f"{file} is a link that leaves the package")
    # Opening a FIFO or a device would block or never end; only regular files are read.
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{file} is not a regular file")
    return path.read_bytes()


def _read_json(path: Path) -> Any:
    data = _read_file(path.parent, path.name)
    if len(data) > MAX_MANIFEST_BYTES:
        raise PackageError(f"{path.name} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PackageError(f"{path.name} is not valid JSON: {exc}") from None
