"""Discovery and validation of model packages: every way a package can break, and what is not a package."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.errors import ServiceError
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from tests.service.registries import CPU, serving

Breakage = Callable[[Path], None]


def edit_manifest(change: Callable[[dict[str, Any]], None]) -> Breakage:
    def breaks(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return breaks


def swap_encoder_for_decoder(folder: Path) -> None:
    shutil.copy(folder / "decoder.onnx", folder / "encoder.onnx")
    digest = hashlib.sha256((folder / "encoder.onnx").read_bytes()).hexdigest()
    edit_manifest(lambda m: m["files"].update({"encoder.onnx": digest}))(folder)


def latent_of_three(manifest: dict[str, Any]) -> None:
    manifest["architecture"]["latent_dim"] = 3
    manifest["latent"].update(dim=3, mean=[0.0] * 3, cov=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])


# id, source package, breakage, the reason the model is listed with
# fmt: off
BREAKAGES: list[tuple[str, str, Breakage, str]] = [
    ("graph missing", "tab", lambda f: (f / "decoder.onnx").unlink(), "decoder.onnx is missing"),
    ("other file missing", "tab", lambda f: (f / "report.json").unlink(), "report.json is missing"),
    ("hash mismatch", "tab", lambda f: (f / "report.json").write_text("{}"),
     "report.json: sha256 does not match the manifest"),
    ("manifest missing", "tab", lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
    ("manifest not JSON", "tab", lambda f: (f / "manifest.json").write_text("{"),
     "manifest.json is not valid JSON: unexpected end of data: line 1 column 2 (char 1)"),
    ("format version 2", "tab", edit_manifest(lambda m: m.update(format_version=2)), "format_version 2 is not 1"),
    ("names another model", "tab", edit_manifest(lambda m: m.update(name="other")),
     "manifest names other/1, but the package lives in pkg/1"),
    ("field missing", "tab", edit_manifest(lambda m: m.pop("score")), "manifest.json: score: Field required"),
    ("latent sizes disagree", "tab", edit_manifest(lambda m: m["architecture"].update(latent_dim=7)),
     "manifest.json: manifest: Value error, architecture.latent_dim 7 != latent.dim 2"),
    ("graph not hashed", "tab", edit_manifest(lambda m: m["files"].pop("scorer.onnx")),
     "graphs ['scorer.onnx'] are not listed in the manifest's files"),
    ("latent size disagrees with the graphs", "tab", edit_manifest(latent_of_three),
     "encoder.onnx: z has shape ['batch', 2]; the manifest implies ['batch', 3] (batch dynamic)"),
    ("input shape disagrees with the graphs", "conv", edit_manifest(lambda m: m["input"].update(shape=[8, 9])),
     "encoder.onnx: x has shape ['batch', 8, 8]; the manifest implies ['batch', 8, 9] (batch dynamic)"),
    ("graphs swapped", "tab", swap_encoder_for_decoder,
     "encoder.onnx: inputs/outputs ['z']/['x_hat'] (manifest: ['x']/['z']), the format requires ['x']/['z']"),
]
# fmt: on


@pytest.mark.parametrize(("source", "breakage", "reason"), [pytest.param(*case[1:], id=case[0]) for case in BREAKAGES])
def test_broken_package_is_unavailable_with_its_reason(
    tmp_path: Path, copy_package: Any, source: str, breakage: Breakage, reason: str
) -> None:
    breakage(copy_package(source, tmp_path, "pkg"))
    copy_package("tab", tmp_path, "healthy")

    repository = serving(tmp_path)

    broken, healthy = repository.find("pkg"), repository.find("healthy")
    assert (broken.status, broken.reason, broken.runtime) == ("unavailable", reason, None)
    assert healthy.status == "ready"
    assert repository.readiness() == (True, "ready")


def test_only_complete_packages_are_discovered(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "tab", version=1)
    copy_package("tab", tmp_path, "tab", version=3)
    for stray in ("tab/.tmp-4-x1y2", "tab/latest", "tab/0", "tab/07", "Upper/1", ".hidden/1"):
        (tmp_path / stray).mkdir(parents=True)
    (tmp_path / "README.md").write_text("not a package")

    repository = serving(tmp_path)

    assert [(e.name, e.version, e.status) for e in repository.entries()] == [("tab", 1, "ready"), ("tab", 3, "ready")]
    assert repository.find("tab").version == 3


def test_default_model_is_the_setting_else_the_first_name(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "b-model")
    copy_package("tab", tmp_path, "a-model")
    assert serving(tmp_path).default_name == "a-model"
    assert serving(tmp_path, default_model="b-model").find().name == "b-model"


@pytest.mark.anyio
async def test_not_ready_before_load(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "tab")
    registry = Registry(Repository(tmp_path), CPU, Metrics())
    await registry.discover()
    assert registry.readiness() == (False, "still loading: ['tab/1']")
    assert registry.find("tab").status == "loading"


def test_files_outside_the_package_and_special_files_are_refused(tmp_path: Path, copy_package: Any) -> None:
    (tmp_path / "secret").write_text("not yours")
    digest = hashlib.sha256(b"not yours").hexdigest()
    edit_manifest(lambda m: m["files"].update({"../../secret": digest}))(copy_package("tab", tmp_path, "escape"))
    fifo = copy_package("tab", tmp_path, "fifo")
    (fifo / "report.json").unlink()
    os.mkfifo(fifo / "report.json")

    registry = serving(tmp_path)

    assert registry.find("escape").reason == "files: '../../secret' is not a plain file name inside the package"
    assert registry.find("fifo").reason == "report.json is not a regular file"


def test_a_link_that_leaves_the_package_is_refused(tmp_path: Path, copy_package: Any) -> None:
    folder = copy_package("tab", tmp_path, "linked")
    outside = tmp_path / "report.json"
    shutil.move(folder / "report.json", outside)
    (folder / "report.json").symlink_to(outside)

    assert serving(tmp_path).find("linked").reason == "report.json is a link that leaves the package"


def test_reasons_name_packages_relative_to_the_models_folder(tmp_path: Path, copy_package: Any) -> None:
    (copy_package("tab", tmp_path, "pkg") / "scorer.onnx").write_bytes(b"garbage")
    edit_manifest(lambda m: m["files"].update({"scorer.onnx": hashlib.sha256(b"garbage").hexdigest()}))(
        tmp_path / "pkg" / "1"
    )

    reason = serving(tmp_path).find("pkg").reason

    assert reason is not None and reason.startswith("scorer.onnx: onnxruntime cannot load it")
    assert str(tmp_path) not in reason


def test_names_and_versions_are_matched_whole(tmp_path: Path, copy_package: Any) -> None:
    copy_package("tab", tmp_path, "tab")
    shutil.copytree(tmp_path / "tab", tmp_path / "tab\n")  # `$` matches before a final newline; fullmatch not
    shutil.copytree(tmp_path / "tab" / "1", tmp_path / "tab" / "2\n")

    registry = serving(tmp_path)

    assert [entry.label for entry in registry.entries()] == ["tab/1"]
    with pytest.raises(ServiceError) as newline:
        registry.find("tab", "1\n")
    assert (newline.value.status, newline.value.code) == (404, "version_not_found")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models/tab/versions/1%0A"),
        ("POST", "/models/tab/versions/1%0A/score"),
        ("GET", "/v2/models/tab/versions/1%0A/ready"),
        ("POST", "/v2/models/tab/versions/1%0A/infer"),
    ],
)
async def test_a_version_with_a_trailing_newline_is_not_found(client: Any, method: str, path: str) -> None:
    response = await client.request(method, path, json={"inputs": [[0.0] * 5]})

    assert response.status_code == 404
    error = response.json()["error"]
    message = "model 'tab' has no version '1\\n'; versions: [1, 2]"
    assert error == (message if path.startswith("/v2") else {"code": "version_not_found", "message": message})
