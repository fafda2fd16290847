"""GET /metrics: what Prometheus reads, whatever names clients send."""

from __future__ import annotations

import httpx
import pytest

from service.metrics import UNKNOWN_MODEL
from tests.service.scrape import sample, samples

pytestmark = pytest.mark.anyio

HOSTILE = ["x%0Afake", 'a"b', "a%5Cb", "%E2%98%83", "nope"]


async def test_unknown_and_hostile_model_names_share_one_label(client: httpx.AsyncClient) -> None:
    await client.post("/models/first-unknown/score", json={"inputs": [0.0] * 5})
    before = sample((await client.get("/metrics")).text, "ae_requests_total", model=UNKNOWN_MODEL, operation="score")
    for name in HOSTILE:
        assert (await client.post(f"/models/{name}/score", json={"inputs": [0.0] * 5})).status_code == 404
    assert (await client.post("/score?model=x%0Ay", json={"inputs": [0.0] * 5})).status_code == 404
    grown = (await client.get("/metrics")).text
    for index in range(300):
        await client.post(f"/models/unknown-{index}/score", json={"inputs": [0.0] * 5})
    text = (await client.get("/metrics")).text

    # The parser refuses anything Prometheus would; every model label names a served model or the catch-all.
    labels = {dict(labels).get("model") for _, labels in samples(text)} - {None}
    assert labels <= {"tab", "conv", "vae", "zz-broken", UNKNOWN_MODEL}
    after = sample(text, "ae_requests_total", model=UNKNOWN_MODEL, operation="score")
    assert after - before == len(HOSTILE) + 1 + 300
    assert len(text) - len(grown) < 200  # 300 more unknown names added numbers, not series


async def test_loads_and_default_versions_are_exposed(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    assert sample(text, "ae_model_loads_total", model="tab", version="2", outcome="loaded") >= 1
    assert sample(text, "ae_model_loads_total", model="zz-broken", version="1", outcome="failed") >= 1
    assert sample(text, "ae_model_default_version", model="tab") == 2
    assert sample(text, "ae_model_default_version", model="zz-broken") == 0
