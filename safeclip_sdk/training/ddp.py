"""Multi-process training through torchrun (DDP): process-group set-up and feature gathering."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_batch(features: torch.Tensor | None, context: DistributedContext) -> torch.Tensor | None:
    """Concatenate every rank's features in rank order, keeping the gradient path.

    ``torch.distributed.nn.all_gather`` sums the incoming gradients in backward, so each rank's
    loss over the global batch, averaged by DDP, gives exactly the single-process gradient of
    that global batch (in-batch negatives come from all ranks, as in a single process).
    """
    if features is None or not context.enabled:
        return features
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(features), dim=0)


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
