"""torchrun DDP plumbing: process-group setup, a gradient-keeping all-gather, rank batch slices.

N processes x B pairs must train like 1 process x N·B pairs. Three pieces make that exact:
- `gather_with_grad`: InfoNCE needs every rank's embeddings as negatives, and the gradient of a
  negative must flow back to the rank that produced it (plain dist.all_gather cuts the graph);
- `rank_slice`: the class-unique sampler builds *global* batches; each rank takes its
  contiguous slice, so the union over ranks is the global batch (a DistributedSampler would
  break the class-uniqueness of a batch);
- the loss scaling in `meanloc.training.losses.MeanLoss`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from meanloc.errors import MeanlocError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; nccl on CUDA, gloo on CPU. No env → single process."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise MeanlocError("--device cuda was requested but no CUDA device is available")
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise MeanlocError(f"incomplete torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(minutes=30),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all_gather along dim 0. Backward: each rank's loss put gradient on every gathered
    row, so the gradient of rank r's rows is the SUM over ranks of their grads for those rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce + slice works on gloo, which lacks reduce_scatter
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' (B, ...) tensors concatenated in rank order, differentiable w.r.t. every rank's input.

    Every rank must pass the same B (the trainer splits each global batch evenly).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce_mean(values: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """Averages scalar logging values over ranks (a no-op with one process)."""
    if world_size == 1:
        return {key: float(value) for key, value in values.items()}
    keys = sorted(values)
    stacked = torch.stack([values[key].detach().float().reshape(()) for key in keys])
    dist.all_reduce(stacked)
    return {key: float(value) / world_size for key, value in zip(keys, stacked)}


def rank_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a global batch (the union over ranks is the global batch)."""
    if len(batch) % world_size:
        raise MeanlocError(f"global batch of {len(batch)} is not divisible by {world_size} processes")
    per_rank = len(batch) // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]
