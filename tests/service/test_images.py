"""Uploads to rows (conversion, resizing) and rows to a PNG grid."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service import images
from service.errors import ServiceError


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_grayscale_upload_is_resized_to_the_model() -> None:
    data = encoded(Image.new("L", (16, 16), color=200))
    row = images.decode_image(data, (8, 8), max_pixels=10_000)
    assert row.shape == (8, 8) and row.dtype == np.float32
    np.testing.assert_allclose(row, 200.0)


@pytest.mark.parametrize(("shape", "mode"), [((8, 8), "L"), ((8, 8, 1), "L"), ((8, 8, 3), "RGB"), ((8, 8, 4), "RGBA")])
def test_colour_conversion_follows_the_model(shape: tuple[int, ...], mode: str) -> None:
    data = encoded(Image.new("RGB", (8, 8), color=(255, 0, 0)), fmt="JPEG")
    row = images.decode_image(data, shape, max_pixels=10_000)
    assert row.shape == shape
    if mode == "L":
        np.testing.assert_allclose(row, 76.0, atol=2)  # ITU-R 601 luma of pure red


def test_truncated_image_is_refused() -> None:
    data = encoded(Image.new("L", (64, 64), color=10))
    with pytest.raises(ServiceError) as caught:
        images.decode_image(data[: len(data) // 2], (8, 8), max_pixels=10_000)
    assert (caught.value.status, caught.value.code) == (422, "invalid_image")


def test_pixels_round_trip_through_the_normalisation() -> None:
    offset, scale = np.zeros(1, np.float32), np.full(1, 255.0, np.float32)
    pixels = np.array([[[0.0, 128.0], [255.0, 7.0]]], np.float32)
    rows = images.from_pixels(pixels, offset, scale)
    np.testing.assert_array_equal(rows, pixels)
    np.testing.assert_array_equal(images.to_pixels(rows, offset, scale), pixels.astype(np.uint8))
    unit = images.from_pixels(pixels, offset, np.ones(1, np.float32))
    np.testing.assert_allclose(unit, pixels / 255.0, rtol=1e-6)


def test_grid_tiles_images_in_a_near_square() -> None:
    tiles = np.stack([np.full((4, 5), i * 40, np.uint8) for i in range(5)])
    grid = np.asarray(Image.open(io.BytesIO(images.png_grid(tiles))))
    assert grid.shape == (2 * 4 + 2, 3 * 5 + 4)  # 3 columns, 2 rows, 2 px gaps
    assert grid[0, 0] == 0 and grid[0, 7] == 40 and grid[6, 0] == 120


def _png_with_text(size: int) -> bytes:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * size, zip=True)
    Image.new("L", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_a_huge_text_chunk_is_a_clean_422() -> None:
    with pytest.raises(ServiceError) as refused:
        images.decode_image(_png_with_text(2 * 1024 * 1024), (8, 8), 1 << 24)
    assert (refused.value.status, refused.value.code) == (422, "invalid_image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_mutated_images_never_escape_as_anything_but_a_service_error(fmt: str) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format=fmt)
    original = np.frombuffer(buffer.getvalue(), np.uint8)
    for _ in range(5000):  # a deterministic mutation fuzz (about 0.5 s): flipped bytes, truncation, duplication
        data = original.copy()
        flips = rng.integers(0, len(data), rng.integers(1, 8))
        data[flips] = rng.integers(0, 256, len(flips))
        cut = data[: rng.integers(8, len(data) + 1)].tobytes()
        body = cut + cut[-rng.integers(0, 64) :] if rng.random() < 0.3 else cut
        try:
            images.decode_image(body, (8, 8, 3), 1 << 24)
        except ServiceError as error:
            assert 400 <= error.status < 500


@pytest.mark.anyio
async def test_images_past_the_pixels_a_worker_decodes_at_once_are_refused(make_app: Any) -> None:
    # 64 x 64 pixels in a PNG of a few hundred bytes; the worker decodes at most 5,000 pixels at once.
    png = io.BytesIO()
    Image.new("L", (64, 64)).save(png, format="PNG")
    app = make_app(max_pixels_in_flight=5_000)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        one = await client.post("/models/conv/score", files={"file": ("a.png", png.getvalue())})
        assert one.status_code == 200, one.text
        two = await client.post("/models/conv/score", files=[("file", ("a.png", png.getvalue()))] * 2)
        assert two.status_code == 503 and two.json()["error"]["code"] == "overloaded"
        assert two.headers["retry-after"] == "1"
    assert app.state.pixel_budget.used == 0  # released, refused or not
