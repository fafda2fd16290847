"""docker-compose.yml: valid for Compose, GPU by default, a cpu profile, a hardened read-only container."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

from .tools import REPO, find_tool, parse_stages

SERVICES = {"autoencoder": "gpu", "autoencoder-cpu": "cpu"}
PORT_VARIABLES = ("AE_PORT", "AE_GRPC_PORT")


def resolved(**environment: str) -> dict[str, Any]:
    """The file as `docker-compose config` resolves it, which also checks it against Compose's schema."""
    docker_compose = find_tool(
        "docker-compose", "run `make system-deps` (Debian's docker-compose package) or `make test`"
    )
    # Compose reads AE_PORT and AE_GRPC_PORT from its environment: the test's own, not the caller's.
    env = {name: value for name, value in os.environ.items() if name not in PORT_VARIABLES} | environment
    result = subprocess.run(
        [docker_compose, "--project-directory", str(REPO), "--file", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yml:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved()


def test_services_build_stages_of_the_dockerfile(compose: dict[str, Any]) -> None:
    assert {name: service["build"]["target"] for name, service in compose["services"].items()} == SERVICES
    assert set(SERVICES.values()) <= set(parse_stages((REPO / "Dockerfile").read_text()))


def test_plain_up_starts_the_gpu_service_with_a_gpu(compose: dict[str, Any]) -> None:
    gpu, cpu = compose["services"]["autoencoder"], compose["services"]["autoencoder-cpu"]
    assert "profiles" not in gpu
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_listens_on_8000_and_8001_with_the_models_mounted_read_only(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["ports"] == [{"published": 8000, "target": 8000}, {"published": 8001, "target": 8001}]
    gpu_workers = {"AE_WORKERS": "2"} if name == "autoencoder" else {}  # a CUDA context per worker
    inside = {"AE_HOST": "0.0.0.0", "AE_PORT": "8000", "AE_GRPC_PORT": "8001", "AE_MODELS_DIR": "/models"}
    assert service["environment"] == inside | gpu_workers
    assert service["volumes"] == [
        {"type": "bind", "source": str(REPO / "models"), "target": "/models", "read_only": True}
    ]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_is_hardened_checked_and_restarted(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["restart"] == "unless-stopped"
    assert service["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert "start_period" in service["healthcheck"]
    assert service["mem_limit"] and 0 < service["pids_limit"] <= 1024  # a flood cannot take the host with it


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_host_ports_follow_ae_port_and_ae_grpc_port(name: str) -> None:
    service = resolved(AE_PORT="9180", AE_GRPC_PORT="9181")["services"][name]
    assert service["ports"] == [{"published": 9180, "target": 8000}, {"published": 9181, "target": 8001}]
    assert service["environment"]["AE_PORT"] == "8000", "inside the container the port stays 8000"
