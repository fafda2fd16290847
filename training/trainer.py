"""A training loop that knows nothing about the architecture: it calls `model.loss(x_in, x_target)`."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from training.models import Autoencoder


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    noise: float = 0.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None) -> str:
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class Trainer:
    def __init__(self, model: Autoencoder, config: TrainerConfig) -> None:
        self.model = model.to(config.device)
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def fit(self, x_train: np.ndarray, x_val: np.ndarray) -> History:
        """Trains with early stopping on validation loss; leaves the model at its best epoch, in eval mode."""
        cfg = self.config
        history = History()
        generator = torch.Generator().manual_seed(cfg.seed)
        train = torch.from_numpy(x_train)
        best_state, best_loss, waited = copy.deepcopy(self.model.state_dict()), float("inf"), 0
        started = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            history.train_loss.append(self._train_epoch(train, generator, epoch))
            val_loss = self.evaluate(x_val)
            history.val_loss.append(val_loss)
            self._say(f"epoch {epoch}/{cfg.epochs}  train loss {history.train_loss[-1]:.5f}  val loss {val_loss:.5f}")
            if val_loss < best_loss - 1e-7:
                best_state, best_loss, waited = copy.deepcopy(self.model.state_dict()), val_loss, 0
                history.best_epoch = epoch
            else:
                waited += 1
                if waited >= cfg.patience:
                    self._say(f"early stop at epoch {epoch}: no better validation loss for {waited} epochs")
                    break
        self.model.load_state_dict(best_state)
        self.model.eval()
        history.seconds = time.perf_counter() - started
        return history

    def _train_epoch(self, train: torch.Tensor, generator: torch.Generator, epoch: int) -> float:
        cfg = self.config
        self.model.train()
        order = torch.randperm(len(train), generator=generator)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        total, seen = 0.0, 0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if cfg.progress else True,
            unit="batch",
        )
        for index in bar:
            target = train[index].to(cfg.device)
            noisy = target
            if cfg.noise > 0:
                noise = torch.randn(target.shape, generator=generator).to(cfg.device)
                noisy = target + cfg.noise * noise
            loss = self.model.loss(noisy, target).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.5f}")
        return total / max(seen, 1)

    @torch.no_grad()
    def evaluate(self, x: np.ndarray) -> float:
        self.model.eval()
        losses = [
            self.model.loss(batch, batch)
            for batch in torch.from_numpy(x).to(self.config.device).split(self.config.batch_size * 4)
        ]
        return float(torch.cat(losses).mean())

    def _say(self, message: str) -> None:
        if self.config.progress:
            tqdm.write(message)
