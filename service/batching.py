"""Dynamic batching: rows of concurrent requests gathered into one graph run, computed off the event loop.

At most `max_in_flight` batches compute at once per graph. While they do, new requests queue; when one
finishes, the queue goes out as the next batch at once. An idle graph waits at most `max_wait_s` for
company before it runs. A request of more rows than `max_rows` is split into several batches and put back
together in order.

Admission control: the queue is bounded by time, not by a count. The batcher keeps a running estimate of
what a run costs (a fixed part per run and a part per row, `CostModel`); a request whose rows could not
start within `max_queue_wait_s` behind the rows already queued and computing is refused at once with 503
`overloaded` and a Retry-After, instead of joining a queue that only grows. Until a first run has been
timed, a request is admitted only if it goes out with the next run. Routes ask the same question from the
request's headers before they read its body (`wait_s`), so a refusal costs almost nothing; the rows of a
request admitted that way are held (`hold`) while its body arrives, counted ahead of later requests like
queued rows, until they join the queue.

A request whose deadline passes while it queues (the request timeout, `deadline_at`) or whose caller went
away (its waiter cancelled) leaves the queue at once: it is neither computed nor counted ahead of others.

Each request's record (service.tracing) learns the model and version that computed it, its rows and how
long they waited; with tracing on, its trace gets a span for that wait and one for the run it joined (the
run's rows and requests as attributes), even though one run serves several requests."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service import tracing
from service.errors import ServiceError

Outputs = list[np.ndarray]  # every output batch-first, in the graph's order

# When the request being served must be answered by, on the event loop's clock; None: no deadline. Set per
# request (service.routes.deadline), so every graph a request reaches sees it without being handed it.
_deadline: ContextVar[float | None] = ContextVar("batching_deadline", default=None)


@contextmanager
def deadline_at(when: float | None) -> Iterator[None]:
    """Rows submitted inside the block are dropped, not computed, once the event loop's clock passes `when`."""
    token = _deadline.set(when)
    try:
        yield
    finally:
        _deadline.reset(token)


class Held:
    """Rows a request admitted from its headers holds in a batcher until its rows are queued or it ends. As
    a context manager: the request's submits release them; they are released on exit in any case."""

    def __init__(self, batcher: Batcher, rows: int) -> None:
        self.batcher, self.rows = batcher, rows
        batcher._held_rows += rows

    def release(self) -> None:
        self.batcher._held_rows -= self.rows
        self.rows = 0

    def __enter__(self) -> Held:
        self._token = _held.set(self)
        return self

    def __exit__(self, *_: object) -> None:
        _held.reset(self._token)
        self.release()


# The rows the request being served holds in a batcher while its body is read; its first submit there
# releases them, as its real rows take their place.
_held: ContextVar[Held | None] = ContextVar("batching_held", default=None)


class BatchObserver(Protocol):
    def observe_batch(self, rows: int, waits: list[float], compute: float) -> None: ...


@dataclass
class _Waiting:
    x: np.ndarray
    future: asyncio.Future[Outputs]
    since: float
    deadline: float | None
    record: tracing.RequestRecord | None
    since_ns: int  # wall clock, for its trace's span: 0 when it is not traced
    queued: bool = True  # still counted in the queue: not yet sent to a run, dropped or withdrawn

    @property
    def span(self) -> Any:
        """The request's span when it is sampled (service.tracing); else None."""
        return self.record.span if self.record is not None and self.record.traced else None


class CostModel:
    """Seconds a run of n rows takes: fixed + per_row * n, fitted by least squares over the recent runs
    (exponentially weighted, so it follows the load and the machine). One cost per row alone would price a
    queue of many rows at what the rows of small runs cost, fixed part included: after idle one-row runs
    the service refused work it could do in a fraction of the budget."""

    DECAY = 0.9  # the weight of the past at each run: the last ten runs or so count

    def __init__(self) -> None:
        self._sums = np.zeros(5)  # weighted sums of 1, n, t, n^2, n * t
        self._fixed, self._per_row = 0.0, 0.0  # fitted once per run, read by every admission

    @property
    def trained(self) -> bool:
        return bool(self._sums[0])

    def observe(self, rows: int, seconds: float) -> None:
        self._sums = self.DECAY * self._sums + np.array([1.0, rows, seconds, rows * rows, rows * seconds])
        self._fixed, self._per_row = self._fit()

    def seconds(self, rows: float, runs: float) -> float:
        return runs * self._fixed + rows * self._per_row

    def _fit(self) -> tuple[float, float]:
        weight, n, t, nn, nt = self._sums
        spread = weight * nn - n * n
        if spread <= 1e-9 * weight * nn:  # runs of one size: no way to tell the parts apart
            return 0.0, t / n if n else 0.0
        per_row = max(0.0, (weight * nt - n * t) / spread)
        return max(0.0, (t - per_row * n) / weight), per_row


def overloaded(wait: float, budget: float) -> ServiceError:
    """The 503 a request gets when its rows could not start within `budget` seconds."""
    if math.isinf(wait):
        why = "a full batch is already waiting for its run, whose cost is not known yet"
    else:
        why = f"about {wait:.2f} s of work is queued, over the {budget:g} s the service lets a request wait"
    retry = 1 if math.isinf(wait) else max(1, math.ceil(wait))
    return ServiceError(503, "overloaded", f"the model is busy: {why}; retry later", {"Retry-After": str(retry)})


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], Outputs],
        max_rows: int,
        max_wait_s: float,
        observer: BatchObserver | None = None,
        max_in_flight: int = 1,
        max_queue_wait_s: float = 0.0,
        traced_as: dict[str, Any] | None = None,
    ) -> None:
        self.run = run
        # What requests learn of the batcher that ran them: model, version and graph (span attributes).
        self.traced_as = traced_as or {}
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.observer = observer
        self.max_queue_wait_s = max_queue_wait_s  # 0: no admission control
        self._queue: deque[_Waiting] = deque()
        self._queued_rows = 0
        self._held_rows = 0
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._in_flight_rows = 0
        self.cost = CostModel()
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="batcher")

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a run (dropped and withdrawn ones not counted)."""
        return self._queued_rows

    def hold(self, rows: int) -> Held:
        """Holds `rows` rows ahead of later requests while the body that carries them is read."""
        return Held(self, rows)

    async def submit(self, x: np.ndarray) -> Outputs:
        """The graph's outputs for exactly these rows, in order; 503 `overloaded` when they could not start
        within the queue wait budget; 504 `timeout` when the request's deadline passes before they start."""
        held = _held.get()
        if held is not None and held.batcher is self:
            held.release()
        self.admit(len(x))
        record = tracing.current()
        if record is not None:
            record.model = self.traced_as.get("model", record.model)
            record.version = self.traced_as.get("model.version", record.version)
            record.rows = max(record.rows or 0, len(x))
        return await self._submit(x, _deadline.get(), record)

    def admit(self, rows: int) -> None:
        """503 `overloaded` (with Retry-After) when `rows` more rows could not start within the budget."""
        wait = self.wait_s(rows)
        if wait > self.max_queue_wait_s:
            raise overloaded(wait, self.max_queue_wait_s)

    def wait_s(self, rows: int) -> float:
        """Seconds the last of `rows` new rows would wait for its run to start; 0 without admission control,
        infinite when it would not go out with the next run and no run has been timed yet."""
        if not self.max_queue_wait_s:
            return 0.0
        ahead = self._queued_rows + self._held_rows
        if not self.cost.trained:
            fits = not ahead or ahead + rows <= self.max_rows
            return 0.0 if fits else math.inf
        # Ahead of its last rows: the queued and held ones, in runs of max_rows, the runs computing (half
        # done, on average), and its own first parts when it is split.
        queued = self.cost.seconds(ahead, math.ceil(ahead / self.max_rows))
        computing = self.cost.seconds(self._in_flight_rows, self._in_flight) / 2
        parts = (rows - 1) // self.max_rows if rows > 0 else 0
        own = self.cost.seconds(parts * self.max_rows, parts)
        return (queued + computing + own) / self.max_in_flight

    async def _submit(self, x: np.ndarray, deadline: float | None, record: tracing.RequestRecord | None) -> Outputs:
        if len(x) > self.max_rows:
            parts = [x[i : i + self.max_rows] for i in range(0, len(x), self.max_rows)]
            results = await asyncio.gather(*(self._submit(part, deadline, record) for part in parts))
            return [np.concatenate(outputs) for outputs in zip(*results, strict=True)]
        loop = asyncio.get_running_loop()
        traced = record is not None and record.traced
        waiting = _Waiting(
            x, loop.create_future(), time.perf_counter(), deadline, record, time.time_ns() if traced else 0
        )
        self._queue.append(waiting)
        self._queued_rows += len(x)
        if self._in_flight >= self.max_in_flight:
            pass  # a running batch's completion sends the queue
        elif self._queued_rows >= self.max_rows:
            self._dispatch(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._dispatch, loop)
        try:
            return await waiting.future
        except asyncio.CancelledError:  # the caller went away, or its deadline cancelled it
            self._withdraw(waiting)
            raise

    def _withdraw(self, waiting: _Waiting) -> None:
        if waiting.queued:
            waiting.queued = False
            self._queued_rows -= len(waiting.x)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight >= self.max_in_flight:
            return
        batch, rows = self._next_batch(loop.time())
        if not batch:
            return
        self._in_flight += 1
        self._in_flight_rows += rows
        started = time.perf_counter()
        waits = [started - item.since for item in batch]
        for item, wait in zip(batch, waits, strict=True):
            if item.record is not None:
                item.record.waited(wait)
        if tracing.ENABLED:
            self._trace_waits(batch, rows)
        x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
        future = loop.run_in_executor(self._executor, self._timed_run, x)
        dispatched_ns = time.time_ns() if tracing.ENABLED else 0
        future.add_done_callback(lambda done: self._finish(loop, batch, waits, done, dispatched_ns))

    def _next_batch(self, now: float) -> tuple[list[_Waiting], int]:
        """The waiting requests the next run takes, in order, skipping those that no longer want it."""
        batch: list[_Waiting] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if not item.queued or item.future.done():
                self._withdraw(self._queue.popleft())
            elif item.deadline is not None and item.deadline <= now:
                self._withdraw(self._queue.popleft())
                item.future.set_exception(ServiceError(504, "timeout", "the request's deadline passed in the queue"))
            elif rows + len(item.x) <= self.max_rows:
                self._withdraw(self._queue.popleft())
                batch.append(item)
                rows += len(item.x)
            else:
                break
        return batch, rows

    def _trace_waits(self, batch: list[_Waiting], rows: int) -> None:
        now, graph = time.time_ns(), self.traced_as.get("graph", "")
        for item in batch:
            if item.span is not None:
                # Few attributes: the SDK's cost grows with them, and the run span beside it names the model.
                attributes = {"graph": graph, "rows": len(item.x), "batch.rows": rows}
                tracing.finished_span("queue wait", item.span, item.since_ns, now, attributes)

    def _trace_run(self, batch: list[_Waiting], rows: int, run: tuple[int, int], error: bool) -> None:
        for item in batch:
            if item.span is not None:
                attributes = {**self.traced_as, "rows": len(item.x), "batch.rows": rows, "batch.requests": len(batch)}
                tracing.finished_span("onnxruntime run", item.span, *run, attributes, error)

    def _timed_run(self, x: np.ndarray) -> tuple[Outputs, float, tuple[int, int]]:
        """The outputs, the run's seconds, and its start and end on the wall clock (ns, for traces)."""
        started, started_ns = time.perf_counter(), time.time_ns()
        outputs = self.run(x)
        return outputs, time.perf_counter() - started, (started_ns, time.time_ns())

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        waits: list[float],
        done: asyncio.Future[tuple[Outputs, float, tuple[int, int]]],
        dispatched_ns: int,
    ) -> None:
        rows = sum(len(item.x) for item in batch)
        self._in_flight -= 1
        self._in_flight_rows -= rows
        error = done.exception()
        if tracing.ENABLED:
            ran = done.result()[2] if error is None else (dispatched_ns, time.time_ns())
            self._trace_run(batch, rows, ran, error is not None)
        if error is None:
            outputs, compute, _ = done.result()
            self.cost.observe(rows, compute)
            if self.observer is not None:
                self.observer.observe_batch(rows, waits, compute)
        start = 0
        for item in batch:
            stop = start + len(item.x)
            if not item.future.done():  # a client that went away has cancelled its future
                if error is None:
                    item.future.set_result([output[start:stop] for output in outputs])
                else:
                    item.future.set_exception(error)
            start = stop
        self._dispatch(loop)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
