"""`python -m service` and what importing the service pulls in, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_serving_never_imports_torch_or_training() -> None:
    code = (
        "import sys, service, service.app, service.__main__;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_lists_every_setting_with_its_environment_variable() -> None:
    result = run("-m", "service", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"AE_{name.upper()}" in text


def test_bad_setting_stops_the_start_with_a_message() -> None:
    result = run("-m", "service", "--models-dir", "/no/such/folder")
    assert result.returncode == 1
    assert "--models-dir: Value error, models directory '/no/such/folder' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_a_warning_when_listening_beyond_loopback_without_keys(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service", "--host", "0.0.0.0", "--port", "0", "--models-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "listening on 0.0.0.0 without API keys" in first and "AE_API_KEYS" in first
