"""The Open Inference Protocol V2 through Triton's own client, unmodified, against a real uvicorn: health,
metadata, readiness, and infer with binary and JSON tensors; the numbers equal the REST routes'."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.scrape import sample
from tests.service.servers import running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with running_server(models_dir, tmp_path_factory.mktemp("v2") / "server.log", "--intra-op-threads", "1") as client:
        yield client


@pytest.fixture(scope="module")
def client(server: httpx.Client) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(str(server.base_url).removeprefix("http://").rstrip("/")) as client:
        yield client


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def rest(server: httpx.Client, path: str, body: dict[str, object]) -> dict[str, np.ndarray]:
    answer = server.post(path, json=body)
    assert answer.status_code == 200, answer.text
    return {key: np.asarray(value) for key, value in answer.json().items()}


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tab") and client.is_model_ready("tab", "1") and client.is_model_ready("tab", "2")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("zz-broken")
    assert not client.is_model_ready("tab", "9")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_metadata_and_config(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("vae")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 8, 8]},
        {"name": "z", "datatype": "FP32", "shape": [-1, 2]},
    ]
    names = [
        "z",
        "z_logvar",
        "x_hat",
        "score",
        "is_anomaly",
        "percentile",
        "sq_err",
        "top_features",
        "top_features_share",
    ]
    assert [o["name"] for o in metadata["outputs"]] == names
    assert client.get_model_metadata("tab", "1")["name"] == "tab"
    assert [o["name"] for o in client.get_model_metadata("tab")["outputs"]] == [n for n in names if n != "z_logvar"]
    config = client.get_model_config("tab")
    assert (config["name"], config["max_batch_size"]) == ("tab", 1024)
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [5]}
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "404" and "unknown model 'nope'" in unknown.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_all_outputs_equal_the_rest_routes(
    client: triton.InferenceServerClient, server: httpx.Client, tabular_rows: np.ndarray, binary: bool
) -> None:
    result = client.infer("tab", [tensor("x", tabular_rows, "FP32", binary)], model_version="1", request_id="r-1")

    scored = rest(server, "/models/tab/versions/1/score", {"inputs": tabular_rows.tolist(), "return_sq_err": True})
    reconstructed = rest(server, "/models/tab/versions/1/reconstruct", {"inputs": tabular_rows.tolist()})
    encoded = rest(server, "/models/tab/versions/1/encode", {"inputs": tabular_rows.tolist()})
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("tab", "1", "r-1")
    assert response["parameters"] == {"threshold": pytest.approx(float(scored["threshold"]))}
    np.testing.assert_allclose(result.as_numpy("score"), scored["scores"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("is_anomaly"), scored["is_anomaly"])
    np.testing.assert_allclose(result.as_numpy("sq_err"), scored["sq_err"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("x_hat"), reconstructed["reconstructions"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("z"), encoded["latents"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("percentile"), scored["percentiles"], rtol=1e-6)
    assert result.as_numpy("is_anomaly").dtype == np.bool_
    assert result.as_numpy("top_features") is None  # computed only when asked for


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_top_features_as_outputs_equal_the_rest_answer(
    client: triton.InferenceServerClient, server: httpx.Client, image_rows: np.ndarray, binary: bool
) -> None:
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("top_features", "top_features_share")]
    result = client.infer(
        "conv", [tensor("x", image_rows, "FP32", binary)], outputs=wanted, parameters={"top_features": 2}
    )

    expected = server.post("/models/conv/score", json={"inputs": image_rows.tolist(), "top_features": 2}).json()
    names, shares = result.as_numpy("top_features"), result.as_numpy("top_features_share")
    assert names.shape == shares.shape == (len(image_rows), 2)
    regions = [[",".join(map(str, part["region"])).encode() for part in row] for row in expected["top_features"]]
    # tritonclient gives BYTES as bytes from binary data, as str from JSON.
    assert [[name if isinstance(name, bytes) else name.encode() for name in row] for row in names] == regions
    np.testing.assert_allclose(shares, [[part["share"] for part in row] for row in expected["top_features"]], rtol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_selected_outputs_and_uint8_pixels(
    client: triton.InferenceServerClient, server: httpx.Client, image_rows: np.ndarray, binary: bool
) -> None:
    pixels = image_rows.astype(np.uint8)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("score", "z_logvar")]
    result = client.infer("vae", [tensor("x", pixels, "UINT8", binary)], outputs=wanted)

    assert [o["name"] for o in result.get_response()["outputs"]] == ["score", "z_logvar"]
    assert result.as_numpy("x_hat") is None
    scored = rest(server, "/models/vae/score", {"inputs": pixels.tolist()})
    encoded = rest(server, "/models/vae/encode", {"inputs": pixels.tolist(), "return_logvar": True})
    np.testing.assert_allclose(result.as_numpy("score"), scored["scores"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("z_logvar"), encoded["logvar"], rtol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_latents_in_reconstructions_out(
    client: triton.InferenceServerClient, server: httpx.Client, binary: bool
) -> None:
    z = np.array([[0.1, -0.4, 0.3], [1.2, 0.3, -0.7]], np.float64)
    result = client.infer("conv", [tensor("z", z, "FP64", binary)])

    assert [o["name"] for o in result.get_response()["outputs"]] == ["x_hat"]
    decoded = rest(server, "/models/conv/decode", {"latents": z.tolist()})
    np.testing.assert_allclose(result.as_numpy("x_hat"), decoded["reconstructions"], rtol=1e-6)


def test_errors_reach_the_client_with_their_message(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.infer("tab", [tensor("x", np.zeros((2, 4), np.float32), "FP32", True)])
    assert refused.value.status() == "400"
    assert refused.value.message() == "x has shape [2, 4]; expected one row of shape [5] or a batch of shape [n, 5]"
    with pytest.raises(InferenceServerException) as unavailable:
        client.infer("zz-broken", [tensor("x", np.zeros((1, 5), np.float32), "FP32", True)])
    assert unavailable.value.status() == "503"


def test_infer_is_counted_like_every_inference_route(
    client: triton.InferenceServerClient, server: httpx.Client
) -> None:
    client.infer("tab", [tensor("x", np.full((1, 5), 3.0, np.float32), "FP32", True)])
    before = server.get("/metrics").text
    for _ in range(3):
        client.infer("tab", [tensor("x", np.full((1, 5), 3.0, np.float32), "FP32", True)])
    after = server.get("/metrics").text
    counted = [sample(text, "ae_requests_total", model="tab", operation="infer") for text in (before, after)]
    assert counted[1] - counted[0] == 3
