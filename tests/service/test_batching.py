"""Dynamic batching: concurrent requests share onnxruntime runs, and each caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.batching import Batcher, CostModel, deadline_at
from service.errors import ServiceError
from service.routes import deadline
from tests.service.conftest import AppMaker
from tests.service.scrape import sample

pytestmark = pytest.mark.anyio

BATCH_ROWS = 16


@pytest.fixture(scope="module")
def batching_app(make_app: AppMaker) -> FastAPI:
    # A long wait and a small batch: concurrent requests surely share runs, and big ones are split.
    return make_app(batch_rows=BATCH_ROWS, batch_wait_ms=20)


@pytest.fixture
async def batching_client(batching_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(batching_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_concurrent_requests_get_their_own_rows(
    batching_app: FastAPI, batching_client: httpx.AsyncClient
) -> None:
    rng = np.random.default_rng(7)
    sizes = [1, 3, 1, 40, 7, 1, 16, 2, 17, 1, 5, 33, 1, 1, 9, 4] * 2
    requests = [(rng.normal(size=(n, 5)) + 3.0).astype(np.float32) for n in sizes]
    answers = await asyncio.gather(
        *(
            batching_client.post("/score?model=tab", json={"inputs": x.tolist(), "return_sq_err": True})
            for x in requests
        )
    )
    runtime = batching_app.state.registry.runtime("tab")
    for x, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        alone = [runtime.score(row[np.newaxis]) for row in x]
        np.testing.assert_allclose(body["scores"], [s.score[0] for s in alone], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(body["sq_err"], [s.sq_err[0] for s in alone], rtol=1e-5, atol=1e-6)

    metrics = (await batching_client.get("/metrics")).text
    graph = {"model": "tab", "version": "2", "graph": "scorer"}
    rows, runs = (sample(metrics, f"ae_batch_rows_{part}", **graph) for part in ("sum", "count"))
    assert rows == sum(sizes)
    assert runs < len(sizes)  # requests shared runs
    assert sample(metrics, "ae_batch_rows_bucket", **graph, le=f"{float(BATCH_ROWS)}") == runs


async def test_a_request_larger_than_a_batch_is_split_in_order() -> None:
    seen: list[int] = []

    def double(x: np.ndarray) -> list[np.ndarray]:
        seen.append(len(x))
        return [x * 2, x.sum(axis=1)]

    batcher = Batcher(double, max_rows=4, max_wait_s=0.0)
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    doubled, sums = await batcher.submit(x)
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(sums, x.sum(axis=1))
    assert sorted(seen, reverse=True) == [4, 4, 2]
    batcher.close()


async def test_a_failed_run_fails_every_request_of_its_batch_and_the_next_one_works() -> None:
    def flaky(x: np.ndarray) -> list[np.ndarray]:
        if (x < 0).any():
            raise RuntimeError("negative")
        return [x]

    batcher = Batcher(flaky, max_rows=8, max_wait_s=0.01)
    results = await asyncio.gather(
        batcher.submit(np.ones((1, 2))), batcher.submit(-np.ones((1, 2))), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    (out,) = await batcher.submit(np.full((2, 2), 3.0))
    np.testing.assert_array_equal(out, np.full((2, 2), 3.0))
    batcher.close()


async def test_metrics_count_requests_errors_and_latency(client: httpx.AsyncClient) -> None:
    await client.post("/models/tab/score", json={"inputs": [1.0] * 5})
    await client.post("/models/tab/score", json={"inputs": [1.0] * 4})
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "ae_requests_total", model="tab", operation="score") >= 2
    assert sample(text, "ae_request_errors_total", model="tab", operation="score", status="422") >= 1
    assert sample(text, "ae_request_seconds_count", model="tab", operation="score") >= 2
    for name in ("ae_queue_seconds", "ae_compute_seconds", "ae_batch_rows"):
        assert f"# TYPE {name} histogram" in text


async def test_two_batches_in_flight_still_return_each_callers_rows() -> None:
    batcher = Batcher(lambda x: [x * 3], max_rows=5, max_wait_s=0.0, max_in_flight=2)
    inputs = [np.full((n, 2), float(i)) for i, n in enumerate([1, 4, 2, 7, 3, 1, 5])]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    for x, (out,) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out, x * 3)
    batcher.close()


async def test_requests_that_could_not_start_within_the_budget_are_refused_at_once() -> None:
    seconds_per_batch, budget = 0.05, 0.2

    def slow(x: np.ndarray) -> list[np.ndarray]:
        time.sleep(seconds_per_batch)
        return [x]

    batcher = Batcher(slow, max_rows=4, max_wait_s=0.0, max_queue_wait_s=budget)
    await batcher.submit(np.ones((4, 1)))  # one run teaches it the cost of a row

    async def timed(x: np.ndarray) -> tuple[float, object]:
        started = time.perf_counter()
        try:
            await batcher.submit(x)
        except ServiceError as error:
            return time.perf_counter() - started, error
        return time.perf_counter() - started, None

    # 40 batches' worth at once: ~2 s of work against a 0.2 s budget.
    results = await asyncio.gather(*(timed(np.ones((4, 1))) for _ in range(40)))
    refused = [(seconds, error) for seconds, error in results if isinstance(error, ServiceError)]
    served = [seconds for seconds, error in results if error is None]
    assert refused and served
    assert all(e.status == 503 and e.code == "overloaded" and int(e.headers["Retry-After"]) >= 1 for _, e in refused)
    # Generous margins for a busy machine: without admission control the last would wait about 2 s.
    assert max(seconds for seconds, _ in refused) < 0.05  # refused at once, not after queueing
    assert max(served) < budget + 6 * seconds_per_batch  # who got in started within the budget (plus timer noise)
    batcher.close()


def test_the_cost_model_tells_the_cost_of_a_run_from_the_cost_of_a_row() -> None:
    cost = CostModel()
    for rows in (1, 64, 16, 1, 64):  # a run costs 20 ms, and a row 0.1 ms more
        cost.observe(rows, 0.020 + 0.0001 * rows)
    # 256 queued rows go out as 4 runs of 64: 4 x 20 ms + 256 x 0.1 ms, not 256 x what a one-row run cost.
    assert cost.seconds(256, 4) == pytest.approx(0.1056, rel=1e-6)

    same_size = CostModel()
    for _ in range(3):
        same_size.observe(8, 0.016)
    assert same_size.seconds(16, 2) == pytest.approx(0.032)  # one size of run: a cost per row alone


class _Gate:
    """A graph run that blocks until released, recording the rows of every run it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()  # a run has started
        self.runs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.entered.set()
        self.release.wait(timeout=30)
        self.runs.append(x.copy())
        return [x * 2]


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition was not met in time"
        await asyncio.sleep(0.005)


def _busy_batcher(gate: _Gate, budget: float = 60.0) -> Batcher:
    batcher = Batcher(gate, max_rows=4, max_wait_s=0.0, max_queue_wait_s=budget)
    batcher.cost.observe(4, 0.1)  # priced: a run of 4 rows costs 0.1 s
    return batcher


async def test_rows_whose_deadline_passes_in_the_queue_are_neither_computed_nor_counted() -> None:
    gate = _Gate()
    batcher = _busy_batcher(gate)
    running = asyncio.ensure_future(batcher.submit(np.full((4, 1), 1.0)))  # occupies the one run in flight
    await _until(gate.entered.is_set)

    async def with_deadline() -> object:
        async with deadline(0.05):  # the routes' deadline: a timeout, and the batchers told when it ends
            return await batcher.submit(np.full((3, 1), 2.0))

    late = asyncio.ensure_future(with_deadline())
    await _until(lambda: batcher.queued_rows == 3)
    with pytest.raises(ServiceError) as timed_out:
        await late
    assert (timed_out.value.status, timed_out.value.code) == (504, "timeout")
    assert batcher.queued_rows == 0  # no longer ahead of anyone
    assert batcher.wait_s(1) == pytest.approx(0.05)  # only the run computing, half done on average

    gate.release.set()
    (out,) = await running
    np.testing.assert_array_equal(out, np.full((4, 1), 2.0))
    (fresh,) = await batcher.submit(np.full((1, 1), 5.0))
    np.testing.assert_array_equal(fresh, [[10.0]])
    assert [run[:, 0].tolist() for run in gate.runs] == [[1.0] * 4, [5.0]]  # the expired rows never ran
    batcher.close()


async def test_an_expired_request_still_queued_is_dropped_when_its_batch_goes_out() -> None:
    gate = _Gate()
    batcher = _busy_batcher(gate)
    running = asyncio.ensure_future(batcher.submit(np.full((4, 1), 1.0)))
    await _until(gate.entered.is_set)
    loop = asyncio.get_running_loop()
    with deadline_at(loop.time()):  # no timeout cancels it: the batcher alone sees the deadline pass
        expired = asyncio.ensure_future(batcher.submit(np.full((2, 1), 3.0)))
    kept = asyncio.ensure_future(batcher.submit(np.full((2, 1), 4.0)))
    await _until(lambda: batcher.queued_rows == 4)
    gate.release.set()
    with pytest.raises(ServiceError) as dropped:
        await expired
    assert (dropped.value.status, dropped.value.code) == (504, "timeout")
    (out,) = await kept
    np.testing.assert_array_equal(out, np.full((2, 1), 8.0))
    await running
    assert [run[:, 0].tolist() for run in gate.runs] == [[1.0] * 4, [4.0, 4.0]]
    batcher.close()


async def test_a_cancelled_waiter_leaves_the_queue_at_once() -> None:
    gate = _Gate()
    batcher = _busy_batcher(gate)
    running = asyncio.ensure_future(batcher.submit(np.full((4, 1), 1.0)))
    await _until(gate.entered.is_set)
    waiters = [asyncio.ensure_future(batcher.submit(np.full((4, 1), float(i)))) for i in (2, 3, 4)]
    await _until(lambda: batcher.queued_rows == 12)
    waiters[1].cancel()  # the client of the middle one went away
    await _until(lambda: waiters[1].done())
    assert batcher.queued_rows == 8
    gate.release.set()
    results = await asyncio.gather(running, waiters[0], waiters[2])
    assert [out[0][0, 0] for out in results] == [2.0, 4.0, 8.0]
    assert [run[0, 0] for run in gate.runs] == [1.0, 2.0, 4.0]
    batcher.close()


async def test_admission_prices_the_queue_the_runs_computing_and_a_split_requests_own_parts() -> None:
    gate = _Gate()
    batcher = _busy_batcher(gate, budget=0.25)
    batcher.cost.observe(1, 0.025)  # with the run of 4 rows in 0.1 s: no fixed part, 0.025 s a row
    running = asyncio.ensure_future(batcher.submit(np.ones((4, 1))))
    await _until(gate.entered.is_set)
    assert batcher.wait_s(1) == pytest.approx(0.05)  # the run computing, half done on average
    assert batcher.wait_s(9) == pytest.approx(0.05 + 0.2)  # and its own first two parts of 4 rows
    batcher.admit(4)
    with pytest.raises(ServiceError) as refused:
        batcher.admit(40)
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    gate.release.set()
    await running
    batcher.close()


async def test_before_any_run_is_timed_only_what_goes_out_with_the_next_run_is_admitted() -> None:
    gate = _Gate()
    batcher = Batcher(gate, max_rows=4, max_wait_s=0.0, max_queue_wait_s=1.0)
    running = asyncio.ensure_future(batcher.submit(np.ones((4, 1))))
    await _until(gate.entered.is_set)
    queued = asyncio.ensure_future(batcher.submit(np.ones((3, 1))))  # the next run
    await _until(lambda: batcher.queued_rows == 3)
    batcher.admit(1)  # still fits in the next run
    with pytest.raises(ServiceError) as refused:
        batcher.admit(2)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    gate.release.set()
    await asyncio.gather(running, queued)
    assert batcher.cost.trained
    batcher.close()


def test_the_queue_is_a_deque() -> None:
    batcher = Batcher(lambda x: [x], max_rows=4, max_wait_s=0.0)
    assert isinstance(batcher._queue, collections.deque)
    batcher.close()


def test_models_are_priced_when_loaded(app: FastAPI) -> None:
    # Timed runs at load: admission knows what a run costs before the first request, so a burst at
    # start-up is priced instead of being let in whole (or refused beyond the first run).
    runtime = app.state.registry.runtime("conv")
    assert all(batcher.cost.trained for batcher in runtime._batchers.values())


async def test_rows_held_while_a_body_arrives_count_ahead_until_they_join_the_queue() -> None:
    gate = _Gate()
    batcher = _busy_batcher(gate)
    gate.release.set()
    assert batcher.wait_s(1) == 0.0
    with batcher.hold(4):  # failed before its rows were queued: released at the end
        assert batcher.wait_s(1) == pytest.approx(0.1)
    assert batcher.wait_s(1) == 0.0
    with batcher.hold(8):  # a request admitted from its headers, its body on the way
        assert batcher.wait_s(1) == pytest.approx(0.2)  # two runs of 4 rows at 0.1 s ahead of the next one
        (out,) = await batcher.submit(np.ones((8, 1)))  # its rows take the place of what it held
        np.testing.assert_array_equal(out, np.full((8, 1), 2.0))
        assert batcher.wait_s(1) == 0.0
    assert batcher.wait_s(1) == 0.0
    batcher.close()
