"""`python -m service`: every setting is a flag (see --help) and an AE_* environment variable; flags win."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import CliApp

from service import logs
from service.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PREFIX = "ae-metrics-"


def main(argv: list[str] | None = None) -> None:
    try:
        settings = CliApp.run(Settings, cli_args=argv)
    except ValidationError as exc:
        problems = "\n".join(f"  --{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        sys.exit(f"python -m service: invalid settings\n{problems}")
    logs.configure(settings.log_level, settings.log_format)
    if settings.host not in LOOPBACK and not settings.all_api_keys():
        logging.getLogger("service").warning(
            "listening on %s without API keys: anyone who reaches this port can use every model "
            "(set AE_API_KEYS or AE_API_KEYS_FILE)",
            settings.host,
        )
    workers = settings.worker_count()
    if workers > 1 and settings.admin_keys:
        logging.getLogger("service").warning(
            "the repository API's load and unload act on the one worker of %d that answers each call; "
            "publish and remove models through the models folder, or run --workers 1",
            workers,
        )
    with ExitStack() as cleanup:
        if not os.environ.get(PROMETHEUS_MULTIPROC_DIR):
            # Where the workers' metrics meet (service.metrics), unless a folder is given; with one worker
            # too, since TTIN adds more.
            _remove_orphaned_metrics()
            folder = tempfile.TemporaryDirectory(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
            os.environ[PROMETHEUS_MULTIPROC_DIR] = cleanup.enter_context(folder)
        # Imported only now: prometheus_client picks its value store (in memory, or files the workers share)
        # once, when it is first imported.
        from service.workers import serve

        code = serve(settings, workers)
    sys.exit(code)


def _remove_orphaned_metrics() -> None:
    """Metrics folders of earlier runs whose parent was killed outright (it removes its own otherwise)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*-*"):
        pid = folder.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)  # others' folders and links are left where they are


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


if __name__ == "__main__":
    main()
