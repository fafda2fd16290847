"""The local engine: the dataset's tables go through Scorers on this machine's cores, in order.

Threads share one Scorer (onnxruntime runs release the GIL, and so does most of Arrow's and numpy's work);
processes hold one each. A few tables per worker are in flight at once, so memory follows `batch_rows` and
the worker count, never the dataset's size."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow as pa

from service.batch.core import IMAGE_PATH, Job, Scorer
from service.batch.errors import BatchError, RowError
from service.batch.progress import Progress
from service.batch.sinks import Sink
from service.batch.sources import Chunk

IN_FLIGHT_PER_WORKER = 2
Score = Callable[[pa.Table], pa.Table]


def run(job: Job, chunks: Iterable[Chunk], workers: int, parallelism: str, sink: Sink, progress: Progress) -> None:
    with _pool(job, workers, parallelism) as (pool, score):
        pending: deque[tuple[Chunk, Future[pa.Table]]] = deque()
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(score, chunk.table)))
                while len(pending) > IN_FLIGHT_PER_WORKER * workers:
                    _finish(*pending.popleft(), sink, progress)
            while pending:
                _finish(*pending.popleft(), sink, progress)
        finally:
            for _, future in pending:
                future.cancel()


def _finish(chunk: Chunk, future: Future[pa.Table], sink: Sink, progress: Progress) -> None:
    try:
        table = future.result()
    except RowError as exc:
        raise BatchError(located(chunk, exc)) from None
    sink.write(table)
    progress.advance(table.num_rows)


def located(chunk: Chunk, exc: RowError) -> str:
    """The message naming the file and row: an image folder's row is its file."""
    if IMAGE_PATH in chunk.table.column_names:
        return exc.why  # it starts with the image's path
    return f"{chunk.file}, row {chunk.first_row + exc.row}: {exc.why}"


@contextmanager
def _pool(job: Job, workers: int, parallelism: str) -> Iterator[tuple[Executor, Score]]:
    if parallelism == "thread":
        scorer = Scorer(job)
        with ThreadPoolExecutor(workers, thread_name_prefix="batch") as threads:
            yield threads, scorer
        return
    # spawn, not fork: the parent may hold onnxruntime's and Arrow's thread pools, which fork does not copy.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as processes:
        yield processes, _score_in_worker


# A worker process's one Scorer, built by the pool's initializer (the per-process state the pool gives no
# other place to keep).
_worker_scorer: Scorer | None = None


def _start_worker(job: Job) -> None:
    global _worker_scorer
    _worker_scorer = Scorer(job)


def _score_in_worker(table: pa.Table) -> pa.Table:
    assert _worker_scorer is not None
    return _worker_scorer(table)
