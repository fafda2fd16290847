"""deploy/kubernetes: both kustomizations render to objects valid for Kubernetes, wired to each other.

kubectl is not needed: `render` follows the few kustomize features the manifests use (resources, images,
inline JSON patches) and fails on any other, so a new feature needs a line here rather than going
unchecked. kubernetes-validate carries the Kubernetes JSON schemas, so this runs offline.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .tools import REPO

KUSTOMIZE = REPO / "deploy" / "kubernetes"
VARIANTS = ["base", "models-pvc", "grpc-probes"]
# The oldest Kubernetes still common on managed GPU clusters, and the newest schema available.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
Object = dict[str, Any]


def add(document: Object, path: str, value: Any, replace: bool = False) -> None:
    """A JSON patch `add`, or with `replace` its `replace` (RFC 6902): the operations the kustomizations use."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    target: Any = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list) and not replace:
        target.insert(len(target) if last == "-" else int(last), value)
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        assert not replace or last in target, f"replace {path}: nothing there to replace"
        target[last] = value


def containers(objects: list[Object]) -> list[Object]:
    return [c for o in objects for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]


def matches(document: Object, target: dict[str, str]) -> bool:
    return all(
        (document["kind"] if key == "kind" else document["metadata"][key]) == value for key, value in target.items()
    )


def render(directory: Path) -> list[Object]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "images", "patches"}
    assert not unsupported, f"{directory}: teach render() {sorted(unsupported)}"
    objects: list[Object] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        objects += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for image in kustomization.get("images", []):
        for container in containers(objects):
            name = container["image"].partition(":")[0]
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in kustomization.get("patches", []):
        targets = [o for o in objects if matches(o, patch["target"])]
        assert len(targets) == 1, f"{directory}: patch target {patch['target']} matches {len(targets)} objects"
        for operation in yaml.safe_load(patch["patch"]):
            assert operation["op"] in ("add", "replace"), f"{directory}: teach render() the {operation['op']} operation"
            value = copy.deepcopy(operation["value"])
            add(targets[0], operation["path"], value, replace=operation["op"] == "replace")
    return objects


def by_kind(objects: list[Object]) -> dict[str, Object]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object of each kind expected"
    return kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_are_valid_kubernetes(variant: str, version: str) -> None:
    for document in render(KUSTOMIZE / variant):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{variant}: {document['kind']} is invalid for Kubernetes {version}: {error}")


def test_every_manifest_belongs_to_a_kustomization() -> None:
    listed = {
        (kustomization.parent / resource).resolve()
        for kustomization in KUSTOMIZE.rglob("kustomization.yaml")
        for resource in yaml.safe_load(kustomization.read_text())["resources"]
    }
    manifests = {path.resolve() for path in KUSTOMIZE.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert manifests <= listed


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ports_and_resources(variant: str) -> None:
    objects = by_kind(render(KUSTOMIZE / variant))
    deployment, service, hpa = objects["Deployment"], objects["Service"], objects["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001}]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert (env["AE_HOST"], env["AE_PORT"], env["AE_MODELS_DIR"]) == ("0.0.0.0", "8000", "/models")
    assert env["AE_GRPC_PORT"] == "8001"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    if variant == "grpc-probes":
        assert container["readinessProbe"]["grpc"] == container["startupProbe"]["grpc"] == {"port": 8001}
    else:
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["image"] == "autoencoder-service:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]), "the HPA's utilisation needs requests"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["ports"][1] == {
        "name": "grpc",
        "port": 8001,
        "targetPort": "grpc",
        "appProtocol": "kubernetes.io/h2c",
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }


def test_models_pvc_variant_mounts_the_claim_read_only_over_the_baked_models() -> None:
    objects = by_kind(render(KUSTOMIZE / "models-pvc"))
    claim, pod = objects["PersistentVolumeClaim"], objects["Deployment"]["spec"]["template"]["spec"]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"], "replicas on several nodes share it"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    (base,) = containers(render(KUSTOMIZE / "base"))
    assert all(m["mountPath"] != "/models" for m in base["volumeMounts"]), "the base serves the image's models"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_network_policy_lets_in_the_served_ports_only_and_out_dns_only(variant: str) -> None:
    objects = by_kind(render(KUSTOMIZE / variant))
    policy, deployment = objects["NetworkPolicy"]["spec"], objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ports = [{"protocol": "TCP", "port": port["containerPort"]} for port in containers([deployment])[0]["ports"]]
    assert policy["ingress"] == [{"ports": ports}]
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {53}
