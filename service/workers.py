"""Worker processes behind one port, on gunicorn's arbiter.

One Python event loop cannot keep two cores busy: parsing, routing and encoding answers all run on it. The
arbiter (gunicorn.arbiter.Arbiter) forks the workers from a parent that has imported everything, so they
share those pages (numpy, onnxruntime, FastAPI); each worker then builds its app, loads the models and runs
the service's own server (service.http.GreedyAcceptServer). The arbiter's signal handler only queues; its
main loop replaces a worker that exits, aborts one whose event loop stops beating (worker-timeout-s:
SIGABRT, whose tracebacks faulthandler writes to the log, then SIGKILL), adds and removes a worker on TTIN
and TTOU, and halts with exit status 3 when a worker cannot boot. A worker serves max-requests (plus up to
max-requests-jitter) requests, then drains and a fresh one takes its place.

Two parts are the service's own:
- The port. Each worker listens on a SO_REUSEPORT socket of its own, so the kernel spreads new connections
  evenly, but only once its models have loaded (the first worker of an empty set at once, so probes reach
  the service while it loads): a ready answer from any worker that listens holds for all of them. gunicorn's
  own reuse_port setting listens at the fork, where connections would wait in the backlog of a worker still
  loading. The arbiter holds the port meanwhile with sockets bound but never listening (SO_REUSEPORT without
  SO_REUSEADDR): any other bind to it fails, even while every worker is being replaced.
- SIGHUP replaces the workers one at a time: a fresh worker first, and once it listens, the oldest drains
  and exits (gunicorn's own reload starts them all and stops the old ones at once)."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.workers.base import Worker
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE

from service import logs, tracing
from service.app import create_app
from service.grpc.server import GrpcServer
from service.http import GreedyAcceptServer, bind, guarded_protocol, listen
from service.metrics import MULTIPROCESS_DIR
from service.settings import Settings

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LISTENING = b"!"  # what a worker writes to its pipe once it listens
SPENT = b"."  # and once it has answered max-requests requests
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# The arbiter waits this much longer than a worker's own drain (shutdown-timeout-s) before SIGKILL, for the
# worker's shutdown after the drain (models unloaded, lifespan ended).
SHUTDOWN_MARGIN_S = 5
# A worker that exits unasked is replaced after a pause (each replacement loads every model): 1 s, doubling
# while replacements keep dying, up to the maximum; one that lived STEADY_S was not crashing at start.
RESPAWN_PAUSE_S = 1.0
MAX_RESPAWN_PAUSE_S = 30.0
STEADY_S = 60.0


def serve(settings: Settings, workers: int) -> int:
    """Runs the service until it is told to stop; the exit code."""
    guards = hold_port(settings.host, settings.port)
    grpc_guards = hold_port(settings.host, settings.grpc_port, " (gRPC)") if settings.grpc_port else []
    arbiter = ServiceArbiter(ServiceApplication(settings, workers, guards), guards)
    code = 1
    try:
        arbiter.run()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        for guard in grpc_guards:
            guard.close()
        if os.getpid() != arbiter.pid:
            # A worker leaves through here (gunicorn forks in its main loop): never back into the caller's
            # code, whose clean-up (the metrics folder) is the arbiter's.
            _flush()
            os._exit(code)
    return code


def hold_port(host: str, port: int, what: str = "") -> list[PortGuard]:
    """Exits with a message when something listens on the port already, another copy of this service
    included; else holds the port for the workers' SO_REUSEPORT sockets (port 0: the one the system picks)."""
    try:
        for listener in listen(host, port, backlog=1):
            port = listener.getsockname()[1]
            listener.close()
    except OSError as error:
        sys.exit(f"python -m service: cannot listen on {host}:{port}{what}: {error}")
    return [PortGuard(sock) for sock in bind(host, port, reuse_addr=False, reuse_port=True)]


class PortGuard:
    """A bound socket that never listens, so gets no connections, in the arbiter's LISTENERS: the arbiter
    logs it ("Listening at: http://127.0.0.1:8000") and closes it when it stops."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __str__(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class ServiceApplication(BaseApplication):
    """The settings as gunicorn's configuration; `load` builds the app, in each worker after the fork."""

    def __init__(self, settings: Settings, workers: int, guards: list[PortGuard]) -> None:
        self.settings = settings
        self.workers = workers
        self.port = guards[0].getsockname()[1]
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        options = {
            "bind": [f"{host}:{self.port}"],
            "workers": self.workers,
            "worker_class": ServiceWorker,
            "timeout": math.ceil(settings.worker_timeout_s),
            "graceful_timeout": settings.shutdown_timeout_s + SHUTDOWN_MARGIN_S,
            "max_requests": settings.max_requests,
            "max_requests_jitter": settings.max_requests_jitter,
            "loglevel": settings.log_level,
            "logconfig_dict": logs.config(settings.log_level, settings.log_format),
            "proc_name": "autoencoder-service",
            "control_socket_disable": True,
            "pre_fork": _pre_fork,
            "post_fork": _post_fork,
            "child_exit": _worker_gone,
        }
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return create_app(self.settings)


class ServiceArbiter(Arbiter):
    def __init__(self, app: ServiceApplication, guards: list[PortGuard]) -> None:
        super().__init__(app)
        self.LISTENERS = guards  # so the arbiter makes no sockets of its own
        self.asked_to_exit: set[int] = set()
        self.pause = 0.0  # no worker has died yet
        self.respawn_at = 0.0
        self.halting = False

    def kill_worker(self, pid: int, sig: int) -> None:
        self.asked_to_exit.add(pid)
        super().kill_worker(pid, sig)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason, exit_status)

    def reap_workers(self) -> None:
        # Halting after one worker's boot error, gunicorn's stop reaps the others, and a second boot error
        # raised there escaped halt: the service then exited 1, not the documented 3 (seen with 2 workers).
        try:
            super().reap_workers()
        except HaltServer:
            if not self.halting:
                raise

    def worker_gone(self, worker: ServiceWorker) -> None:
        """A pause before the next replacement when the worker exited unasked (a crash, the OOM killer), so
        a worker that keeps dying does not reload every model in a loop; the main loop runs on meanwhile."""
        if worker.pid in self.asked_to_exit:
            self.asked_to_exit.discard(worker.pid)
            return
        lived = time.monotonic() - worker.born
        steady = lived > STEADY_S or not self.pause
        self.pause = RESPAWN_PAUSE_S if steady else min(self.pause * 2, MAX_RESPAWN_PAUSE_S)
        self.respawn_at = time.monotonic() + self.pause
        self.log.error("worker %s exited unasked; replacing it in %.0f s", worker.pid, self.pause)

    def handle_int(self) -> None:
        """Ctrl-C drains, as SIGTERM does; another one while draining stops the workers at once."""
        raise StopIteration

    def handle_hup(self) -> None:
        self.log.info("Hang up: replacing the %d workers one at a time", len(self.WORKERS))
        for old in sorted(self.WORKERS, key=lambda pid: self.WORKERS[pid].age):
            if old in self.WORKERS and not self._replace(old):
                return
        self.log.info("Hang up: every worker replaced")

    def _replace(self, old: int) -> bool:
        """A fresh worker, then once it listens, `old` drains and exits; False when that cannot go on."""
        fresh = self.spawn_worker()
        if not self._until(lambda: fresh not in self.WORKERS or self.WORKERS[fresh].listening()):
            return False
        if fresh not in self.WORKERS:
            self.log.error("worker %s exited before it listened; the other workers are kept", fresh)
            return False
        self.kill_worker(old, signal.SIGTERM)
        return self._until(lambda: old not in self.WORKERS)

    def manage_workers(self) -> None:
        if len(self.WORKERS) < self.num_workers and time.monotonic() < self.respawn_at:
            return
        super().manage_workers()
        for pid in [pid for pid, worker in self.WORKERS.items() if worker.spent()]:
            if pid in self.WORKERS:
                self.log.info("worker %s has answered max-requests requests; replacing it", pid)
                self._replace(pid)

    def spawn_worker(self) -> int:
        pid: int = super().spawn_worker()  # only the arbiter returns here; the worker exits in it
        self.WORKERS[pid].forked()
        return pid

    def _until(self, done: Callable[[], bool]) -> bool:
        """Does the main loop's work (reaping, hang detection) until `done()`; False when told to stop first.
        Other signals wait for the main loop."""
        later: list[int] = []
        try:
            while not done():
                for signum in self.wait_for_signals(timeout=0.1):
                    if signum != signal.SIGCHLD:
                        later.append(signum)
                    if signum in STOP_SIGNALS:
                        return False
                self.reap_workers()
                self.murder_workers()
            return True
        finally:
            for signum in later:
                self.SIG_QUEUE.put_nowait(signum)


class ServiceWorker(Worker):
    """Runs GreedyAcceptServer with the app gunicorn loaded, beating the arbiter's heartbeat from its event
    loop and telling the arbiter, through a pipe, once it listens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in the arbiter, before the fork
        self.born = time.monotonic()
        self.listen_at_once = False
        self._reader: int | None
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._reader, False)
        self._told = b""
        self._server: GreedyAcceptServer | None = None

    def forked(self) -> None:
        """In the arbiter, after the fork: only the worker writes."""
        os.close(self._writer)

    def listening(self) -> bool:
        """In the arbiter: whether the worker listens yet."""
        self._read()
        return LISTENING in self._told

    def spent(self) -> bool:
        """In the arbiter: whether the worker has answered max-requests requests and awaits its successor."""
        self._read()
        return SPENT in self._told

    def _read(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(BlockingIOError):
                self._told += os.read(self._reader, 8)

    def close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None

    def init_signals(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # uvicorn's server handles SIGTERM and SIGINT while it runs (drain; a second SIGINT stops at once),
        # then restores these handlers and raises the signal again: the worker exits quietly.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the arbiter's: it replaces the workers
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        # A hung worker gets SIGABRT from the arbiter: its threads' tracebacks go to the log before it dies,
        # written from C, so even a loop stuck in C code shows where (a crash in C shows its too).
        faulthandler.enable(all_threads=True)
        _die_with_parent()

    def run(self) -> None:
        try:
            tracing.start()  # per worker: the exporters' threads do not survive the fork
            server = self._make_server()
        except Exception:
            self.log.exception("worker %s could not start", self.pid)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        signal.signal(signal.SIGQUIT, lambda *_: _force_exit(server))  # the arbiter's quick stop
        try:
            server.run()
        except SystemExit as stop:
            if stop.code == STARTUP_FAILURE:  # uvicorn's: the app's startup failed, or the port
                sys.exit(Arbiter.WORKER_BOOT_ERROR)
            raise
        finally:
            tracing.stop()  # sends the spans still buffered
        if not server.listening and not server.should_exit:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def _make_server(self) -> GreedyAcceptServer:
        settings: Settings = self.app.settings
        config = uvicorn.Config(
            self.wsgi,
            **uvicorn_options(settings, self.app.port),
            callback_notify=self._beat,
            timeout_notify=min(self.timeout, 1.0),
        )
        registry = self.wsgi.state.registry
        self._server = GreedyAcceptServer(
            config,
            reuse_port=True,
            listen_once=None if self.listen_at_once else lambda: bool(registry.settled),
            on_listening=lambda: self._tell(LISTENING),
            companions=[GrpcServer(self.wsgi, settings)] if settings.grpc_port else [],
        )
        return self._server

    async def _beat(self) -> None:
        self.notify()
        # Past max-requests the arbiter starts a successor, and stops this worker once that one listens
        # (uvicorn's own limit would stop it first, leaving fewer workers listening meanwhile).
        answered = self._server.server_state.total_requests if self._server is not None else 0
        if answered >= self.max_requests and SPENT not in self._told:
            self._tell(SPENT)

    def _tell(self, news: bytes) -> None:
        self._told += news
        with contextlib.suppress(OSError):
            os.write(self._writer, news)


def uvicorn_options(settings: Settings, port: int) -> dict[str, Any]:
    limits = guarded_protocol(settings.max_header_bytes, settings.header_timeout_s, settings.send_timeout_s)
    return {
        "host": settings.host,
        "port": port,
        "log_level": settings.log_level,
        "log_config": logs.config(settings.log_level, settings.log_format),
        "access_log": False,  # each request's line is service.tracing's
        "loop": settings.loop,
        "http": "h11" if settings.http == "h11" else limits,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
    }


def _pre_fork(arbiter: Arbiter, worker: ServiceWorker) -> None:
    # The first worker of an empty set listens at once, so probes reach the service while models load.
    worker.listen_at_once = not arbiter.WORKERS


def _post_fork(arbiter: Arbiter, worker: ServiceWorker) -> None:
    """In the new worker: the other workers' pipes are the arbiter's to read."""
    worker.close_reader()
    for sibling in arbiter.WORKERS.values():
        sibling.close_reader()


def _worker_gone(arbiter: Arbiter, worker: ServiceWorker) -> None:
    """In the arbiter, once a worker has exited."""
    arbiter.worker_gone(worker)
    worker.close_reader()
    if os.environ.get(MULTIPROCESS_DIR) and isinstance(worker.pid, int):
        multiprocess.mark_process_dead(worker.pid)  # its live gauges stop counting


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # the stream is None when it was closed at start


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def _force_exit(server: uvicorn.Server) -> None:
    server.should_exit = server.force_exit = True


def _die_with_parent() -> None:
    """A worker whose arbiter is killed outright (SIGKILL) stops too, instead of holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
