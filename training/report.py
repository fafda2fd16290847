"""The pictures of a training run: loss curves, and for images reconstructions and generated samples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from training.trainer import History


def plot_losses(history: History, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, history.epochs_run + 1)
    ax.plot(epochs, history.train_loss, label="train")
    ax.plot(epochs, history.val_loss, label="validation")
    if history.best_epoch:
        ax.axvline(history.best_epoch, color="grey", linestyle=":", label=f"best (epoch {history.best_epoch})")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    save(fig, path)


def plot_image_rows(rows: list[np.ndarray], labels: list[str], path: Path, title: str) -> None:
    """One row of images per array in `rows` (each [n, H, W] or [n, H, W, C], values in [0, 1])."""
    count = len(rows[0])
    fig, axes = plt.subplots(len(rows), count, figsize=(count * 1.0, len(rows) * 1.1), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels, strict=True)):
        for c in range(count):
            ax = axes[r][c]
            image = np.clip(images[c], 0.0, 1.0)
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=80)


def save(fig: Figure, path: Path, dpi: int = 100) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
