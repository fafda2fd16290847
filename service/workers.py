"""Several worker processes behind one port, forked from a parent that has imported everything.

One Python event loop cannot keep two cores busy: parsing, routing and encoding answers all run on it.
Forking after the imports lets the workers share those pages (numpy, onnxruntime, FastAPI) instead of each
loading its own copy, as spawned workers would. Each worker builds its app, loads the models and runs the
service's own server (GreedyAcceptServer) on a listening socket of its own: SO_REUSEPORT has the kernel
spread new connections evenly over them, where one shared socket would hand a burst to whichever worker
woke first. The parent only watches: it passes SIGTERM and SIGINT on, replaces a worker that dies, and
stops everything when a worker cannot start."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE

from service.app import create_app
from service.http import GreedyAcceptServer, guarded_protocol, listen
from service.metrics import MULTIPROCESS_DIR
from service.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_PAUSE_S = 1.0  # between replacing workers, so one that crashes at once cannot spin the parent


def serve(settings: Settings, workers: int) -> int:
    """Runs the service until it is told to stop; the exit code."""
    limits = guarded_protocol(settings.max_header_bytes, settings.header_timeout_s, settings.send_timeout_s)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "loop": settings.loop,
        "http": "h11" if settings.http == "h11" else limits,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
    }

    def run_worker(reuse_port: bool, replacement: bool) -> bool:
        app = create_app(settings)
        settled = (lambda: app.state.registry.settled) if replacement else None
        server = GreedyAcceptServer(uvicorn.Config(app, **options), reuse_port=reuse_port, listen_once=settled)
        server.run()
        return server.started

    if workers == 1:
        return 0 if run_worker(reuse_port=False, replacement=False) else STARTUP_FAILURE
    check_port_free(settings.host, settings.port)
    return Supervisor(workers, partial(run_worker, True)).run()


def check_port_free(host: str, port: int) -> None:
    """Exits with a message when something listens on the port already, another copy of this service
    included: its SO_REUSEPORT sockets would otherwise share the port with ours without a word."""
    try:
        for listener in listen(host, port, backlog=1):
            listener.close()
    except OSError as error:
        sys.exit(f"python -m service: cannot listen on {host}:{port}: {error}")


class Supervisor:
    def __init__(self, workers: int, run_worker: Callable[[bool], bool]) -> None:
        """`run_worker(replacement)` serves until told to stop, in a forked child; it returns whether it
        started. `replacement` is True for a worker replacing one that died."""
        self.workers = workers
        self.run_worker = run_worker
        self.children: set[int] = set()
        self.stopping = False
        self.exit_code = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for _ in range(self.workers):
            self._fork(replacement=False)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            self._reap(pid, os.waitstatus_to_exitcode(status))
        return self.exit_code

    def _fork(self, replacement: bool) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(self._child(parent, replacement))
        self.children.add(pid)

    def _child(self, parent: int, replacement: bool) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)  # the worker's server installs its own
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            return 0
        try:
            started = self.run_worker(replacement)
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
            started = False
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        return 0 if started else STARTUP_FAILURE

    def _reap(self, pid: int, code: int) -> None:
        self.children.discard(pid)
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.mark_process_dead(pid)  # its live gauges stop counting
        if self.stopping:
            return
        if code == STARTUP_FAILURE:
            logger.error("worker %d could not start; stopping the service", pid)
            self.exit_code = STARTUP_FAILURE
            self._stop(signal.SIGTERM, None)
            return
        logger.error("worker %d exited with %d; starting another", pid, code)
        time.sleep(RESTART_PAUSE_S)
        self._fork(replacement=True)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)  # each drains its requests (shutdown-timeout-s) and exits


def _die_with_parent() -> None:
    """A worker whose parent is killed outright (SIGKILL) stops too, instead of holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
