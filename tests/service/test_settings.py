"""Settings from AE_* variables and flags, with flags winning and bad values refused at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from service import settings as settings_module
from service.settings import Settings, available_cores


def test_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AE_PORT", "9001")
    monkeypatch.setenv("AE_MAX_BATCH_ROWS", "7")
    monkeypatch.setenv("AE_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    settings = CliApp.run(Settings, cli_args=["--port", "9002", "--models-dir", str(tmp_path)])
    assert (settings.port, settings.max_batch_rows, settings.models_dir) == (9002, 7, tmp_path)
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.execution_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_defaults(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    assert (settings.host, settings.port, settings.default_model) == ("127.0.0.1", 8000, None)
    assert settings.execution_providers()[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"providers": "CPUExecutionProvider,GPUProvider"}, "unknown onnxruntime providers ['GPUProvider']"),
        ({"models_dir": "/no/such/folder"}, "models directory '/no/such/folder' does not exist"),
        ({"port": 65536}, "less than or equal to 65535"),
        ({"max_batch_rows": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_values_fail_fast(tmp_path: Path, values: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        Settings(**({"models_dir": tmp_path} | values))


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: round up
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_available_cores_follow_the_cgroup_quota(tmp_path: Path, files: dict[str, str], cores: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == (affinity if cores is None else min(cores, affinity))


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (8, 4, 1), (16, 4, 3), (64, 4, 15)],
)
def test_workers_and_threads_follow_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(settings_module, "available_cores", lambda: cores)
    settings = Settings(models_dir=tmp_path)
    assert (settings.worker_count(), settings.onnxruntime_threads()) == (workers, threads)


def test_the_repository_api_keeps_one_worker_unless_told(tmp_path: Path) -> None:
    # Its load and unload calls act on the one worker that answers them.
    assert Settings(models_dir=tmp_path, admin_keys=("k",)).worker_count() == 1
    assert Settings(models_dir=tmp_path, admin_keys=("k",), workers=3).worker_count() == 3


def test_set_threads_and_workers_win(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, workers=1, intra_op_threads=0)
    assert (settings.worker_count(), settings.onnxruntime_threads()) == (1, 0)
    assert Settings(models_dir=tmp_path, workers=1).onnxruntime_threads() == max(1, available_cores() - 1)
