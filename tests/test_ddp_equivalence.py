"""2 gloo processes x B pairs must give the loss and gradients of 1 process x 2B pairs.

What is compared: one training step of the real pieces (TrainStep = MEAN + MeanLoss with all
three terms at the University weights, wrapped in DistributedDataParallel, gradient-keeping
all-gather for InfoNCE, per-rank slices of one global batch) against the same step in a single
process. The model is in eval mode (BatchNorm on running statistics, dropout off) because plain
BatchNorm normalises with per-rank batch statistics, which legitimately differ from the global
batch's; SyncBatchNorm (`--sync-bn`) fixes that on CUDA but PyTorch has no CPU implementation.
The comparison runs in float64: in float32 the different summation order of a split batch alone
moves gradients of magnitude ~5 by ~1e-6 relative, which would hide nothing but fail atol=1e-6.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from meanloc.training.distributed import DistContext, rank_slice
from meanloc.training.losses import DATASET_LOSS_WEIGHTS, MeanLoss
from meanloc.training.model import build_model, resolve_config
from meanloc.training.trainer import TrainStep, freeze_unused_parameters, seed_everything

GLOBAL_BATCH = 8
WORLD_SIZE = 2
NUM_CLASSES = 16


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    sat = torch.randn(GLOBAL_BATCH, 3, size, size, generator=generator, dtype=torch.float64)
    drone = torch.randn(GLOBAL_BATCH, 3, size, size, generator=generator, dtype=torch.float64)
    labels = torch.randperm(NUM_CLASSES, generator=generator)[:GLOBAL_BATCH]  # class-unique batch
    return sat, drone, labels


def _step(module: torch.nn.Module, sat, drone, labels) -> tuple[float, dict[str, torch.Tensor]]:
    loss, parts = module(sat, drone, labels)
    loss.backward()
    return parts, {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _build(ctx: DistContext) -> TrainStep:
    seed_everything(7)
    model = build_model(resolve_config("mean-nano", num_classes=NUM_CLASSES))
    freeze_unused_parameters(model)
    model.double().eval()
    return TrainStep(model, MeanLoss(DATASET_LOSS_WEIGHTS["university"]), ctx)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        step = _build(DistContext(rank=rank, world_size=WORLD_SIZE))
        ddp = torch.nn.parallel.DistributedDataParallel(step)
        sat, drone, labels = _batch(step.model.config.img_size)
        index = rank_slice(list(range(GLOBAL_BATCH)), rank, WORLD_SIZE)
        parts, grads = _step(ddp, sat[index], drone[index], labels[index])
        loss = parts["loss"].clone()
        dist.all_reduce(loss)  # per-rank shares sum to world_size x global loss
        grads = {name.removeprefix("module."): g for name, g in grads.items()}
        torch.save({"loss": loss / WORLD_SIZE, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process():
    step = _build(DistContext())
    parts, grads = _step(step, *_batch(step.model.config.img_size))
    return parts["loss"], grads


def test_two_process_loss_equals_single_process_loss(ddp_results, single_process):
    loss, _ = single_process
    for result in ddp_results:
        assert torch.allclose(result["loss"], loss, atol=1e-6, rtol=0), (float(result["loss"]), float(loss))


def test_two_process_gradients_equal_single_process_gradients(ddp_results, single_process):
    _, grads = single_process
    assert "model.logit_scale" in grads  # the temperature is trained too
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # equality is not vacuous
    for result in ddp_results:
        assert set(result["grads"]) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=0, msg=name)

