"""Score monitoring (service.monitoring): the statistics against scipy's, and the status a real app and a
real 2-worker server report for rows of the training distribution and for shifted rows."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from scipy import stats

from service import monitoring
from service.app import create_app
from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc
from service.monitoring import Window
from service.settings import Settings
from tests.service import monitored
from tests.service.registries import refreshed
from tests.service.servers import ROOT, free_port, running_server

WINDOW = 400
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def monitored_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return monitored.trained_once(tmp_path_factory.getbasetemp())


def build_app(models_dir: Path, **settings: Any) -> FastAPI:
    defaults: dict[str, Any] = {"providers": ("CPUExecutionProvider",), "intra_op_threads": 1}
    app = create_app(Settings(models_dir=models_dir, **(defaults | {"monitor_window": str(WINDOW)} | settings)))
    refreshed(app.state.registry)
    return app


@pytest.fixture
async def client(monitored_models: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(build_app(monitored_models), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def send(client: httpx.AsyncClient, model: str, rows: np.ndarray, path: str = "score") -> None:
    for chunk in np.array_split(rows, max(1, len(rows) // 40)):
        response = await client.post(f"/models/{model}/{path}", json={"inputs": chunk.tolist()})
        assert response.status_code == 200, response.text


async def status_of(client: httpx.AsyncClient, model: str) -> dict[str, Any]:
    response = await client.get(f"/models/{model}/monitoring")
    assert response.status_code == 200, response.text
    return response.json()


# --- the statistics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 10, 0.01), (3, 400, 0.01), (11, 500, 0.01), (40, 400, 0.01), (7, 7, 0.5)]
)
def test_binomial_p_value_is_scipys(k: int, n: int, p: float) -> None:
    assert monitoring.binomial_p_value(k, n, p) == pytest.approx(stats.binomtest(k, n, p).pvalue, rel=1e-6)


@pytest.mark.parametrize(
    ("k", "n", "alpha", "beta"), [(0, 10, 2.0, 50.0), (22, 1000, 9.99, 891.01), (5, 400, 1.5, 120.0)]
)
def test_beta_binomial_p_value_is_scipys(k: int, n: int, alpha: float, beta: float) -> None:
    pmf = stats.betabinom.pmf(np.arange(n + 1), n, alpha, beta)
    expected = pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()
    assert monitoring.beta_binomial_p_value(k, n, alpha, beta) == pytest.approx(expected, rel=1e-6)


def test_the_adjusted_test_allows_for_the_thresholds_own_error() -> None:
    # 22 of 1,000 rows above a 99% threshold set on 900 rows: unlikely for a known rate of 1%, not for a
    # rate known only from 900 rows.
    assert monitoring.binomial_p_value(22, 1000, 0.01) < monitoring.RATE_P_VALUE
    assert monitoring.beta_binomial_p_value(22, 1000, 900 - 0.99 * 899, 0.99 * 899 + 1) > 0.01


@pytest.mark.parametrize("x", [0.3, 0.7, 1.0, 1.36, 2.5])
def test_kolmogorov_tail_is_scipys(x: float) -> None:
    assert monitoring.kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), abs=1e-9)


def test_ks_of_binned_percentiles_matches_scipy_at_the_edges() -> None:
    # Percentiles on whole numbers: the binned distance is exactly scipy's against the uniform distribution.
    percentiles = np.random.default_rng(3).integers(1, 100, size=500).astype(np.float64)
    counts = np.bincount(np.searchsorted(monitoring.EDGES, percentiles), minlength=monitoring.BINS)
    distance, _ = monitoring.ks(counts)
    expected = stats.kstest(percentiles / 100, "uniform").statistic
    assert distance == pytest.approx(expected, abs=1e-9)


def test_psi() -> None:
    expected = np.array([0.5, 0.5])
    assert monitoring.psi(np.array([50.0, 50.0]), expected) == 0
    assert monitoring.psi(np.array([80.0, 20.0]), expected) == pytest.approx(0.3 * np.log(1.6) - 0.3 * np.log(0.4))


def reference(features: int) -> monitoring.Reference:
    names = [f"f{i}" for i in range(features)]
    return monitoring.Reference("m", 1, 0.01, 10.0, 990.0, [0.0] * len(monitoring.BUCKETS), names, None, "m@1@test")


@pytest.mark.parametrize("features", [3, monitoring.FEW_FEATURES + 5])
def test_recorded_rows_add_up_one_at_a_time_or_together(features: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(features)
    percentiles = rng.uniform(0, 100, 50).astype(np.float32)
    sq_err = rng.uniform(0, 1, (50, features)).astype(np.float32)
    sq_err[7] = 0  # a perfect reconstruction adds no share
    window = Window(rows=1000)
    for folder, chunks in ((tmp_path / "one", 50), (tmp_path / "all", 1)):
        recorder = monitoring.Recorder(reference(features), window, folder)
        for p, e in zip(np.array_split(percentiles, chunks), np.array_split(sq_err, chunks), strict=True):
            recorder.record(p, p > 99, e)
    one, together = (monitoring.report(reference(features), window, tmp_path / name) for name in ("one", "all"))
    expected_shares = (sq_err / np.maximum(sq_err.sum(axis=1, keepdims=True), 1e-30)).sum(axis=0) / 50
    for answer in (one, together):
        assert answer["window"]["rows_seen"] == 50
        assert answer["anomaly_rate"]["flagged"] == int((percentiles > 99).sum())
        assert [b["rows"] for b in answer["histogram"]] == [b["rows"] for b in one["histogram"]]
        shares = {f["name"]: f["share"] for f in answer["features"]["shares"]}
        np.testing.assert_allclose([shares[f"f{i}"] for i in range(features)], expected_shares, rtol=1e-5)
    cumulative = np.cumsum([b["rows"] for b in one["histogram"]])[:-1]
    assert list(cumulative) == [int((percentiles <= b).sum()) for b in monitoring.BUCKETS]


def test_a_window_of_seconds_forgets_older_rows(tmp_path: Path) -> None:
    window = Window(seconds=30)
    recorder = monitoring.Recorder(reference(2), window, tmp_path)
    recorder.record(np.full(120, 50, np.float32), np.zeros(120, bool), np.ones((120, 2), np.float32))
    now = time.time()
    assert monitoring.report(reference(2), window, tmp_path, now)["window"]["rows_seen"] == 120
    later = monitoring.report(reference(2), window, tmp_path, now + 31)
    assert later["window"]["rows_seen"] == 0
    assert later["status"] == "no_data"
    assert later["totals"]["rows"] == 120  # the counters keep them


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("1000", Window(rows=1000)),
        ("350 rows", Window(rows=350)),
        ("30s", Window(seconds=30)),
        ("5m", Window(seconds=300)),
    ],
)
def test_window_parses(text: str, window: Window) -> None:
    assert Window.parse(text) == window


@pytest.mark.parametrize("text", ["", "ten", "-5", "1.5", "5 days", "250"])
def test_a_bad_window_stops_the_start(text: str, monitored_models: Path) -> None:
    with pytest.raises(ValidationError, match="window"):
        Settings(models_dir=monitored_models, monitor_window=text)


def test_p_values_of_large_windows_take_the_normal_approximation() -> None:
    """Past EXACT_ROWS the tests are closed-form (an exact one over millions of rows took seconds): they meet
    the exact ones at the border, and stay fast however many rows the window holds."""
    from service import monitoring

    n = monitoring.EXACT_ROWS
    for rate in (0.0104, 0.0106):
        k = round(n * rate)
        exact, approximate = monitoring.binomial_p_value(k, n, 0.01), monitoring.binomial_p_value(k, n + 1, 0.01)
        assert approximate == pytest.approx(exact, rel=0.1)
        exact = monitoring.beta_binomial_p_value(k, n, 9.0, 891.0)
        assert monitoring.beta_binomial_p_value(k, n + 1, 9.0, 891.0) == pytest.approx(exact, rel=0.1)
    started = time.perf_counter()
    assert monitoring.beta_binomial_p_value(200_000, 10_000_000, 900.0, 89_100.0) < 1e-6
    assert time.perf_counter() - started < 0.5


def test_settings_leave_prometheus_client_unimported() -> None:
    # prometheus_client picks in-memory or multiprocess values when first imported: python -m service reads
    # its settings before it sets PROMETHEUS_MULTIPROC_DIR, so they must not import it (through the window).
    code = "import sys, service.settings; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


# --- a real app ------------------------------------------------------------------------------------------


async def test_normal_rows_keep_ok_and_a_scaled_feature_turns_drift_naming_it(client: httpx.AsyncClient) -> None:
    assert (await status_of(client, "sensor"))["status"] == "no_data"
    await send(client, "sensor", monitored.table_rows(WINDOW, seed=1))
    normal = await status_of(client, "sensor")
    assert normal["status"] == "ok", normal["reasons"]
    assert normal["window"]["rows_seen"] == WINDOW
    assert normal["psi"] < monitoring.PSI_WARNING
    assert normal["features"]["drifted"] == []

    await send(client, "sensor", monitored.scaled_feature(monitored.table_rows(WINDOW, seed=2)))
    shifted = await status_of(client, "sensor")
    assert shifted["status"] == "drift"
    assert shifted["psi"] >= monitoring.PSI_DRIFT
    assert shifted["features"]["drifted"] == [monitored.SHIFTED_FEATURE]
    assert shifted["features"]["shares"][0]["name"] == monitored.SHIFTED_FEATURE
    assert shifted["anomaly_rate"]["observed"] > 3 * shifted["anomaly_rate"]["expected"]
    assert shifted["totals"] == {"rows": 2 * WINDOW, "flagged": shifted["totals"]["flagged"]}

    # The window moves on: normal rows again bring it back.
    await send(client, "sensor", monitored.table_rows(WINDOW + 40, seed=3))
    assert (await status_of(client, "sensor"))["status"] == "ok"


async def test_inverted_and_noise_images_turn_drift(client: httpx.AsyncClient) -> None:
    await send(client, "bars", monitored.image_rows(WINDOW, seed=1))
    normal = await status_of(client, "bars")
    assert normal["status"] == "ok", normal["reasons"]
    assert normal["features"] is None  # images: no per-feature story
    await send(client, "bars", monitored.inverted(monitored.image_rows(WINDOW, seed=2)), path="reconstruct")
    assert (await status_of(client, "bars"))["status"] == "drift"
    await send(client, "bars", monitored.image_rows(WINDOW + 40, seed=3))
    assert (await status_of(client, "bars"))["status"] == "ok"
    noise = np.random.default_rng(4).integers(0, 256, size=(WINDOW, monitored.SIDE, monitored.SIDE))
    await send(client, "bars", noise.astype(np.float32))
    assert (await status_of(client, "bars"))["status"] == "drift"


async def test_the_histogram_compares_live_shares_with_the_reference(client: httpx.AsyncClient) -> None:
    await send(client, "sensor", monitored.table_rows(WINDOW, seed=5))
    histogram = (await status_of(client, "sensor"))["histogram"]
    assert [bucket["le_percentile"] for bucket in histogram] == [*monitoring.BUCKETS, None]
    assert sum(bucket["reference"] for bucket in histogram) == pytest.approx(1)
    assert sum(bucket["rows"] for bucket in histogram) == WINDOW
    scores = [bucket["le_score"] for bucket in histogram[:-1]]
    assert scores == sorted(scores)
    for bucket in histogram:
        assert bucket["live"] == pytest.approx(bucket["reference"], abs=0.08)


async def test_metrics_carry_the_counters_histogram_and_status(client: httpx.AsyncClient) -> None:
    await send(client, "sensor", monitored.scaled_feature(monitored.table_rows(WINDOW, seed=6)))
    text = (await client.get("/metrics")).text
    labels = '{model="sensor",version="1"}'
    assert f"ae_scored_rows_total{labels} {WINDOW}.0" in text
    assert f"ae_monitor_status{labels} 2.0" in text
    assert f'ae_score_percentile_bucket{{le="+Inf",model="sensor",version="1"}} {WINDOW}.0' in text
    flagged = float(re.search(rf"ae_flagged_rows_total{re.escape(labels)} (\S+)", text)[1])  # type: ignore[index]
    assert 3 * 0.01 * WINDOW < flagged <= WINDOW
    assert 'ae_monitor_window_rows{model="bars",version="1"} 0.0' in text
    assert 'ae_monitor_status{model="bars",version="1"} -1.0' in text


async def test_every_protocol_is_recorded(client: httpx.AsyncClient) -> None:
    # REST /score and /reconstruct are in the tests above; V2 inference (HTTP here, gRPC through the same
    # service.v2_infer) scores through the same data plane.
    rows = monitored.table_rows(30, seed=8)
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    response = await client.post("/v2/models/sensor/infer", json={"inputs": [tensor], "outputs": [{"name": "score"}]})
    assert response.status_code == 200, response.text
    await send(client, "sensor", rows, path="reconstruct")
    assert (await status_of(client, "sensor"))["totals"]["rows"] == 60
    # Outputs that need no score compute none, and record nothing.
    response = await client.post("/v2/models/sensor/infer", json={"inputs": [tensor], "outputs": [{"name": "z"}]})
    assert response.status_code == 200, response.text
    assert (await status_of(client, "sensor"))["totals"]["rows"] == 60


async def test_per_version_and_unknown_models(client: httpx.AsyncClient) -> None:
    assert (await client.get("/models/sensor/versions/1/monitoring")).json()["model"] == "sensor"
    for path in (
        "/models/nope/monitoring",
        "/models/sensor/versions/9/monitoring",
        "/models/sensor/versions/x/monitoring",
    ):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] in ("model_not_found", "version_not_found")


async def test_monitoring_off(monitored_models: Path) -> None:
    app = build_app(monitored_models, monitor_window="0")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        await send(client, "sensor", monitored.table_rows(40, seed=1))
        answer = await status_of(client, "sensor")
        assert answer["status"] == "off"
        lines = (await client.get("/metrics")).text.splitlines()
        assert not [line for line in lines if line.startswith(("ae_monitor_", "ae_scored_rows"))]


# --- a real server of two workers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def two_workers(
    monitored_models: Path, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    env = {"AE_MONITOR_WINDOW": str(WINDOW), "AE_GRPC_PORT": str(grpc_port)}
    with running_server(monitored_models, log, "--workers", "2", env=env) as client:
        yield client


@pytest.mark.e2e
def test_grpc_inference_is_recorded(two_workers: httpx.Client, grpc_port: int) -> None:
    rows = monitored.image_rows(30, seed=12)
    contents = pb.InferTensorContents(fp32_contents=rows.ravel().tolist())
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(rows.shape), contents=contents)
    request = pb.ModelInferRequest(model_name="bars", inputs=[tensor], outputs=[{"name": "score"}])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    answer = two_workers.get("/models/bars/monitoring").json()
    assert answer["totals"]["rows"] == answer["window"]["rows_seen"] == 30


def send_spread(client: httpx.Client, model: str, rows: np.ndarray) -> None:
    """Sends the rows on a new connection per request: the kernel spreads connections over the workers."""
    for chunk in np.array_split(rows, max(1, len(rows) // 20)):
        response = client.post(
            f"/models/{model}/score", json={"inputs": chunk.tolist()}, headers={"Connection": "close"}
        )
        assert response.status_code == 200, response.text


@pytest.mark.e2e
def test_two_workers_merge_their_windows(two_workers: httpx.Client) -> None:
    send_spread(two_workers, "sensor", monitored.table_rows(WINDOW, seed=1))
    normal = two_workers.get("/models/sensor/monitoring").json()
    assert normal["window"]["workers"] == 2  # both workers scored rows, and every answer merges both
    assert normal["window"]["rows_seen"] == WINDOW
    assert normal["status"] == "ok", normal["reasons"]

    send_spread(two_workers, "sensor", monitored.scaled_feature(monitored.table_rows(WINDOW, seed=2)))
    # Whichever worker answers, it sees the other's rows: ask on fresh connections.
    for _ in range(6):
        shifted = two_workers.get("/models/sensor/monitoring", headers={"Connection": "close"}).json()
        assert shifted["status"] == "drift"
        assert shifted["features"]["drifted"] == [monitored.SHIFTED_FEATURE]
        assert shifted["totals"]["rows"] == 2 * WINDOW
    text = two_workers.get("/metrics").text
    assert f'ae_scored_rows_total{{model="sensor",version="1"}} {2 * WINDOW}.0' in text
    assert 'ae_monitor_status{model="sensor",version="1"} 2.0' in text
