"""deploy/kserve: the ServingRuntime and InferenceService validate against KServe's own CRD schemas
(vendored in tests/deploy/kserve/, checked against ../shared/kserve when it is there), refer to each
other, and start the service with arguments it accepts, on the folder KServe's storage initializer fills."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic_settings import CliApp

from service.settings import Settings

from .tools import REPO

KSERVE = REPO / "deploy" / "kserve"
SHARED_CRDS = REPO.parent / "shared" / "kserve"
VENDORED = json.loads(gzip.decompress((Path(__file__).parent / "kserve" / "schemas.json.gz").read_bytes()))
CRD_FILES = {
    "serving.kserve.io/v1alpha1/ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "serving.kserve.io/v1beta1/InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's files


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KSERVE / name).read_text())


def schema_of(document: dict[str, Any]) -> dict[str, Any]:
    return VENDORED[f"{document['apiVersion']}/{document['kind']}"]


@pytest.mark.slow  # validates against KServe's large CRD schemas
@pytest.mark.parametrize("manifest", ["servingruntime.yaml", "inferenceservice.yaml", "inferenceservice-grpc.yaml"])
def test_manifests_validate_against_the_crds(manifest: str) -> None:
    document = load(manifest)
    jsonschema.validate(document, schema_of(document))


def test_a_wrong_field_is_caught_by_the_schema() -> None:
    document = load("servingruntime.yaml")
    document["spec"]["protocolVersions"] = "v2"  # a string where the CRD wants a list
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema_of(document))


@pytest.mark.slow  # validates against KServe's large CRD schemas
@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="no ../shared/kserve to compare the vendored schemas with")
@pytest.mark.parametrize("key", sorted(CRD_FILES))
def test_the_vendored_schemas_are_kserves(key: str) -> None:
    version = key.split("/")[1]
    crd = yaml.safe_load((SHARED_CRDS / CRD_FILES[key]).read_text())
    [schema] = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    assert VENDORED[key] == schema


def test_the_inference_service_uses_the_runtime_over_v2() -> None:
    runtime, service = load("servingruntime.yaml"), load("inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats


def test_the_grpc_inference_service_reaches_the_runtimes_grpc_port() -> None:
    runtime, service = load("servingruntime.yaml"), load("inferenceservice-grpc.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "grpc-v2"
    [container] = runtime["spec"]["containers"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert model["ports"] == [{"name": "h2c", "containerPort": int(env["AE_GRPC_PORT"]), "protocol": "TCP"}]
    assert int(env["AE_GRPC_PORT"]) != container["ports"][0]["containerPort"]


def test_the_runtime_starts_the_service_on_kserves_folder_and_port(tmp_path: Path) -> None:
    [container] = load("servingruntime.yaml")["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--models-dir") + 1] == MOUNT
    settings = CliApp.run(Settings, cli_args=[str(tmp_path) if arg == MOUNT else arg for arg in args])
    assert (settings.host, settings.port) == ("0.0.0.0", container["ports"][0]["containerPort"])
    assert {probe["httpGet"]["path"] for probe in (container["readinessProbe"], container["livenessProbe"])} == {
        "/v2/health/ready",
        "/v2/health/live",
    }
