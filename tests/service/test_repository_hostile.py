"""A models folder someone careless or hostile has written to: symlink loops, folders nobody may read, FIFOs,
sockets, files that vanish, sparse files of gigabytes. Each breaks only its own package (a model's folder
that cannot be listed is reported beside the packages), and every other package loads, reloads and serves.

The tests run as root, whom permission bits do not stop: the cases of folders nobody may read run the
service's code in a process without the two capabilities that let root read and search anything
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that chmod 000 refuses it as it refuses anyone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.manifest import PackageError
from service.repository import MAX_FILE_BYTES, MAX_MANIFEST_BYTES, ROOT, Repository
from tests.service.reference import torch_reference
from tests.service.registries import publish, refreshed, serving
from tests.service.servers import ROOT as REPO
from tests.service.servers import running_process

GIB = 1024**3
MIB = 1024**2
LOOP = "Too many levels of symbolic links"
DENIED = "Permission denied"


def loop(path: Path) -> Path:
    """`path` replaced by a symlink to itself: stat and open fail with ELOOP."""
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)
    return path


def unix_socket(path: Path) -> None:
    # A socket's path is limited to about 100 bytes: bound under a short name, then renamed into place.
    with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX) as sock:
        sock.bind(f"{short}/s")
        os.rename(f"{short}/s", path)


def sparse(path: Path, size: int) -> None:
    """`path` replaced by a file of `size` bytes that takes no room on disk (`truncate -s`)."""
    path.unlink(missing_ok=True)
    with path.open("wb") as file:
        file.truncate(size)


def rehash(folder: Path, file: str, digest: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][file] = digest
    (folder / "manifest.json").write_text(json.dumps(manifest))


def zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    chunk = bytes(MIB)
    for _ in range(size // MIB):
        digest.update(chunk)
    return digest.hexdigest()


def state(registry: Any) -> dict[str, tuple[str, str | None]]:
    return {entry.label: (entry.status, entry.reason) for entry in registry.entries()}


def test_symlink_loops_break_only_their_own_entry(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "tab")
    loop(tmp_path / "looped")  # a model's folder
    loop(tmp_path / "tab" / "2")  # a version's folder
    loop(copy_package("tab", tmp_path, "inner") / "report.json")  # a file the manifest lists

    registry = serving(tmp_path)

    assert state(registry) == {
        "inner/1": ("unavailable", f"report.json cannot be read: {LOOP}"),
        "tab/1": ("ready", None),
        "tab/2": ("unavailable", f"the package folder cannot be listed: {LOOP}"),
    }
    assert registry.unreadable == {"looped": f"looped cannot be listed: {LOOP}"}
    assert registry.readiness() == (True, "ready")

    copy_package("tab-b", tmp_path, "tab", version=3)  # still reloads while the loops are there
    refreshed(registry)
    assert (registry.find("tab").version, registry.find("tab").status) == (3, "ready")


def test_fifos_and_sockets_are_never_opened(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "tab")
    manifest = copy_package("tab", tmp_path, "fifo") / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)  # opening it for reading would wait for a writer forever
    unix_socket(copy_package("tab", tmp_path, "sock") / "encoder.onnx")
    os.mkfifo(tmp_path / "tab" / "4")  # neither is a folder: not a package
    os.mkfifo(tmp_path / "pipe")

    registry = serving(tmp_path)

    assert state(registry) == {
        "fifo/1": ("unavailable", "manifest.json is not a regular file"),
        "sock/1": ("unavailable", "encoder.onnx is not a regular file"),
        "tab/1": ("ready", None),
    }
    assert registry.unreadable == {}


def test_a_file_gone_between_listing_and_stat_breaks_only_what_lists_it(tmp_path: Path, copy_package: Any) -> None:
    # A dangling link is what a file removed between the listing and its stat looks like to the scan.
    (copy_package("tab", tmp_path, "tab") / "notes.txt").symlink_to("removed.txt")
    listed = copy_package("tab", tmp_path, "listed")
    (listed / "report.json").unlink()
    (listed / "report.json").symlink_to("removed.json")

    registry = serving(tmp_path)

    assert state(registry) == {"listed/1": ("unavailable", "report.json is missing"), "tab/1": ("ready", None)}


def test_files_coming_and_going_never_hide_a_package_from_the_scan(tmp_path: Path, copy_package: Any) -> None:
    folder = copy_package("tab", tmp_path, "tab")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for i in range(20):
                (folder / f"tmp{i}").touch()
            for i in range(20):
                (folder / f"tmp{i}").unlink()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        scans = [Repository(tmp_path).scan() for _ in range(300)]
    finally:
        stop.set()
        thread.join()

    assert all(list(scan.packages) == [("tab", 1)] and not scan.unreadable for scan in scans)


def peak_bytes_of(call: Any) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("file", "size", "reason"),
    [
        ("manifest.json", GIB, f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"),
        ("encoder.onnx", MAX_FILE_BYTES + 1, f"encoder.onnx is larger than {MAX_FILE_BYTES} bytes"),
        ("report.json", 64 * GIB, f"report.json is larger than {MAX_FILE_BYTES} bytes"),
    ],
)
def test_a_huge_file_is_refused_by_its_size_before_it_is_read(
    tmp_path: Path, copy_package: Any, file: str, size: int, reason: str
) -> None:
    copy_package("tab", tmp_path, "tab")
    sparse(copy_package("tab", tmp_path, "huge") / file, size)
    repository = Repository(tmp_path)
    folder = repository.scan().packages["huge", 1]

    def read() -> None:
        with pytest.raises(PackageError) as refused:
            repository.read(folder)
        assert str(refused.value) == reason

    assert peak_bytes_of(read) < 4 * MIB  # a few chunks of the small files: nothing of the huge one
    assert state(serving(tmp_path)) == {"huge/1": ("unavailable", reason), "tab/1": ("ready", None)}


def test_a_large_file_is_hashed_a_chunk_at_a_time(tmp_path: Path, copy_package: Any) -> None:
    size = 64 * MIB
    folder = copy_package("tab", tmp_path, "tab")
    sparse(folder / "report.json", size)
    rehash(folder, "report.json", zeros_sha256(size))
    repository = Repository(tmp_path)
    package_folder = repository.scan().packages["tab", 1]

    assert peak_bytes_of(lambda: repository.read(package_folder)) < 8 * MIB
    assert state(serving(tmp_path)) == {"tab/1": ("ready", None)}


# --- folders nobody may read --------------------------------------------------------------------------------

# setpriv (util-linux) runs a command with capabilities taken away; root keeps every other one.
WITHOUT_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def unprivileged(command: list[str]) -> list[str]:
    """`command` as a process that permission bits stop, whoever runs the tests."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no way to take away root's right to read any folder")
    return [*WITHOUT_DAC, "--", *command]


@pytest.fixture
def locked(tmp_path: Path, copy_package: Any) -> Iterator[Path]:
    """A models folder with tab/1 healthy, and folders and a file nobody may read: the model folder `sealed`,
    the package folder tab/2 and the file locked/1/report.json."""
    models = tmp_path / "models"
    copy_package("tab", models, "tab")
    chmod = [copy_package("tab", models, "sealed").parent, copy_package("tab", models, "tab", version=2)]
    chmod.append(copy_package("tab", models, "locked") / "report.json")
    for path in chmod:
        path.chmod(0)
    yield models
    for path in chmod:
        path.chmod(0o755)  # so that the temporary folder can be removed by anyone


SCAN = """
import json, sys
from pathlib import Path
from tests.service.registries import serving

registry = serving(Path(sys.argv[1]))
entries = {entry.label: [entry.status, entry.reason] for entry in registry.entries()}
print(json.dumps({"entries": entries, "unreadable": registry.unreadable, "readiness": registry.readiness()}))
"""


def test_folders_nobody_may_read_break_only_their_own_entry(locked: Path) -> None:
    command = unprivileged([sys.executable, "-c", SCAN, str(locked)])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    assert json.loads(done.stdout.splitlines()[-1]) == {
        "entries": {
            "locked/1": ["unavailable", f"report.json cannot be read: {DENIED}"],
            "tab/1": ["ready", None],
            "tab/2": ["unavailable", f"the package folder cannot be listed: {DENIED}"],
        },
        "unreadable": {"sealed": f"sealed cannot be listed: {DENIED}"},
        "readiness": [True, "ready"],
    }


def test_an_unreadable_models_folder_keeps_what_serves(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path / "models", "tab")
    script = SCAN.replace(
        "registry = serving(Path(sys.argv[1]))",
        "registry = serving(Path(sys.argv[1]))\nPath(sys.argv[1]).chmod(0)\nrefreshed(registry)\nrefreshed(registry)",
    ).replace("import serving", "import refreshed, serving")
    command = unprivileged([sys.executable, "-c", script, str(tmp_path / "models")])
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    finally:
        (tmp_path / "models").chmod(0o755)
    assert done.returncode == 0, done.stderr

    assert json.loads(done.stdout.splitlines()[-1]) == {
        "entries": {"tab/1": ["ready", None]},  # two scans that saw nothing did not remove it
        "unreadable": {ROOT: f"the models folder cannot be listed: {DENIED}"},
        "readiness": [True, "ready"],
    }


# --- a real server ------------------------------------------------------------------------------------------


@contextmanager
def unprivileged_server(models: Path, log: Path) -> Iterator[httpx.Client]:
    """`python -m service` over `models`, polling it every 0.2 s, as a process that permission bits stop."""
    flags = ("--reload-interval", "0.2", "--workers", "1")
    with running_process(models, log, *flags, ready_within=60, wrap=unprivileged) as (_, client):
        yield client


def poll(condition: Callable[[], bool], within: float, log: Path, what: str) -> None:
    """Waits until `condition()` holds; fails with the server's log once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}\n{log.read_text()}")
        time.sleep(0.1)


@pytest.mark.e2e
def test_a_server_over_a_hostile_folder_starts_serves_and_reloads(
    locked: Path, copy_package: Any, trained: Path, tmp_path: Path, tabular_rows: np.ndarray
) -> None:
    loop(locked / "looped")
    loop(locked / "tab" / "3")
    fifo = copy_package("tab", locked, "fifo") / "manifest.json"
    fifo.unlink()
    os.mkfifo(fifo)
    unix_socket(copy_package("tab", locked, "sock") / "scorer.onnx")
    sparse(copy_package("tab", locked, "huge") / "manifest.json", GIB)
    body = {"inputs": tabular_rows.tolist()}

    log = tmp_path / "server.log"
    with unprivileged_server(locked, log) as server:
        listing = server.get("/models").json()
        assert {m["name"] + "/" + str(m["version"]): (m["status"], m["reason"]) for m in listing["models"]} == {
            "fifo/1": ("unavailable", "manifest.json is not a regular file"),
            "huge/1": ("unavailable", f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"),
            "locked/1": ("unavailable", f"report.json cannot be read: {DENIED}"),
            "sock/1": ("unavailable", "scorer.onnx is not a regular file"),
            "tab/1": ("ready", None),
            "tab/2": ("unavailable", f"the package folder cannot be listed: {DENIED}"),
            "tab/3": ("unavailable", f"the package folder cannot be listed: {LOOP}"),
        }
        assert listing["unreadable"] == {
            "looped": f"looped cannot be listed: {LOOP}",
            "sealed": f"sealed cannot be listed: {DENIED}",
        }
        scored = server.post("/score?model=tab", json=body)
        assert scored.status_code == 200, scored.text
        _, expected = torch_reference(trained / "tab" / "1", tabular_rows)
        np.testing.assert_allclose(scored.json()["scores"], expected, rtol=1e-4, atol=1e-6)

        scratch = copy_package("tab-b", tmp_path / "scratch", "tab", version=4)
        publish(scratch, locked)  # a new version is picked up while every hostile entry is still there
        poll(lambda: server.get("/models/tab").json()["default_version"] == 4, 60, log, "tab/4 serves")
        _, expected = torch_reference(trained / "tab-b" / "1", tabular_rows)
        np.testing.assert_allclose(server.post("/score?model=tab", json=body).json()["scores"], expected, rtol=1e-4)
