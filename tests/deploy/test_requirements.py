"""requirements/service-*.txt pin what pyproject.toml asks for, exactly, so the two cannot drift."""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .tools import REPO, pinned_version, read_pins

RUNTIMES = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(line) for line in pyproject["project"]["dependencies"]]


@pytest.mark.parametrize("flavour", sorted(RUNTIMES))
def test_every_requirement_is_pinned_exactly(flavour: str) -> None:
    pins = read_pins(REPO / "requirements" / f"service-{flavour}.txt")
    for requirement in pins.values():
        assert requirement.marker is None, f"{requirement}: a marker would make the install differ by host"
        pinned_version(requirement)


@pytest.mark.parametrize("flavour", sorted(RUNTIMES))
def test_pins_satisfy_pyproject_dependencies(flavour: str) -> None:
    pins = read_pins(REPO / "requirements" / f"service-{flavour}.txt")
    for dependency in project_dependencies():
        name = canonicalize_name(dependency.name)
        if name == "onnxruntime":
            name = RUNTIMES[flavour]
        assert name in pins, f"pyproject.toml needs {dependency}; service-{flavour}.txt does not pin {name}"
        pin = pins[name]
        assert pin.extras == dependency.extras, f"{pin} and pyproject's {dependency} differ in extras"
        assert dependency.specifier.contains(pinned_version(pin), prereleases=True), (
            f"service-{flavour}.txt pins {pin}, outside pyproject's {dependency}"
        )


def test_flavours_differ_in_the_onnxruntime_package_only() -> None:
    cpu = read_pins(REPO / "requirements" / "service-cpu.txt")
    gpu = read_pins(REPO / "requirements" / "service-gpu.txt")
    assert set(cpu) ^ set(gpu) == set(RUNTIMES.values())
    assert {name: str(cpu[name]) for name in cpu if name != "onnxruntime"} == {
        name: str(gpu[name]) for name in gpu if name != "onnxruntime-gpu"
    }
