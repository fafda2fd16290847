"""The routes' numbers, checked against the PyTorch model the package was exported from."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.service.reference import torch_reference
from training.models import load_checkpoint

pytestmark = pytest.mark.anyio

ATOL, RTOL = 1e-4, 1e-3


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["tab", "conv", "vae"])
async def test_reconstruct_and_score_match_pytorch(
    client: httpx.AsyncClient, models_dir: Path, name: str, tabular_rows: np.ndarray, image_rows: np.ndarray
) -> None:
    x = tabular_rows if name == "tab" else image_rows
    want_x_hat, want_score = torch_reference(models_dir / name / "1", x)

    reconstructed = await post(client, f"/models/{name}/versions/1/reconstruct", {"inputs": x.tolist()})
    scored = await post(client, f"/score?model={name}&version=1", {"inputs": x.tolist(), "return_sq_err": True})

    np.testing.assert_allclose(reconstructed["reconstructions"], want_x_hat, atol=ATOL * 255, rtol=RTOL)
    np.testing.assert_allclose(reconstructed["scores"], want_score, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(scored["scores"], want_score, atol=ATOL, rtol=RTOL)
    # The score is the mean of the per-feature errors it came with.
    sq_err = np.asarray(scored["sq_err"])
    assert sq_err.shape == x.shape
    np.testing.assert_allclose(sq_err.reshape(len(x), -1).mean(axis=1), scored["scores"], rtol=1e-5)
    assert scored["is_anomaly"] == [s > scored["threshold"] for s in scored["scores"]]


@pytest.mark.parametrize("name", ["tab", "conv", "vae"])
async def test_encode_then_decode_equals_reconstruct(
    client: httpx.AsyncClient, name: str, tabular_rows: np.ndarray, image_rows: np.ndarray
) -> None:
    x = (tabular_rows if name == "tab" else image_rows).tolist()
    encoded = await post(client, f"/models/{name}/encode", {"inputs": x})
    decoded = await post(client, f"/models/{name}/decode", {"latents": encoded["latents"]})
    reconstructed = await post(client, f"/models/{name}/reconstruct", {"inputs": x})
    np.testing.assert_allclose(decoded["reconstructions"], reconstructed["reconstructions"], atol=1e-3, rtol=RTOL)


async def test_routes_agree_with_onnxruntime_on_the_graph_files(
    client: httpx.AsyncClient, models_dir: Path, tabular_rows: np.ndarray
) -> None:
    folder = models_dir / "tab" / "1"
    scorer = ort.InferenceSession(str(folder / "scorer.onnx"), providers=["CPUExecutionProvider"])
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    x_hat, score, _ = scorer.run(None, {"x": tabular_rows})
    (z,) = encoder.run(None, {"x": tabular_rows})

    body = {"inputs": tabular_rows.tolist()}
    reconstructed = await post(client, "/reconstruct?model=tab&version=1", body)
    encoded = await post(client, "/encode?model=tab&version=1", body)

    np.testing.assert_allclose(reconstructed["reconstructions"], x_hat, rtol=1e-6)
    np.testing.assert_allclose(reconstructed["scores"], score, rtol=1e-6)
    np.testing.assert_allclose(encoded["latents"], z, rtol=1e-6)
    # ...and the numpy definition of the score: MSE in normalised space (tab box-scales each feature).
    _, norm = load_checkpoint(folder / "checkpoint.pt")
    offset, scale = np.asarray(norm["offset"]), np.asarray(norm["scale"])
    mse = ((((tabular_rows - offset) / scale) - (x_hat - offset) / scale) ** 2).mean(axis=1)
    np.testing.assert_allclose(reconstructed["scores"], mse, atol=1e-5, rtol=1e-4)


async def test_single_row_without_outer_list(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    one = await post(client, "/score?model=tab", {"inputs": tabular_rows[0].tolist()})
    batch = await post(client, "/score?model=tab", {"inputs": tabular_rows[:1].tolist()})
    assert one["scores"] == batch["scores"]
    assert len(one["scores"]) == 1


async def test_defaults_are_first_name_and_highest_version(client: httpx.AsyncClient) -> None:
    answer = await post(client, "/models/tab/encode", {"inputs": [1.0] * 5})
    assert (answer["model"], answer["version"]) == ("tab", 2)
    answer = await post(client, "/encode", {"inputs": np.zeros((8, 8)).tolist()})
    assert (answer["model"], answer["version"]) == ("conv", 1)


async def test_vae_encode_returns_logvar_on_request(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    plain = await post(client, "/models/vae/encode", {"inputs": image_rows.tolist()})
    both = await post(client, "/models/vae/encode", {"inputs": image_rows.tolist(), "return_logvar": True})
    assert "logvar" not in plain
    assert np.asarray(both["logvar"]).shape == (3, 2)
    assert both["latents"] == plain["latents"]


async def test_vae_generates_from_the_standard_normal(client: httpx.AsyncClient) -> None:
    first = await post(client, "/models/vae/generate", {"n": 5, "seed": 7})
    again = await post(client, "/models/vae/generate", {"n": 5, "seed": 7})
    expected = np.random.default_rng(7).standard_normal((5, 2)).astype(np.float32)
    np.testing.assert_allclose(first["latents"], expected, rtol=1e-6)
    assert first == again
    decoded = await post(client, "/models/vae/decode", {"latents": first["latents"]})
    np.testing.assert_allclose(decoded["reconstructions"], first["samples"], rtol=1e-5)
    assert np.asarray(first["samples"]).shape == (5, 8, 8)


async def test_autoencoder_generates_from_the_manifest_moments(client: httpx.AsyncClient, models_dir: Path) -> None:
    manifest = (await client.get("/models/tab/versions/1")).json()
    answer = await post(client, "/models/tab/versions/1/generate", {"n": 64, "seed": 0})
    latents = np.asarray(answer["latents"])
    assert manifest["latent"]["prior"] == "empirical"
    mean = np.asarray(json.loads((models_dir / "tab/1/manifest.json").read_text())["latent"]["mean"])
    # 64 draws: the sample mean is within a few standard errors of the manifest's mean.
    assert np.all(np.abs(latents.mean(axis=0) - mean) < 5 * latents.std(axis=0) / 8 + 1e-6)


async def test_png_answers(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    png = {"accept": "image/png"}
    reconstructed = await client.post("/models/conv/reconstruct", json={"inputs": image_rows.tolist()}, headers=png)
    generated = await client.post("/models/vae/generate", json={"n": 4, "seed": 1}, headers=png)
    for response, tiles in ((reconstructed, 3), (generated, 4)):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        columns = int(np.ceil(np.sqrt(tiles)))
        rows = int(np.ceil(tiles / columns))
        assert image.size == (columns * 10 - 2, rows * 10 - 2)  # 8 px tiles, 2 px gaps
    # The first tile is the first reconstruction, in pixels (x / 255 models: pixel = value).
    answer = await post(client, "/models/conv/reconstruct", {"inputs": image_rows.tolist()})
    tile = np.asarray(Image.open(io.BytesIO(reconstructed.content)))[:8, :8]
    want = np.clip(np.round(np.asarray(answer["reconstructions"][0])), 0, 255)
    np.testing.assert_allclose(tile, want, atol=1)


async def test_image_upload_equals_json_rows(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image_rows[0].astype(np.uint8)).save(buffer, format="PNG")
    files = {"file": ("digit.png", buffer.getvalue(), "image/png")}
    uploaded = await client.post("/models/conv/score", files=files, data={"return_sq_err": "true"})
    assert uploaded.status_code == 200, uploaded.text
    sent = await post(client, "/models/conv/score", {"inputs": image_rows[:1].tolist(), "return_sq_err": True})
    np.testing.assert_allclose(uploaded.json()["scores"], sent["scores"], rtol=1e-6)
    assert "sq_err" in uploaded.json()


async def test_rgb_upload_is_converted_and_resized(client: httpx.AsyncClient) -> None:
    big = Image.new("RGB", (32, 24), color=(200, 10, 10))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG")
    response = await client.post("/reconstruct?model=conv", files={"file": ("x.jpg", buffer.getvalue(), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["reconstructions"]).shape == (1, 8, 8)


async def test_models_listing(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/models")).json()
    by_key = {(m["name"], m["version"]): m for m in listing["models"]}
    assert listing["default_model"] == "conv"
    assert set(by_key) == {("conv", 1), ("tab", 1), ("tab", 2), ("vae", 1), ("zz-broken", 1)}
    assert by_key["zz-broken", 1]["status"] == "unavailable"
    assert by_key["zz-broken", 1]["reason"] == "scorer.onnx: sha256 does not match the manifest"
    tab = by_key["tab", 2]
    assert (tab["status"], tab["default"], tab["providers"], tab["provider_fallback"]) == (
        "ready",
        True,
        ["CPUExecutionProvider"],
        False,
    )
    assert tab["input"]["shape"] == [5] and tab["latent"]["dim"] == 2 and "threshold" in tab["score"]
    assert "mean" not in tab["latent"] and "files" not in tab
    assert by_key["tab", 1]["default"] is False


async def test_model_versions(client: httpx.AsyncClient) -> None:
    answer = (await client.get("/models/tab")).json()
    assert answer["default_version"] == 2
    assert [v["version"] for v in answer["versions"]] == [1, 2]
    one = (await client.get("/models/vae/versions/1")).json()
    assert one["architecture"]["variational"] is True and one["latent"]["prior"] == "standard_normal"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"]["zz-broken/1"] == "unavailable"
    assert ready.json()["models"]["tab/2"] == "ready"


async def test_options_in_the_query_string_work_with_every_body_kind(
    client: httpx.AsyncClient, tabular_rows: np.ndarray, image_rows: np.ndarray
) -> None:
    in_body = await post(client, "/models/tab/score", {"inputs": tabular_rows.tolist(), "top_features": 2})
    in_query = await post(client, "/models/tab/score?top_features=2", {"inputs": tabular_rows.tolist()})
    assert in_query == in_body and len(in_query["top_features"][0]) == 2

    png = io.BytesIO()
    Image.fromarray(image_rows[0].reshape(image_rows.shape[1:3]).astype(np.uint8)).save(png, format="PNG")
    uploaded = await client.post("/models/conv/score?return_sq_err=true", files={"file": ("a.png", png.getvalue())})
    assert uploaded.status_code == 200, uploaded.text
    assert "sq_err" in uploaded.json()

    both = await client.post("/models/tab/score?top_features=2", json={"inputs": [[0.0] * 5], "top_features": 3})
    assert both.status_code == 400
    assert (
        both.json()["error"]["message"] == "option(s) ['top_features'] are given both in the query string and the body"
    )
