"""requirements/service-*.txt pin what pyproject.toml asks for, exactly, so the two cannot drift; the
environment the tests run in holds those pins (make test installs with them as constraints)."""

from __future__ import annotations

import importlib.metadata
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
        assert not requirement.extras, f"{requirement}: a constraints file takes no extras"
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


def test_what_the_extras_bring_is_pinned() -> None:
    pins = read_pins(REPO / "requirements" / "service-cpu.txt")
    for dependency in project_dependencies():
        for extra in dependency.extras:
            for line in importlib.metadata.requires(dependency.name) or []:
                needed = Requirement(line)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(needed.name) in pins, f"{dependency.name}[{extra}] needs {needed}"


def test_the_tests_run_on_the_pinned_versions() -> None:
    """What the suite passes with is what the images install."""
    pins = read_pins(REPO / "requirements" / "service-cpu.txt")
    installed = {name: importlib.metadata.version(name) for name in pins}
    assert installed == {name: pinned_version(pin) for name, pin in pins.items()}
