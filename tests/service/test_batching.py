"""Dynamic batching: concurrent requests share onnxruntime runs, and each caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.batching import Batcher, CostModel
from service.errors import ServiceError
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
    assert max(seconds for seconds, _ in refused) < 0.01  # refused at once, not after queueing
    assert max(served) < budget + 3 * seconds_per_batch  # who got in started within the budget (plus timer noise)
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
