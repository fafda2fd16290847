"""The serving images' install, without Docker.

The cpu image's steps run here as they run in the image: docker/install-service.sh (the script its
Dockerfile stage RUNs) builds a fresh virtual environment, and the image's ENTRYPOINT starts the service
from it, with service/ alone beside it as in /app, against the repository's models. The gpu image's
pins are resolved for its Python and platform, since its base cannot be pulled here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from packaging.utils import canonicalize_name

from tests.service.servers import reported_port

from .tools import REPO, find_tool, parse_stages, pinned_version, read_pins

pytestmark = pytest.mark.slow  # builds a virtual environment, resolves the gpu pins

DOCKERFILE = (REPO / "Dockerfile").read_text()
PACKAGES = sorted(path.parent for path in REPO.glob("models/*/*/manifest.json") if path.parent.name.isdigit())
# The gpu image's Python: Ubuntu 24.04's, the release the CUDA base image is built on (test_dockerfile).
GPU_IMAGE_PYTHON = "3.12"
READY_WITHIN_S = 120


def image_python(image_arg: str) -> str:
    match = re.search(rf"^ARG {image_arg}=python:(\d+\.\d+)-slim$", DOCKERFILE, re.MULTILINE)
    assert match, f"ARG {image_arg} is not a python:X.Y-slim image"
    return match[1]


def free_port() -> int:
    """A port nothing listens on (the health check's failing case)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh environment per session, installed by the image's script (pip's cache speeds it up)."""
    version = image_python("PYTHON_IMAGE")
    python = find_tool(f"python{version}", f"the cpu image runs Python {version}; install it to test its install")
    venv = tmp_path_factory.mktemp("image") / "venv"
    result = subprocess.run(
        [str(REPO / "docker" / "install-service.sh"), "cpu", str(venv)],
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"docker/install-service.sh cpu failed:\n{result.stdout[-3000:]}{result.stderr}"
    return venv


@pytest.fixture(scope="module")
def service_url(image_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = tmp_path_factory.mktemp("app")
    shutil.copytree(REPO / "service", app / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "docker" / "healthcheck.py", app)
    (entrypoint,) = parse_stages(DOCKERFILE)["cpu"].args("ENTRYPOINT")
    env = {
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(app),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AE_HOST": "127.0.0.1",
        "AE_PORT": "0",  # a free one, which the log names
        "AE_GRPC_PORT": "0",  # gRPC is tested in tests/service/test_grpc.py
        "AE_MODELS_DIR": str(REPO / "models"),
    }
    log = app / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(json.loads(entrypoint), cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{reported_port(process, log, READY_WITHIN_S)}"
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the service exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/readyz not 200 within {READY_WITHIN_S} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_environment_holds_the_pins_and_nothing_else(image_venv: Path) -> None:
    freeze = subprocess.run(
        [str(image_venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    installed = {canonicalize_name(name): version for name, version in (line.split("==") for line in freeze.split())}
    pins = read_pins(REPO / "requirements" / "service-cpu.txt")
    assert installed == {name: pinned_version(pin) for name, pin in pins.items()}


@pytest.mark.e2e
def test_readyz_reports_every_committed_model_ready(service_url: str) -> None:
    assert PACKAGES, "no model packages under models/: the image would serve nothing"
    response = httpx.get(f"{service_url}/readyz")
    assert response.status_code == 200
    assert response.json()["models"] == {f"{p.parent.name}/{p.name}": "ready" for p in PACKAGES}


@pytest.mark.e2e
@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_score_agrees_with_onnxruntime(service_url: str, package: Path) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    preprocessing = manifest["preprocessing"]
    rng = np.random.default_rng(0)
    shape = (5, *manifest["input"]["shape"])
    rows = (rng.uniform(0, 1, shape) * preprocessing["scale"] + preprocessing["offset"]).astype(np.float32)
    scorer = ort.InferenceSession(package / manifest["graphs"]["scorer"]["file"], providers=["CPUExecutionProvider"])
    (expected,) = scorer.run(["score"], {"x": rows})

    response = httpx.post(
        f"{service_url}/models/{manifest['name']}/versions/{manifest['version']}/score",
        json={"inputs": rows.tolist()},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (manifest["name"], manifest["version"])
    np.testing.assert_allclose(body["scores"], expected, rtol=1e-5, atol=1e-7)
    assert body["threshold"] == manifest["score"]["threshold"]
    assert body["is_anomaly"] == [bool(score > body["threshold"]) for score in body["scores"]]


@pytest.mark.e2e
def test_docker_healthcheck_passes_when_ready_and_fails_when_down(service_url: str, image_venv: Path) -> None:
    def healthcheck(port: str) -> int:
        script = REPO / "docker" / "healthcheck.py"
        command = [str(image_venv / "bin" / "python"), str(script)]
        return subprocess.run(command, env={"AE_PORT": port}, capture_output=True, check=False).returncode

    assert healthcheck(service_url.rsplit(":", 1)[1]) == 0
    assert healthcheck(str(free_port())) == 1


def test_gpu_pins_install_from_wheels_on_the_gpu_image_python(tmp_path: Path) -> None:
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
        + ["--target", str(tmp_path), "--only-binary=:all:", "--implementation", "cp"]
        + ["--python-version", GPU_IMAGE_PYTHON, "--abi", f"cp{GPU_IMAGE_PYTHON.replace('.', '')}"]
        + [arg for platform in platforms for arg in ("--platform", platform)]
        + ["--requirement", str(REPO / "requirements" / "service-gpu.txt")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["install"]
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report}
    pins = read_pins(REPO / "requirements" / "service-gpu.txt")
    assert resolved == {name: pinned_version(pin) for name, pin in pins.items()}
