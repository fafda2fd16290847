"""A training loop that knows nothing about the architecture: it calls `model.loss(x_in, x_target)`."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset
from tqdm import tqdm

from training.distributed import World
from training.models import Autoencoder


@dataclass(frozen=True)
class TrainerConfig:
    """What the loop needs of a run, every value chosen (training.pipeline takes them from a resolved FitConfig)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    noise: float
    seed: int
    device: str
    progress: bool
    trim: float = 0.0  # the share of each batch's highest losses left out of the step (see FitConfig.trim)


# A relative fall of validation loss over the last `patience` epochs that counts as "still falling".
STILL_FALLING = 0.01


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def still_falling(self, epochs: int, window: int) -> bool:
        """Whether the run used every one of `epochs` and its validation loss fell by more than
        STILL_FALLING over the last `window` of them: more epochs would likely have made a better model."""
        if self.epochs_run < epochs or len(self.val_loss) <= window:
            return False
        before, last = min(self.val_loss[:-window]), min(self.val_loss[-window:])
        return before > 0 and (before - last) / before > STILL_FALLING


class Rows:
    """The training rows `x[index]`, each read as (x - offset) / scale when its batch is drawn: training holds
    the data once and one batch, not a normalised copy of every training row beside it. The numbers are
    those of normalising the whole table first (float32 subtraction and division, element by element)."""

    def __init__(self, x: np.ndarray, index: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> None:
        self.x = torch.from_numpy(x)  # shares the array's memory
        self.index = torch.from_numpy(np.asarray(index, dtype=np.int64))
        self.offset = torch.from_numpy(offset)
        self.scale = torch.from_numpy(scale)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        return (self.x[self.index[positions]] - self.offset) / self.scale


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None) -> str:
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Loss(nn.Module):
    """The model's loss as a forward pass: DistributedDataParallel averages gradients only for what goes
    through its forward."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, noisy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model.loss(noisy, target)


# Trimming starts once the model has learnt the bulk of the rows: before then every row's loss is high, and
# the rows it would leave out are not yet the ones the model cannot explain (training.recipes.TABULAR_TRIM).
TRIM_AFTER_EPOCHS = 10


def _kept(row_losses: torch.Tensor, trim: float) -> torch.Tensor:
    """The row losses without the `trim` share of the largest (each rank trims its own rows)."""
    drop = int(trim * len(row_losses))
    if drop == 0:
        return row_losses
    return torch.topk(row_losses, len(row_losses) - drop, largest=False, sorted=False).values


def _trimmed_mean(row_losses: torch.Tensor, trim: float) -> torch.Tensor:
    return _kept(row_losses, trim).mean()


class Trainer:
    def __init__(self, model: Autoencoder, config: TrainerConfig, world: World | None = None) -> None:
        self.world = world or World()
        self.model = model.to(config.device)
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss: nn.Module = _Loss(self.model)
        if self.world.distributed:
            on_gpu = config.device.startswith("cuda")
            loss = DistributedDataParallel(loss, device_ids=[self.world.local_rank] if on_gpu else None)
        self.loss = loss

    def fit(self, train: Rows, x_val: np.ndarray) -> History:
        """Trains with early stopping on validation loss (`x_val`, normalised); leaves the model at its best
        epoch, in eval mode."""
        cfg = self.config
        history = History()
        generator = torch.Generator().manual_seed(cfg.seed)
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

    def _order(self, rows: int, generator: torch.Generator, epoch: int) -> tuple[torch.Tensor, int]:
        """This rank's rows for the epoch, and its batch size. Several ranks each take their share
        (DistributedSampler) in batches of batch_size / ranks, so one step still averages batch_size rows and
        an epoch has as many steps as in one process."""
        if not self.world.distributed:
            return torch.randperm(rows, generator=generator), self.config.batch_size
        rows_only = TensorDataset(torch.arange(rows))
        sampler: DistributedSampler[int] = DistributedSampler(
            rows_only, num_replicas=self.world.size, rank=self.world.rank, shuffle=True, seed=self.config.seed
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler)), max(1, self.config.batch_size // self.world.size)

    def _train_epoch(self, train: Rows, generator: torch.Generator, epoch: int) -> float:
        cfg = self.config
        self.model.train()
        order, batch_size = self._order(len(train), generator, epoch)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        total, seen = 0.0, 0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if cfg.progress and self.world.is_main else True,
            unit="batch",
        )
        for index in bar:
            target = train[index].to(cfg.device)
            noisy = target
            if cfg.noise > 0:
                noise = torch.randn(target.shape, generator=generator).to(cfg.device)
                noisy = target + cfg.noise * noise
            loss = _trimmed_mean(self.loss(noisy, target), cfg.trim if epoch > TRIM_AFTER_EPOCHS else 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.5f}")
        pooled_total, pooled_seen = self.world.sum(total, seen)
        return pooled_total / max(pooled_seen, 1)

    @torch.no_grad()
    def evaluate(self, x: np.ndarray) -> float:
        """The mean loss over the rows; with several ranks each scores its share and the sums are pooled,
        so every rank gets the same number (and stops early at the same epoch)."""
        self.model.eval()
        share = np.ascontiguousarray(x[self.world.rank :: self.world.size])
        losses = [
            self.model.loss(batch, batch)
            for batch in torch.from_numpy(share).to(self.config.device).split(self.config.batch_size * 4)
        ]
        local = _kept(torch.cat(losses), self.config.trim) if losses else torch.zeros(0)
        if not self.world.distributed:
            return float(local.mean())
        total, count = self.world.sum(float(local.double().sum()), float(len(local)))
        return total / max(count, 1)

    def _say(self, message: str) -> None:
        if self.config.progress and self.world.is_main:
            tqdm.write(message)
