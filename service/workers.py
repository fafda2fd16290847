"""Several worker processes behind one port, forked from a parent that has imported everything.

One Python event loop cannot keep two cores busy: parsing, routing and encoding answers all run on it.
Forking after the imports lets the workers share those pages (numpy, onnxruntime, FastAPI) instead of each
loading its own copy, as spawned workers would. Each worker builds its app, loads the models and runs the
service's own server (GreedyAcceptServer) on a listening socket of its own: SO_REUSEPORT has the kernel
spread new connections evenly over them, where one shared socket would hand a burst to whichever worker
woke first. The parent only watches: it holds the port, stops the workers gracefully on SIGTERM, SIGINT or
SIGHUP, replaces a worker that dies (backing off while they keep dying) or whose event loop stops running
(worker-timeout-s), and stops everything when a worker cannot start."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE

from service.app import create_app
from service.http import GreedyAcceptServer, bind, guarded_protocol, listen
from service.metrics import MULTIPROCESS_DIR
from service.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RESTART_PAUSE_S = 1.0  # before replacing a worker, doubling while they keep dying, up to the maximum
MAX_RESTART_PAUSE_S = 30.0
STEADY_S = 60.0  # a worker that lived this long was not crashing at start: the pause starts again at 1 s
WATCH_S = 0.25  # how often the parent looks for dead and hung workers


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

    def run_worker(reuse_port: bool, listen_at_once: bool, beat: Callable[[], None] | None) -> bool:
        app = create_app(settings)
        settled = None if listen_at_once else (lambda: app.state.registry.settled)
        config = uvicorn.Config(app, **options)
        server = GreedyAcceptServer(config, reuse_port=reuse_port, listen_once=settled, beat=beat)
        server.run()
        return server.started

    if workers == 1:
        return 0 if run_worker(reuse_port=False, listen_at_once=True, beat=None) else STARTUP_FAILURE
    guards = hold_port(settings.host, settings.port)
    try:
        return Supervisor(workers, partial(run_worker, True), settings.worker_timeout_s).run()
    finally:
        for guard in guards:
            guard.close()


def hold_port(host: str, port: int) -> list[socket.socket]:
    """Exits with a message when something listens on the port already, another copy of this service
    included; else holds the port for the workers' SO_REUSEPORT sockets, even while every worker is being
    replaced: bound sockets that never listen (so get no connections), with SO_REUSEPORT but without
    SO_REUSEADDR, so any other bind to the port fails."""
    try:
        for listener in listen(host, port, backlog=1):
            listener.close()
    except OSError as error:
        sys.exit(f"python -m service: cannot listen on {host}:{port}: {error}")
    return bind(host, port, reuse_addr=False, reuse_port=True)


class Heartbeats:
    """A slot per worker in memory shared across the fork: when its event loop last ran (CLOCK_MONOTONIC,
    the same in every process); 0 until its server runs."""

    def __init__(self, slots: int) -> None:
        self._memory = mmap.mmap(-1, 8 * slots)

    def beat(self, slot: int) -> None:
        struct.pack_into("d", self._memory, 8 * slot, time.monotonic())

    def clear(self, slot: int) -> None:
        struct.pack_into("d", self._memory, 8 * slot, 0.0)

    def silent_for(self, slot: int) -> float:
        (last,) = struct.unpack_from("d", self._memory, 8 * slot)
        return time.monotonic() - last if last else 0.0


@dataclass
class Child:
    slot: int
    forked: float


class Supervisor:
    def __init__(self, workers: int, run_worker: Callable[[bool, Callable[[], None]], bool], timeout_s: float) -> None:
        """`run_worker(listen_at_once, beat)` serves until told to stop, in a forked child, calling `beat`
        every second, and returns whether it started; unless `listen_at_once`, it listens only once its
        models have loaded. A worker that has not beaten for `timeout_s` is killed and replaced."""
        self.workers = workers
        self.run_worker = run_worker
        self.timeout_s = timeout_s
        self.children: dict[int, Child] = {}
        self.heartbeats = Heartbeats(workers)
        self.stopping = False
        self.exit_code = 0
        self.pause = RESTART_PAUSE_S

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)
        for slot in range(self.workers):
            # The first worker listens at once, so probes reach the service while models load; the others
            # only once theirs have loaded, so a ready answer from any listening worker holds for all.
            self._fork(slot, listen_at_once=slot == 0)
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                self._kill_hung()
                time.sleep(WATCH_S)
            elif pid in self.children:  # as PID 1 (a container) the orphans of `docker exec` come here too
                self._reap(pid, os.waitstatus_to_exitcode(status))
        return self.exit_code

    def _kill_hung(self) -> None:
        if self.stopping:
            return  # a draining worker's loop has stopped ticking on purpose
        for pid, child in self.children.items():
            silent = self.heartbeats.silent_for(child.slot)
            if silent > self.timeout_s:
                logger.error("worker %d has not run its event loop for %.0f s; killing it", pid, silent)
                self.heartbeats.clear(child.slot)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _fork(self, slot: int, listen_at_once: bool) -> None:
        if self.stopping:
            return
        self.heartbeats.clear(slot)
        parent = os.getpid()
        # A stop signal waits until the child has its own handlers and the parent knows the child's pid.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = STARTUP_FAILURE
            try:
                code = self._child(parent, slot, listen_at_once, mask)
            finally:
                os._exit(code)  # never back into the parent's code, whatever happened
        self.children[pid] = Child(slot, time.monotonic())
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _child(self, parent: int, slot: int, listen_at_once: bool, mask: set[int | signal.Signals]) -> int:
        os.setpgid(0, 0)  # Ctrl-C reaches the parent alone, which stops the workers once, gracefully
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)  # the worker's server installs its own (SIGTERM, SIGINT)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            return 0
        started = False
        try:
            started = self.run_worker(listen_at_once, partial(self.heartbeats.beat, slot))
        except SystemExit:
            pass  # the server's way of saying it could not listen; it has logged why
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
        finally:
            _flush()
        return 0 if started else STARTUP_FAILURE

    def _reap(self, pid: int, code: int) -> None:
        child = self.children.pop(pid)
        lived = time.monotonic() - child.forked
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.mark_process_dead(pid)  # its live gauges stop counting
        if self.stopping:
            return
        if code == STARTUP_FAILURE:
            logger.error("worker %d could not start; stopping the service", pid)
            self.exit_code = STARTUP_FAILURE
            self._stop(signal.SIGTERM, None)
            return
        # Crashing again and again (each reloading every model) backs off, up to MAX_RESTART_PAUSE_S.
        self.pause = RESTART_PAUSE_S if lived > STEADY_S else min(self.pause * 2, MAX_RESTART_PAUSE_S)
        logger.error("worker %d exited with %d; starting another in %.0f s", pid, code, self.pause)
        deadline = time.monotonic() + self.pause
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        self._fork(child.slot, listen_at_once=False)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        # The workers drain on SIGTERM (shutdown-timeout-s); a second Ctrl-C makes them stop at once.
        forward = signal.SIGINT if self.stopping and signum == signal.SIGINT else signal.SIGTERM
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, forward)


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # the stream is None when it was closed at start


def _die_with_parent() -> None:
    """A worker whose parent is killed outright (SIGKILL) stops too, instead of holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
