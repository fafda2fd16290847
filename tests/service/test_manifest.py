"""The package format's one definition (service.manifest) against its generated schema and the committed packages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from service.manifest import NAME_PATTERN, VERSION_PATTERN, Manifest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "manifest.schema.json"
COMMITTED = sorted(ROOT.glob("models/*/*/manifest.json"))


def test_the_committed_schema_is_the_generated_one() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "service.manifest"], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    ).stdout
    assert generated == SCHEMA_FILE.read_text(), (
        "docs/manifest.schema.json is stale: run python -m service.manifest > docs/manifest.schema.json"
    )


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: f"{path.parent.parent.name}/{path.parent.name}")
def test_committed_manifests_follow_the_schema_and_are_kept_as_written(path: Path) -> None:
    raw = json.loads(path.read_text())
    jsonschema.validate(raw, json.loads(SCHEMA_FILE.read_text()))
    assert Manifest.model_validate(raw).model_dump(mode="json", exclude_unset=True) == raw


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (NAME_PATTERN, "mnist-dense", True),
        (NAME_PATTERN, "v1.2_b", True),
        (NAME_PATTERN, "Mnist", False),
        (NAME_PATTERN, "-mnist", False),
        (NAME_PATTERN, "mnist\n", False),
        (NAME_PATTERN, "mnist/1", False),
        (VERSION_PATTERN, "12", True),
        (VERSION_PATTERN, "012", False),
        (VERSION_PATTERN, "1\n", False),
        (VERSION_PATTERN, "1" * 19, False),
    ],
)
def test_names_and_versions_match_whole(pattern: re.Pattern[str], text: str, matches: bool) -> None:
    assert (pattern.fullmatch(text) is not None) == matches
