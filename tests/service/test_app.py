"""The application as a whole: lifespan and readiness, unexpected errors, providers, the OpenAPI page."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.routes.rest import OPERATIONS, STYLES
from service.runtime import ModelRuntime
from service.settings import Settings

pytestmark = pytest.mark.anyio


async def test_readiness_waits_for_every_model(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_load = ModelRuntime.load

    def held_load(self: ModelRuntime) -> None:
        release.wait(timeout=30)
        real_load(self)

    monkeypatch.setattr(ModelRuntime, "load", held_load)
    app = create_app(Settings(models_dir=models_dir, providers=("CPUExecutionProvider",)))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client,
    ):
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200
        loading = await client.post("/models/tab/score", json={"inputs": [0.0] * 5})
        assert loading.status_code == 503
        assert loading.json()["error"] == {"code": "model_unavailable", "message": "model tab/2 is still loading"}

        release.set()
        with anyio.fail_after(30):
            while (await client.get("/readyz")).status_code != 200:
                await anyio.sleep(0.05)
        assert (await client.post("/models/tab/score", json={"inputs": [0.0] * 5})).status_code == 200


async def test_unexpected_error_is_a_logged_generic_500(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = app.state.registry.runtime("tab")

    async def broken(x: np.ndarray) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runtime, "score_batched", broken)
    with caplog.at_level(logging.ERROR, logger="service"):
        response = await client.post("/models/tab/score", json={"inputs": [0.0] * 5})

    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "secret internals" not in response.text
    assert any("secret internals" in str(r.exc_info) for r in caplog.records)
    monkeypatch.undo()
    assert (await client.post("/models/tab/score", json={"inputs": [0.0] * 5})).status_code == 200


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA would not fall back")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
async def test_cuda_falling_back_to_cpu_is_reported(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(providers=("CUDAExecutionProvider",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        described = (await client.get("/models/tab/versions/1")).json()
    assert described["requested_providers"] == ["CUDAExecutionProvider"]
    assert described["providers"] == ["CPUExecutionProvider"]
    assert described["provider_fallback"] is True


async def test_openapi_documents_every_route_with_examples_the_served_models_accept(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    operations = {(method.upper(), path): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    served = {m["name"]: m["version"] for m in (await client.get("/models")).json()["models"] if m["default"]}

    tried = 0
    for operation in OPERATIONS:
        for prefix in STYLES:
            path = f"{prefix}/{operation}"
            documented = operations["POST", path]
            names = {p["name"] for p in documented["parameters"]}
            assert names == ({"model"} if prefix == "/models/{model}" else {"model", "version"}), path
            examples = documented["requestBody"]["content"]["application/json"]["examples"]
            assert examples, path
            for model, example in examples.items():
                url = path.replace("{model}", model).replace("{version}", str(served[model]))
                answer = await client.post(url, json=example["value"])
                assert answer.status_code == 200, (url, answer.text)
                assert answer.json()["model"] == model
                tried += 1
    assert tried > len(OPERATIONS) * len(STYLES)  # by-name routes show an example per served model
    assert {("GET", p) for p in ("/models", "/models/{model}", "/healthz", "/readyz")} <= set(operations)
    uploads = operations["POST", "/score"]["requestBody"]["content"]
    assert "multipart/form-data" in uploads
    assert "image/png" in operations["POST", "/generate"]["responses"]["200"]["content"]
    assert (await client.get("/docs")).status_code == 200


async def test_a_request_over_its_deadline_gets_504(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(request_timeout_s=0.2)
    runtime = app.state.registry.runtime("tab")

    async def stuck(x: np.ndarray) -> None:
        await anyio.sleep(5)

    monkeypatch.setattr(runtime, "score_batched", stuck)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        with anyio.fail_after(3):
            rest = await client.post("/models/tab/score", json={"inputs": [0.0] * 5})
            v2 = await client.post(
                "/v2/models/tab/infer",
                json={"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}]},
            )
    message = "the request took longer than 0.2 s"
    assert (rest.status_code, rest.json()) == (504, {"error": {"code": "timeout", "message": message}})
    assert (v2.status_code, v2.json()) == (504, {"error": message})
