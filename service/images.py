"""Images to rows and rows to images: PNG/JPEG/BMP uploads in, a PNG grid out.

`decode_image` is the one definition of how a file becomes a model's row, shared by the service (uploads)
and the training side (image folders), so a served model sees an uploaded file exactly as training saw it.

Pixels map to model inputs through the model's own normalisation: a pixel p in 0..255 is the normalised
value p / 255, so `x = offset + scale * p / 255` (for the usual `x / 255` models, x = p)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from service.errors import ServiceError

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp"}
# The PIL mode that yields the model's channel count; None is an H x W model (grayscale, no channel axis).
_MODES = {None: "L", 1: "L", 3: "RGB", 4: "RGBA"}
_GRID_GAP = 2


class ImageError(ServiceError):
    """A file `decode_image` cannot make a row of: the service answers its status, training reports bad data."""


def decode_image(data: bytes, row_shape: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """One row of pixel values (0..255, float32) shaped like the model's input, converted and resized."""
    height, width = row_shape[:2]
    channels = row_shape[2] if len(row_shape) == 3 else None
    if channels not in _MODES:
        raise ImageError(415, "unsupported_media_type", f"images cannot feed a model with {channels} channels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_large(max_pixels) from None
    except Exception:  # PIL's parsers raise many types on malformed files (SyntaxError, ValueError, struct.error)
        raise ImageError(422, "invalid_image", "the file is not a readable PNG, JPEG or BMP image") from None
    if opened.format not in FORMATS:
        raise ImageError(
            415, "unsupported_media_type", f"{opened.format} images are not accepted; send PNG, JPEG or BMP"
        )
    if opened.width * opened.height > max_pixels:
        raise _too_large(max_pixels)
    try:
        image = opened.convert(_MODES[channels])
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
    except Exception:  # truncated or corrupt data only shows when the pixels are decoded, in any of PIL's types
        raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None
    return pixels.reshape(row_shape)


class PixelBudget:
    """The pixels a worker decodes at once, over all its requests: a few bytes each while decoded, so a
    small compressed upload can cost far more memory than its body (a 75 KB PNG of 4096 x 4096 pixels
    decodes to 64 MB). A request whose images would pass the budget is refused with 503 `overloaded`."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels, self.used = max_pixels, 0

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if self.used + pixels > self.max_pixels:
            raise ServiceError(
                503,
                "overloaded",
                "too many image pixels are being decoded at once; retry later",
                {"Retry-After": "1"},
            )
        self.used += pixels
        try:
            yield
        finally:
            self.used -= pixels


def check_total_pixels(blobs: list[bytes], max_pixels: int) -> int:
    """Refuses a request whose images hold more than `max_pixels` in all, from their headers alone (a
    PNG's or JPEG's size is in its first bytes), before any is decoded; the pixels they hold."""
    total = 0
    for blob in blobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                width, height = Image.open(io.BytesIO(blob)).size
        except Exception:  # unreadable: decode_image says so, in its words
            continue
        total += width * height
    if total > max_pixels:
        raise ServiceError(
            413, "image_too_large", f"the images hold {total} pixels in all; at most {max_pixels} per request"
        )
    return total


def _too_large(max_pixels: int) -> ImageError:
    return ImageError(413, "image_too_large", f"the image has more than {max_pixels} pixels")


def from_pixels(pixels: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (offset + scale * (pixels / 255.0)).astype(np.float32)


def to_pixels(rows: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    normalised = (rows - offset) / scale
    return np.round(np.clip(normalised, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_grid(images: np.ndarray) -> bytes:
    """n images [n, H, W] or [n, H, W, C] (uint8) tiled in a near-square grid, as PNG bytes."""
    n, height, width = images.shape[:3]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    step_y, step_x = height + _GRID_GAP, width + _GRID_GAP
    canvas = np.zeros((rows * step_y - _GRID_GAP, columns * step_x - _GRID_GAP, *images.shape[3:]), np.uint8)
    for i, image in enumerate(images):
        y, x = (i // columns) * step_y, (i % columns) * step_x
        canvas[y : y + height, x : x + width] = image
    if canvas.ndim == 3 and canvas.shape[2] == 1:
        canvas = canvas[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()
