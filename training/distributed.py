"""Several processes training one model with DistributedDataParallel, as torchrun starts them.

torchrun (`torchrun --nproc-per-node N -m training fit ...`, on one node or many with its rendezvous flags)
sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process and nothing changes. Every rank
loads the whole data and computes the same normalisation; each trains on its share of the rows; gradients
and the validation loss are averaged over the ranks, so early stopping stops every rank at the same epoch;
only rank 0 exports, calibrates and writes the package.

torch._dynamo is imported here, before any process group exists, because the first optimizer imports it
otherwise: imported while a gloo group is up, it keeps that group alive past destroy_process_group, and
gloo's threads (gloo_tcp_loop, pt_gloo_runloop) run on into the interpreter's shutdown, where a rank could
abort (SIGABRT) as the other ranks closed their connections."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch._dynamo  # before any process group exists: see above
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, requested: str) -> str:
        """On GPUs each rank takes the one its local rank names."""
        return f"cuda:{self.local_rank}" if self.distributed and requested.startswith("cuda") else requested

    def sum(self, *values: float) -> list[float]:
        """The values summed over every rank (themselves, in one process)."""
        if not self.distributed:
            return list(values)
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        """Waits for every rank: a rank that tears down gloo while another still works can abort both."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join() -> World:
    """This process's place among the ranks torchrun started (one process: the trivial world)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=size, local_rank=local_rank, backend=backend)
