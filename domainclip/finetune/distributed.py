"""Multi-process training (torchrun) with DistributedDataParallel.

`torchrun --nproc_per_node N -m domainclip finetune CONFIG ...` starts N copies; each reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment. Every process computes features for its
slice of the global batch, then `gather_features` all-gathers them WITH gradients
(`torch.distributed.nn.functional.all_gather`), so each process evaluates the contrastive loss over
the whole global batch. Its backward sums every process's loss gradient into the local features
(N x dL/df); DDP then averages parameter gradients over the N processes, which gives exactly the
single-process gradient of the global-batch loss. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Process placement. world == 1 means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    log.info("process %d of %d (local rank %d)", rank, world, local)
    return DistInfo(rank=rank, world=world, local_rank=local)


def gather_features(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """[b, D] per process -> [world * b, D] in rank order, differentiable."""
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Picklable object per process -> list in rank order (e.g. the texts of each slice)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return x
    import torch.distributed as dist

    x = x.clone()
    dist.all_reduce(x)
    return x / info.world


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's object on every process."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
