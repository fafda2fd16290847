"""`python -m service.batch`: every setting is a flag (see --help) and an AE_BATCH_* environment variable."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from pydantic import ValidationError
from pydantic_settings import CliApp

from service.batch.config import BatchConfig
from service.batch.errors import BatchError
from service.batch.jobs import run_job

PROG = "python -m service.batch"


def main(argv: list[str] | None = None) -> None:
    try:
        config = CliApp.run(BatchConfig, cli_args=argv)
    except ValidationError as exc:
        problems = "\n".join(f"  --{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        sys.exit(f"{PROG}: invalid settings\n{problems}")
    # SIGTERM (Kubernetes, a RayJob's deletion, timeout) stops the job as Ctrl-C does: its temporary
    # output is removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_job(config)
    except BatchError as exc:
        sys.exit(f"{PROG}: {exc}; nothing was written")
    except OSError as exc:  # the output's storage: full, read-only, gone
        sys.exit(f"{PROG}: {exc}; nothing was written")
    except KeyboardInterrupt:
        sys.exit(f"{PROG}: interrupted; nothing was written")
    print(summary.line(), file=sys.stderr)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
