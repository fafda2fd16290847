"""`python -m service`: every setting is a flag (see --help) and an AE_* environment variable; flags win."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import ExitStack
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp

from service.app import create_app
from service.http import GreedyAcceptServer, guarded_protocol
from service.metrics import MULTIPROCESS_DIR
from service.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def main(argv: list[str] | None = None) -> None:
    try:
        settings = CliApp.run(Settings, cli_args=argv)
    except ValidationError as exc:
        problems = "\n".join(f"  --{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        sys.exit(f"python -m service: invalid settings\n{problems}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.host not in LOOPBACK and not settings.all_api_keys():
        logging.getLogger("service").warning(
            "listening on %s without API keys: anyone who reaches this port can use every model "
            "(set AE_API_KEYS or AE_API_KEYS_FILE)",
            settings.host,
        )
    with ExitStack() as cleanup:
        if settings.workers == 1:
            app: Any = create_app(settings)
        else:
            # Worker processes import the app by name and build their own settings: hand them ours by
            # environment, with a folder where their metrics meet (service.metrics), unless one is given.
            os.environ.update(settings.as_environment())
            if not os.environ.get(MULTIPROCESS_DIR):
                os.environ[MULTIPROCESS_DIR] = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ae-metrics-"))
            app = "service.app:app_from_environment"
        limits = guarded_protocol(settings.max_header_bytes, settings.header_timeout_s, settings.send_timeout_s)
        http: Any = "h11" if settings.http == "h11" else limits
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            "loop": settings.loop,
            "http": http,
            "h11_max_incomplete_event_size": settings.max_header_bytes,
            "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        }
        if settings.workers == 1:
            GreedyAcceptServer(uvicorn.Config(app, **options)).run()
        else:
            # Each worker process accepts on the one socket uvicorn binds (uvloop: one connection per loop
            # iteration; several processes make up for it).
            uvicorn.run(app, factory=True, workers=settings.workers, **options)


if __name__ == "__main__":
    main()
