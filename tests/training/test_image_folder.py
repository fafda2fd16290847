"""Training on a folder of images in class subfolders (the ImageFolder convention): the labels, the size and
channel choices, the errors, and the served model scoring an upload exactly as training saw the file."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.images import decode_image
from service.settings import Settings
from tests.service.registries import refreshed
from training.cli import main
from training.data import DataError, load_image_folder

SIZE = (12, 12)


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Class 3: a bright bar, class 7: a dark frame; one RGB file and one of another size among them."""
    root = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for label, count in (("3", 40), ("7", 12)):
        (root / label).mkdir(parents=True)
        for index in range(count):
            image = rng.integers(0, 40, SIZE, dtype=np.uint8)
            if label == "3":
                image[:, 5:7] = 220
            else:
                image[[0, -1], :], image[:, [0, -1]] = 200, 200
            (root / label / f"{index}.png").write_bytes(png(image, "RGB" if index == 1 else "L"))
    (root / "3" / "large.png").write_bytes(png(rng.integers(0, 255, (24, 24), dtype=np.uint8)))
    return root


def test_labels_sizes_and_channels_come_from_the_folder(folder: Path) -> None:
    data = load_image_folder(folder)
    assert data.x.shape == (53, *SIZE) and data.kind == "image"
    assert sorted(set(data.y.tolist())) == ["3", "7"] and (data.y == "7").sum() == 12
    assert load_image_folder(folder, image_size=(8, 10), image_channels=3).x.shape == (53, 8, 10, 3)


@pytest.mark.slow  # seconds of training
def test_a_folder_trains_serves_and_scores_an_upload_as_training_saw_it(folder: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    args = ["fit", "--data", str(folder), "--normal-label", "3", "--name", "digits", "--models-dir", str(models)]
    assert main([*args, "--epochs", "2", "--quiet"]) == 0

    app = create_app(Settings(models_dir=models, intra_op_threads=1))
    refreshed(app.state.registry)
    upload = (folder / "7" / "1.png").read_bytes()  # the RGB one: converted to grey on both sides
    pixels = decode_image(upload, SIZE, max_pixels=1 << 31)
    row = sorted(folder.rglob("*.png")).index(folder / "7" / "1.png")  # the folder's files, in its order
    assert np.array_equal(pixels, load_image_folder(folder).x[row])  # exactly what training saw

    async def scores() -> tuple[list[float], list[float]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            uploaded = await client.post("/models/digits/score", files={"file": ("7.png", upload, "image/png")})
            as_json = await client.post("/models/digits/score", json={"inputs": [pixels.tolist()]})
        return uploaded.json()["scores"], as_json.json()["scores"]

    uploaded, as_json = anyio.run(scores)
    assert uploaded == as_json


def test_folder_mistakes_are_named(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG, JPEG or BMP images"):
        load_image_folder(tmp_path / "empty")
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a readable PNG, JPEG or BMP image"):
        load_image_folder(folder)
    # Its header reads, its pixels do not: decode_image's refusal becomes training's own error.
    noise = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8)
    (folder / "3" / "broken.png").write_bytes(png(noise)[:100])
    with pytest.raises(DataError, match=r"broken\.png: the image data is truncated or corrupt"):
        load_image_folder(folder)
    (folder / "3" / "broken.png").unlink()
    (folder / "stray.png").write_bytes(png(np.zeros(SIZE, np.uint8)))
    with pytest.raises(DataError, match=r"stray\.png: with class subfolders, every image must be in one of them"):
        load_image_folder(folder)
