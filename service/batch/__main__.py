"""`python -m service.batch`: every setting is a flag (see --help) and an AE_BATCH_* environment variable."""

from __future__ import annotations

import sys

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
    try:
        summary = run_job(config)
    except BatchError as exc:
        sys.exit(f"{PROG}: {exc}; nothing was written")
    except KeyboardInterrupt:
        sys.exit(f"{PROG}: interrupted; nothing was written")
    print(summary.line(), file=sys.stderr)


if __name__ == "__main__":
    main()
