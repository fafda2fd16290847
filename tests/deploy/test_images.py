"""The images, built and run: the `cpu` and `train` targets, and the compose service as users start it.

Needs a Docker daemon: one that answers, or, as root with `dockerd` installed (`make system-deps`), one
these tests start. Elsewhere they skip, saying why. The base image is the Dockerfile's default when it is
here or can be pulled; without a registry, ../shared/containers/make-base-image.sh builds one from Debian's
packages. Images are built with the legacy builder (no registry-hosted frontend) and tagged as the compose
file names them; built layers stay cached, containers and networks are removed.

The compose service runs from a copy of the models in a temporary project folder (`--project-directory`),
so the train image can publish a package into its mount without touching the checkout.
"""

from __future__ import annotations

import decimal
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.servers import free_port

from .tools import REPO, find_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCKERFILE = (REPO / "Dockerfile").read_text()
BASE_IMAGE_SCRIPT = REPO.parent / "shared" / "containers" / "make-base-image.sh"
LOCAL_BASE_IMAGE = "local/python:3.11-bookworm"
CPU_IMAGE, TRAIN_IMAGE = "autoencoder-service:cpu", "autoencoder-service:train"
SERVICE = "autoencoder-cpu"
BUILD_TIMEOUT_S = 900
READY_WITHIN_S = 60
# The compose file's stop_grace_period: Docker kills what is still running after it.
GRACE_PERIOD_S = 45
APP_UID = 10001


def run(*command: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})}
    )


def checked(*command: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    result = run(*command, timeout=timeout, env=env)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def wait_for(condition: Any, within: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------
# The daemon, the base image and the images


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The docker client, with a daemon that answers it (started here when root may start one)."""
    client = shutil.which("docker")
    if client is None:
        pytest.skip("no Docker client: `make system-deps` installs Debian's docker.io")
    if run(client, "info").returncode == 0:
        return client
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip("no Docker daemon answers, and this user cannot start one (needs root and dockerd)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        # Its own session: the daemon outlives the tests, as one started by hand would.
        subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: run(client, "info").returncode == 0, 60, f"dockerd answering (its log: {log})", 1)
    return client


def default_image(arg: str) -> str:
    match = re.search(rf"^ARG {arg}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"the Dockerfile has no default for ARG {arg}"
    return match[1]


@pytest.fixture(scope="session")
def python_image(docker: str) -> str:
    """The Dockerfile's default base if it is here or can be pulled, else one from Debian's packages."""
    default = default_image("PYTHON_IMAGE")
    if run(docker, "image", "inspect", default).returncode == 0 or run(docker, "pull", default).returncode == 0:
        return default
    if not BASE_IMAGE_SCRIPT.exists():
        pytest.fail(f"{default} cannot be pulled, and there is no {BASE_IMAGE_SCRIPT} to build a base from Debian's")
    checked(str(BASE_IMAGE_SCRIPT), LOCAL_BASE_IMAGE, timeout=600)
    return LOCAL_BASE_IMAGE


def build(docker: str, python_image: str, target: str, tag: str, *args: str) -> None:
    checked(
        docker, "build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={python_image}",
        "--target", target, "--tag", tag, "--force-rm", *args, str(REPO),
        timeout=BUILD_TIMEOUT_S,
        env={"DOCKER_BUILDKIT": "0"},
    )  # fmt: skip


@pytest.fixture(scope="session")
def cpu_image(docker: str, python_image: str) -> str:
    build(docker, python_image, "cpu", CPU_IMAGE)
    return CPU_IMAGE


def torch_wheel_args() -> list[str]:
    """Hands the build this machine's torch wheel (docker/wheels/), or points pip at PyTorch's CPU index.

    `pip download --no-index` copies the pinned torch from the wheels pip is configured to find here (a
    CPU wheel on these machines); on a machine without one it fails, and the build takes torch from
    PyTorch's CPU index instead of PyPI's wheel with its CUDA libraries.
    """
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    (torch,) = [requirement for requirement in extra if requirement.startswith("torch==")]
    version = re.fullmatch(r"python:(\d+)\.(\d+)\S*|local/python:(\d+)\.(\d+)\S*", default_image("PYTHON_IMAGE"))
    assert version, "the train image's Python is not python:X.Y"
    major, minor = (group for group in version.groups() if group)
    platforms = [f"manylinux_2_{glibc}_x86_64" for glibc in range(36, 16, -1)] + ["manylinux2014_x86_64"]
    download = run(
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-index", "--only-binary=:all:",
        "--python-version", f"{major}.{minor}", "--implementation", "cp", "--abi", f"cp{major}{minor}",
        *[arg for platform in platforms for arg in ("--platform", platform)],
        "--dest", str(REPO / "docker" / "wheels"), torch,
        timeout=300,
    )  # fmt: skip
    return (
        [] if download.returncode == 0 else ["--build-arg", "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"]
    )


@pytest.fixture(scope="session")
def train_image(docker: str, python_image: str) -> str:
    build(docker, python_image, "train", TRAIN_IMAGE, *torch_wheel_args())
    return TRAIN_IMAGE


def inspect(docker: str, container: str) -> dict[str, Any]:
    (details,) = json.loads(checked(docker, "inspect", container))
    return dict(details)


def test_train_image_holds_torch_for_cpu_without_cuda_libraries(docker: str, train_image: str) -> None:
    probe = "import importlib.metadata as m, torch; print(torch.__version__, [d.name for d in m.distributions()])"
    output = checked(docker, "run", "--rm", "--network", "none", "--entrypoint", "python", train_image, "-c", probe)
    version, _, distributions = output.partition(" ")
    assert version.startswith("2.13.0"), version
    assert not [name for name in distributions.split("'") if name.lower().startswith("nvidia")]


# What the cpu image must not hold, and the byte-code it must: printed as JSON from inside the image.
CPU_IMAGE_PROBE = """
import importlib.util, json, pathlib, sysconfig
site = pathlib.Path(sysconfig.get_path("purelib"))
sources = [*pathlib.Path("/app/service").rglob("*.py"), *site.rglob("*.py")]
print(json.dumps({
    "importable": [name for name in ("pip", "setuptools", "torch", "training") if importlib.util.find_spec(name)],
    "tests": [str(path) for path in site.rglob("tests")],
    "uncompiled": [str(path) for path in sources if not pathlib.Path(importlib.util.cache_from_source(path)).exists()],
}))
"""


def test_cpu_image_holds_no_installer_tests_or_training_code_and_its_byte_code(docker: str, cpu_image: str) -> None:
    output = checked(
        docker, "run", "--rm", "--network", "none", "--entrypoint", "python", cpu_image, "-c", CPU_IMAGE_PROBE
    )
    found = json.loads(output)
    assert found == {"importable": [], "tests": [], "uncompiled": []}


# ---------------------------------------------------------------------------------------------------
# The compose service


@dataclass
class Compose:
    """`docker-compose --profile cpu` on the repository's compose file, in a project folder of its own."""

    command: list[str]
    env: dict[str, str]
    project: Path
    port: int
    ready_after_s: float = 0.0
    container: str = ""
    ip: str = ""
    docker: str = field(default="docker")

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return checked(*self.command, *args, timeout=timeout, env=self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_models(self) -> dict[str, str]:
        try:
            response = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return {}
        return dict(response.json().get("models", {})) if response.status_code == 200 else {}


@pytest.fixture(scope="module")
def compose(docker: str, cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    docker_compose = find_tool("docker-compose", "run `make system-deps` (Debian's docker-compose package)")
    project = tmp_path_factory.mktemp("compose")
    project.chmod(0o755)
    shutil.copytree(REPO / "models", project / "models", ignore=shutil.ignore_patterns(".tmp-*"))
    port = free_port()
    compose = Compose(
        command=[
            *(docker_compose, "--project-name", f"aetest{os.getpid()}", "--project-directory", str(project)),
            *("--file", str(REPO / "docker-compose.yml"), "--profile", "cpu"),
        ],
        env={"AE_PORT": str(port), "AE_GRPC_PORT": str(free_port())},
        project=project,
        port=port,
        docker=docker,
    )
    started = time.monotonic()
    try:
        compose("up", "--detach", "--no-build", SERVICE)
        compose.container = compose("ps", "-q", SERVICE).strip()
        logs = lambda: compose("logs", "--no-color", SERVICE)[-3000:]  # noqa: E731
        deadline = started + READY_WITHIN_S
        while not compose.ready_models():
            if time.monotonic() > deadline:
                pytest.fail(f"/readyz not 200 within {READY_WITHIN_S} s of `up`:\n{logs()}")
            time.sleep(0.25)
        compose.ready_after_s = time.monotonic() - started
        (network,) = inspect(docker, compose.container)["NetworkSettings"]["Networks"].values()
        compose.ip = network["IPAddress"]
        yield compose
    finally:
        run(*compose.command, "down", "--volumes", "--timeout", "10", env=compose.env, timeout=120)


def test_up_serves_on_ae_port_and_is_ready_within_a_bound(docker: str, compose: Compose) -> None:
    published = checked(docker, "port", compose.container, "8000/tcp").split()
    assert f"0.0.0.0:{compose.port}" in published
    assert compose.ready_after_s <= READY_WITHIN_S
    assert set(compose.ready_models().values()) == {"ready"}


def readme_requests() -> list[tuple[str, str]]:
    """The README's shell block under "From a shell": each curl command and the answer shown under it."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^From a shell:\n\n```\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, 'README.md has no "From a shell:" block'
    requests: list[tuple[str, str]] = []
    answering = False
    for line in block[1].replace("\\\n", " ").splitlines():
        if line.startswith("curl "):
            requests.append((line, ""))
            answering = False
        elif requests and line.startswith("# {") and not requests[-1][1]:
            requests[-1] = (requests[-1][0], line[1:].strip())
            answering = True
        elif answering and line.startswith("#"):
            requests[-1] = (requests[-1][0], requests[-1][1] + line[1:].strip())
        else:
            answering = False
    return requests


def agrees(documented: Any, actual: Any) -> bool:
    """Whether an answer matches the README's: its keys and values, numbers to the digits shown, `...` any."""
    if documented == "...":
        return True
    if isinstance(documented, dict):
        return isinstance(actual, dict) and all(
            key in actual and agrees(documented[key], actual[key]) for key in documented
        )
    if isinstance(documented, list):
        if documented == ["..."]:
            return isinstance(actual, list)
        return isinstance(actual, list) and len(actual) == len(documented) and all(map(agrees, documented, actual))
    if isinstance(documented, decimal.Decimal):
        exponent = documented.as_tuple().exponent
        assert isinstance(exponent, int)
        half_a_digit = decimal.Decimal(5).scaleb(exponent - 1)
        return isinstance(actual, float | int) and abs(decimal.Decimal(repr(actual)) - documented) <= half_a_digit
    return bool(documented == actual)


def test_readme_first_requests_answer_as_documented(compose: Compose) -> None:
    requests = readme_requests()
    assert len(requests) >= 4 and all("curl -s localhost:8000/" in command for command, _ in requests), requests
    for command, documented in requests:
        with_status = command.replace("curl -s localhost:8000/", f"curl -s -w '\\n%{{http_code}}' {compose.url}/")
        result = subprocess.run(["bash", "-c", with_status], cwd=REPO, capture_output=True, text=True, timeout=30)
        body, _, status = result.stdout.rpartition("\n")
        assert (result.returncode, status) == (0, "200"), f"{command}\n{result.stdout}{result.stderr}"
        answer = json.loads(body)
        if documented:
            expected = json.loads(documented.replace("...", '"..."'), parse_float=decimal.Decimal)
            assert agrees(expected, answer), f"{command}\nREADME: {documented}\nservice: {body}"


def test_healthcheck_turns_healthy(docker: str, compose: Compose) -> None:
    def health() -> str:
        return str(inspect(docker, compose.container)["State"]["Health"]["Status"])

    # The first check runs one interval (15 s) after the start; a failing one keeps it "starting".
    wait_for(lambda: health() == "healthy", 90, "the container's health check turning healthy", 1)


def test_runs_as_the_app_user_on_a_read_only_root_without_capabilities(docker: str, compose: Compose) -> None:
    host = inspect(docker, compose.container)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    status = dict(
        line.split(":\t", 1)
        for line in checked(docker, "exec", compose.container, "cat", "/proc/1/status").splitlines()
    )
    assert status["Uid"].split() == [str(APP_UID)] * 4 and status["Gid"].split() == [str(APP_UID)] * 4
    assert {
        name: int(status[name], 16) for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    } == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)
    mounts = {
        line.split()[1]: line.split()[3].split(",")
        for line in checked(docker, "exec", compose.container, "cat", "/proc/1/mounts").splitlines()
    }
    assert "ro" in mounts["/"] and "rw" in mounts["/tmp"]


def test_models_is_the_read_only_bind_mount(docker: str, compose: Compose) -> None:
    (mount,) = [m for m in inspect(docker, compose.container)["Mounts"] if m["Destination"] == "/models"]
    assert (mount["Type"], mount["Source"], mount["RW"]) == ("bind", str(compose.project / "models"), False)
    listed = checked(docker, "exec", compose.container, "ls", "/models").split()
    assert listed == sorted(path.name for path in (compose.project / "models").iterdir())


def test_package_trained_by_the_train_image_is_served_without_a_restart(
    docker: str, compose: Compose, train_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnxruntime as ort

    data = tmp_path_factory.mktemp("data")
    data.chmod(0o755)
    rows = np.random.default_rng(0).normal(size=(600, 6)).astype(np.float32)
    np.save(data / "rows.npy", rows)
    started = inspect(docker, compose.container)["State"]["StartedAt"]
    name = f"aetest-train-{os.getpid()}"
    try:
        checked(
            docker, "run", "--rm", "--name", name, "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
            "--volume", f"{data}:/data:ro", "--volume", f"{compose.project / 'models'}:/models", train_image,
            "fit", "--data", "/data/rows.npy", "--name", "tiny", "--epochs", "3", "--models-dir", "/models", "--quiet",
            timeout=600,
        )  # fmt: skip
    finally:
        run(docker, "rm", "--force", name)
    score = f"{compose.url}/models/tiny/score"

    def served_by_every_worker() -> bool:
        # Each worker polls the folder on its own clock, and each request comes on a new connection, which the
        # kernel gives to any worker: twenty answers in a row leave a worker without the model 2^-20 odds.
        return all(
            httpx.post(score, json={"inputs": rows[:1].tolist()}, timeout=30).status_code == 200 for _ in range(20)
        )

    wait_for(served_by_every_worker, 60, "the new package tiny/1 served by every worker")

    response = httpx.post(score, json={"inputs": rows[:5].tolist()}, timeout=30)

    assert response.status_code == 200, response.text
    package = compose.project / "models" / "tiny" / "1"
    manifest = json.loads((package / "manifest.json").read_text())
    scorer = ort.InferenceSession(package / manifest["graphs"]["scorer"]["file"], providers=["CPUExecutionProvider"])
    (expected,) = scorer.run(["score"], {"x": rows[:5]})
    np.testing.assert_allclose(response.json()["scores"], expected, rtol=1e-5, atol=1e-7)
    state = inspect(docker, compose.container)
    assert (state["State"]["StartedAt"], state["RestartCount"]) == (started, 0), "the service was restarted"


@dataclass
class Outcome:
    started: float
    ended: float
    result: str  # the HTTP status, or "refused" (never accepted), or the error of a request that was


def load(url: str, body: dict[str, Any], outcomes: list[Outcome], stopping: threading.Event) -> None:
    """Posts `body` again and again, each time on a new connection, until `stopping` is set."""
    timeout = httpx.Timeout(GRACE_PERIOD_S + 15, connect=5)
    with httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                result = str(client.post(url, json=body).status_code)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                result = "refused"
                time.sleep(0.05)
            except httpx.HTTPError as exc:
                result = f"{type(exc).__name__}: {exc}"
            outcomes.append(Outcome(started, time.monotonic(), result))


def test_stop_under_load_drains_every_request_in_flight(docker: str, compose: Compose) -> None:
    # The container's own address: Docker's proxy on the published port accepts connections it cannot pass on.
    url = f"http://{compose.ip}:8000/models/mnist-conv/score"
    body = {"inputs": np.random.default_rng(0).integers(0, 256, (16, 28, 28)).tolist()}
    outcomes: list[Outcome] = []
    stopping = threading.Event()
    clients = [threading.Thread(target=load, args=(url, body, outcomes, stopping)) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: len(outcomes) >= 40, 60, "40 requests answered before the stop")
        stop_at = time.monotonic()
        compose("stop", SERVICE, timeout=GRACE_PERIOD_S + 30)
        stopped_after_s = time.monotonic() - stop_at
    finally:
        stopping.set()
        for client in clients:
            client.join(timeout=GRACE_PERIOD_S + 30)

    failed = [
        o for o in outcomes if o.result not in ("200", "refused") or (o.result == "refused" and o.started < stop_at)
    ]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}"
    assert [o for o in outcomes if o.started < stop_at < o.ended], "no request was in flight at the stop"
    assert stopped_after_s < GRACE_PERIOD_S
    assert inspect(docker, compose.container)["State"]["ExitCode"] == 0, "not a drain: the service was killed"


def test_logs_carry_no_traceback(compose: Compose) -> None:
    logs = compose("logs", "--no-color", SERVICE)
    assert "Listening at" in logs
    assert "Traceback" not in logs, logs[-5000:]


# ---------------------------------------------------------------------------------------------------
# The gpu image, where a GPU is visible and its CUDA base can be pulled


def test_gpu_image_serves_every_model_on_cuda(docker: str, request: pytest.FixtureRequest) -> None:
    if shutil.which("nvidia-smi") is None or run("nvidia-smi").returncode != 0:
        pytest.skip("no GPU visible (nvidia-smi): the gpu image is built and started only where one is")
    cuda_image = default_image("CUDA_IMAGE")
    if run(docker, "image", "inspect", cuda_image).returncode != 0 and run(docker, "pull", cuda_image).returncode != 0:
        pytest.skip(f"{cuda_image} cannot be pulled here: the gpu image cannot be built")
    # The legacy builder builds every stage before the target: the cpu and train ones first, to reuse them.
    request.getfixturevalue("train_image")
    build(docker, request.getfixturevalue("python_image"), "gpu", "autoencoder-service:gpu", *torch_wheel_args())
    port = free_port()
    container = checked(
        docker, "run", "--detach", "--gpus", "all", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--publish", f"127.0.0.1:{port}:8000", "autoencoder-service:gpu",
    ).strip()  # fmt: skip
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 120, "the gpu image's /readyz answering 200")
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()["models"]
        assert models and {model["name"]: model["providers"][0] for model in models} == {
            model["name"]: "CUDAExecutionProvider" for model in models
        }
    finally:
        run(docker, "rm", "--force", container)
