"""Offline side: data -> PyTorch autoencoder -> calibrated threshold -> ONNX model package.

`from training import AutoencoderDetector` is the Python API (training.estimator). It is imported on first
use: `python -m training` must start without torch or scikit-learn, to say which extra is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.estimator import AutoencoderDetector

__all__ = ["AutoencoderDetector"]


def __getattr__(name: str) -> Any:
    if name == "AutoencoderDetector":
        from training.estimator import AutoencoderDetector

        return AutoencoderDetector
    raise AttributeError(f"module 'training' has no attribute {name!r}")
