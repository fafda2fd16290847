"""Binary payloads (.npy, raw float32, .npz answers) give the same numbers as JSON, on every tensor route."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

NPY, RAW, NPZ = "application/x-npy", "application/octet-stream", "application/x-npz"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def body_and_headers(x: np.ndarray, media: str) -> tuple[bytes, dict[str, str]]:
    if media == NPY:
        return npy(x), {"content-type": NPY}
    return x.astype("<f4").tobytes(), {"content-type": RAW, "x-shape": ",".join(map(str, x.shape))}


def answer_array(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    if response.headers["content-type"] == NPY:
        return np.load(io.BytesIO(response.content))
    shape = tuple(int(d) for d in response.headers["x-shape"].split(","))
    return np.frombuffer(response.content, "<f4").reshape(shape)


# route, model, JSON field of the rows, JSON field of the main array
ROUTES = [
    ("score", "tab", "inputs", "scores"),
    ("reconstruct", "conv", "inputs", "reconstructions"),
    ("encode", "vae", "inputs", "latents"),
    ("decode", "tab", "latents", "reconstructions"),
]


@pytest.mark.parametrize("media_in", [NPY, RAW])
@pytest.mark.parametrize("media_out", [NPY, RAW])
@pytest.mark.parametrize(("route", "model", "field", "main"), ROUTES)
async def test_binary_equals_json(
    client: httpx.AsyncClient,
    tabular_rows: np.ndarray,
    image_rows: np.ndarray,
    route: str,
    model: str,
    field: str,
    main: str,
    media_in: str,
    media_out: str,
) -> None:
    x = {"tab": tabular_rows, "conv": image_rows, "vae": image_rows}[model]
    if route == "decode":
        x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    path = f"/{route}?model={model}"
    expected = (await client.post(path, json={field: x.tolist()})).json()

    content, headers = body_and_headers(x, media_in)
    response = await client.post(path, content=content, headers=headers | {"accept": media_out})
    assert response.headers["content-type"] == media_out
    np.testing.assert_allclose(answer_array(response), expected[main], rtol=1e-6, atol=1e-6)
    assert response.headers["x-model"] == model and response.headers["x-version"] == str(expected["version"])


async def test_npz_answer_holds_every_array(client: httpx.AsyncClient, tabular_rows: np.ndarray) -> None:
    content, headers = body_and_headers(tabular_rows, NPY)
    path = "/score?model=tab&return_sq_err=true"
    response = await client.post(path, content=content, headers=headers | {"accept": NPZ})
    expected = (
        await client.post("/score?model=tab", json={"inputs": tabular_rows.tolist(), "return_sq_err": True})
    ).json()

    assert response.status_code == 200 and response.headers["content-type"] == NPZ
    arrays = np.load(io.BytesIO(response.content))
    assert set(arrays.files) == {"scores", "threshold", "is_anomaly", "percentiles", "sq_err"}
    for name in arrays.files:
        np.testing.assert_allclose(arrays[name], expected[name], rtol=1e-6, atol=1e-6)
    assert float(response.headers["x-threshold"]) == expected["threshold"]


async def test_image_rows_may_come_flat(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    nested = (await client.post("/score?model=conv", json={"inputs": image_rows.tolist()})).json()
    flat = image_rows.reshape(len(image_rows), -1)
    as_json = (await client.post("/score?model=conv", json={"inputs": flat.tolist()})).json()
    one = (await client.post("/score?model=conv", json={"inputs": flat[0].tolist()})).json()
    content, headers = body_and_headers(flat, RAW)
    as_raw = await client.post("/score?model=conv", content=content, headers=headers | {"accept": RAW})

    assert as_json["scores"] == nested["scores"] and one["scores"] == nested["scores"][:1]
    np.testing.assert_allclose(answer_array(as_raw), nested["scores"], rtol=1e-6)


async def test_uint8_npy_reads_as_float(client: httpx.AsyncClient, image_rows: np.ndarray) -> None:
    nested = (await client.post("/score?model=conv", json={"inputs": image_rows.tolist()})).json()
    response = await client.post(
        "/score?model=conv", content=npy(image_rows.astype(np.uint8)), headers={"content-type": NPY, "accept": NPY}
    )
    np.testing.assert_allclose(answer_array(response), nested["scores"], rtol=1e-6)
