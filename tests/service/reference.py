"""What the service's numbers are checked against: the trained PyTorch module a package was exported from
(its checkpoint.pt), run in normalised space exactly as docs/model-package.md defines the score: the
PyTorch module's own reconstruction, never the ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.models import load_checkpoint


def torch_reference(folder: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions (raw scale) and scores of the rows `x` by the package's PyTorch model."""
    model, norm = load_checkpoint(folder / "checkpoint.pt")
    shape = x.shape[1:] if len(norm["offset"]) > 1 else (1,)
    offset = np.asarray(norm["offset"], np.float32).reshape(shape)
    scale = np.asarray(norm["scale"], np.float32).reshape(shape)
    x_norm = (x - offset) / scale
    with torch.no_grad():
        x_hat, sq_err = model.reconstruction(torch.from_numpy(x_norm))
    # One autoencoder: sq_err is (x_norm - x_hat)^2; an ensemble's is the mean of its members' (models.Ensemble).
    score = sq_err.numpy().reshape(len(x), -1).mean(axis=1)
    return x_hat.numpy() * scale + offset, score
