"""The MEAN training loop, written plainly in the style of torchvision's reference scripts.

One optimiser step = one global class-unique batch (split across DDP ranks) -> forward both
views -> MeanLoss -> (scaled) backward -> unscale -> clip by value -> step -> per-step schedule.

The learning-rate schedule is fixed once (`schedule.py`): by steps, or from the step rate measured
once at the start of a time budget; a wall-clock budget only decides where training stops. So a
step budget gives the same run on an idle and on a loaded machine. The collapse guard
(`collapse.py`) watches the loss and the embeddings' spread, and model selection only accepts a
validation result that beats chance.

Exact resume (`--resume`): the checkpoint's train_state holds the optimiser, scheduler and
GradScaler states, the step/epoch counters, the current epoch's batch order and position, and
the Python/NumPy/torch RNG states, so on CPU the resumed run draws the same augmentations and
dropout masks as the uninterrupted one and its next loss is identical.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_write_bytes, atomic_write_text, ensure_writable_dir, open_jsonl
from meanloc.runtime.query_view import QueryView

from .checkpoint import load_checkpoint, load_imagenet_backbone, save_checkpoint
from .collapse import CollapseGuard, TrainingCollapsedError
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_reduce_mean,
    gather_with_grad,
    init_distributed,
    rank_slice,
    shutdown_distributed,
)
from .losses import LossOptions, LossWeights, MeanLoss, default_loss_weights
from .model import MEAN, MeanConfig, ViewOutputs, build_model, resolve_config
from .schedule import (
    RATE_PROBE_SKIP,
    RATE_PROBE_STEPS,
    CosineWithWarmup,
    SchedulePlan,
    initial_plan,
    plan_from_rate,
)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # satellite, drone, labels


class TrainData(Protocol):
    """What the loop needs from a dataset (see `meanloc.training.train_data` for the real ones)."""

    num_classes: int
    query_view: QueryView  # how its drone views were prepared; recorded in the model config

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Global class-unique batches of pair indices for this epoch (deterministic in seed, epoch)."""

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        """Loads the given (rank-local) batches of `epoch` in order."""


# --- reproducibility ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """All RNG states as plain values/tensors (the checkpoint loads with weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- optimiser and schedule -----------------------------------------------------------------------


def build_optimizer(model: MEAN, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.single_param_group:  # reference: decay everything, logit_scale included
        groups: list[dict[str, Any]] = [{"params": params}]
    else:  # the usual practice: no decay on norms, biases and the temperature
        decay = [p for p in params if p.ndim >= 2]
        groups = [{"params": decay}, {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def freeze_unused_parameters(model: MEAN) -> None:
    """Tensors kept only for checkpoint-key compatibility never get gradients (nor weight decay).

    AdamW skips parameters without a gradient, so this matches the reference, and it lets DDP run
    without searching for unused parameters every step.
    """
    unused = [model.logit_scale_blocks, model.w_blocks1, model.w_blocks2, model.w_blocks3,
              *model.model_1.convnext.head.parameters()]
    for parameter in unused:
        parameter.requires_grad_(False)


# --- one step -------------------------------------------------------------------------------------


class TrainStep(nn.Module):
    """Model + loss in one module, so DDP sees every parameter the loss uses (logit_scale too)."""

    def __init__(self, model: MEAN, loss: MeanLoss, dist_ctx: DistContext) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.dist_ctx = dist_ctx
        # With CE and CDA switched off only the backbone feeds the loss: skip the branches.
        self.backbone_only = loss.weights.ce == 0 and loss.weights.cda == 0

    def _view(self, images: torch.Tensor) -> ViewOutputs:
        if not self.backbone_only:
            return self.model.model_1(images)
        global_feature, feature_map = self.model.model_1.convnext(images)
        return ViewOutputs(aligned=feature_map, logits=(), features=(), global_feature=global_feature, feature_map=feature_map)

    def forward(self, sat: torch.Tensor, drone: torch.Tensor, labels: torch.Tensor):
        ctx = self.dist_ctx
        return self.loss(
            self._view(sat), self._view(drone), labels, self.model.logit_scale,
            gather=gather_with_grad if ctx.is_distributed else None,
            row_offset=ctx.rank * labels.shape[0], world_size=ctx.world_size,
        )


# --- logging --------------------------------------------------------------------------------------


# What a fresh run in a reused --out-dir (`meanloc train --overwrite`) removes as it starts writing,
# because it would not replace them itself: the earlier run's best checkpoint and TensorBoard events.
EARLIER_RUN_LEFTOVERS = ("best.pt", "tensorboard")


class MetricsLog:
    """metrics.jsonl (one whole line per os.write, so a kill leaves no torn line) + optional TensorBoard.

    Only rank 0 writes (`enabled=False` elsewhere makes every call a no-op).
    """

    def __init__(self, path: Path, tensorboard: bool, resume: bool, enabled: bool = True) -> None:
        self.fd: int | None = None
        self.writer = None
        if not enabled:
            return
        self.fd = open_jsonl(path, append=resume)  # a resumed run first drops a line torn by the crash
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("meanloc: TensorBoard is not installed; logging to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if self.fd is None:
            return
        os.write(self.fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{record.get('event', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        if self.writer is not None:
            self.writer.close()


# --- the trainer ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    epochs_completed: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    final_loss: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    schedule: dict[str, Any] = field(default_factory=dict)
    stopped_by_budget: bool = False  # the wall-clock budget ended the run before its schedule did


Validator = Callable[[MEAN], dict[str, float]]


class Trainer:
    def __init__(self, config: TrainConfig, data: TrainData, validator: Validator | None = None,
                 dist_ctx: DistContext | None = None) -> None:
        self.config = config
        self.data = data
        self.validator = validator
        self.ctx = dist_ctx or DistContext()
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic and self.ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.seed)  # identical initial weights on every rank

        resumed = load_checkpoint(config.resume) if config.resume else None
        self.model_config: MeanConfig = resumed.config if resumed else self._model_config()
        self.model = resumed.model if resumed else build_model(self.model_config)
        if config.pretrained and not resumed:
            load_imagenet_backbone(self.model, config.pretrained)
        if config.init_checkpoint and not resumed:
            self._load_initial_weights(config.init_checkpoint)
        freeze_unused_parameters(self.model)
        self.model.to(self.ctx.device)

        self.weights = self._loss_weights()
        loss = MeanLoss(self.weights, LossOptions(config.label_smoothing, config.max_logit_scale, config.cda_duplicate_mse))
        step_module: nn.Module = TrainStep(self.model, loss, self.ctx)
        if self.ctx.is_distributed:
            if config.sync_bn:
                if self.ctx.device.type != "cuda":
                    raise MeanlocError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation)")
                step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[self.ctx.local_rank] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=not (self.weights.ce and self.weights.cda),  # an unused branch gets no grads
            )
        self.step_module = step_module

        self.optimizer = build_optimizer(self.model, config)
        first_epoch = data.epoch_batches(0)
        if not first_epoch:
            raise MeanlocError(f"not enough classes for one batch of {config.batch_size} distinct classes")
        self.plan = initial_plan(config.epochs * len(first_epoch), config.max_steps, config.max_minutes,
                                 config.warmup_ratio)
        self.schedule = CosineWithWarmup(self.plan.warmup, self.plan.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.use_amp = config.amp and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", init_scale=config.grad_scaler_init, enabled=self.use_amp)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_order: list[list[int]] | None = None
        self.best_metric = -math.inf
        self.elapsed_before = 0.0
        self.rng_to_restore: dict[str, Any] | None = None
        self.started: float | None = None  # monotonic time when fit() began
        if resumed:
            self._load_train_state(resumed.train_state, config.resume)
        self.guard = CollapseGuard(config.batch_size, min_step=max(50, self.schedule.warmup))
        self.validations = 0
        self.last_checkpoint_step = self.step
        self.best_r1_seen = -math.inf  # for the message when no validation beat chance
        self.chance_r1 = math.nan

        self.out_dir = ensure_writable_dir(config.out_dir)

    # -- setup helpers --

    def _model_config(self) -> MeanConfig:
        overrides: dict[str, Any] = {"num_classes": self.config.num_classes or self.data.num_classes,
                                     "fat_double_softmax": self.config.fat_double_softmax,
                                     "query_ground_side_m": self.data.query_view.ground_side_m,
                                     "query_fill": self.data.query_view.fill}
        if self.config.img_size:
            overrides["img_size"] = self.config.img_size
        return resolve_config(self.config.preset, **overrides)

    def _load_initial_weights(self, path: str) -> None:
        """Weights of another run (same preset, input size and query view); heads sized by another
        class count are left as initialised, and named."""
        source = load_checkpoint(path)
        if source.config.query_view != self.model_config.query_view or source.config.img_size != self.model_config.img_size:
            raise MeanlocError(f"{path} was trained at {source.config.img_size} px with queries "
                               f"'{source.config.query_view.describe()}', this run uses {self.model_config.img_size} px "
                               f"and '{self.model_config.query_view.describe()}'")
        own = self.model.state_dict()
        weights = source.model.state_dict()
        if set(weights) != set(own):
            raise MeanlocError(f"{path} is a {source.config.preset} checkpoint; this run trains {self.model_config.preset}")
        skipped = [key for key in own if weights[key].shape != own[key].shape]
        self.model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
        if skipped:
            print(f"meanloc: --init-checkpoint: {len(skipped)} tensors sized for another class count start fresh "
                  f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})", file=sys.stderr)

    def _loss_weights(self) -> LossWeights:
        default = default_loss_weights(self.config.dataset)
        pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
        return LossWeights(pick(self.config.weight_infonce, default.infonce), pick(self.config.weight_ce, default.ce),
                           pick(self.config.weight_cda, default.cda), pick(self.config.weight_uniformity, default.uniformity))

    # -- checkpoint state --

    def train_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_order": torch.tensor(self.epoch_order or [], dtype=torch.int64),
            "best_metric": self.best_metric,
            "elapsed_s": self.elapsed_before + (time.monotonic() - self.started if self.started else 0.0),
            "schedule_fixed": self.plan.fixed,
            "schedule_basis": self.plan.basis,
            "world_size": self.ctx.world_size,
            "rng": capture_rng_state(),
        }

    def _load_train_state(self, state: dict[str, Any] | None, path: str) -> None:
        if not state:
            raise MeanlocError(f"{path} holds weights only (no train_state): it cannot be resumed, use --pretrained or start fresh")
        if state["world_size"] != self.ctx.world_size:
            raise MeanlocError(f"{path} was written by {state['world_size']} processes; resume with the same number (now {self.ctx.world_size})")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])  # restores schedule.warmup/total too
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        order = state["epoch_order"]
        self.epoch_order = order.tolist() if order.numel() else None
        self.best_metric = state["best_metric"]
        self.elapsed_before = state["elapsed_s"]
        # The restored scheduler holds the warm-up and length the interrupted run had fixed.
        fixed = bool(state.get("schedule_fixed", state.get("budget_fixed", True)))
        self.plan = SchedulePlan(self.schedule.total, self.schedule.warmup,
                                 state.get("schedule_basis", self.plan.basis), fixed)
        self.rng_to_restore = state["rng"]

    def save(self, name: str, metrics: dict[str, Any] | None = None) -> Path:
        path = self.out_dir / name
        if self.ctx.is_main:
            extra = {"train_config": self.config.to_dict(), "step": self.step, "epoch": self.epoch,
                     "loss_weights": vars(self.weights), "metrics": metrics or {}}
            save_checkpoint(path, self.model, self.model_config, train_state=self.train_state(), extra=extra)
        return path

    # -- the loop --

    def _out_of_budget(self) -> bool:
        """The wall-clock budget is spent (it ends the run; it never changes the schedule)."""
        if self.config.max_minutes is None:
            return False
        return self._elapsed() >= 60 * self.config.max_minutes

    def _elapsed(self) -> float:
        elapsed = self.elapsed_before + time.monotonic() - self.started
        if self.ctx.is_distributed:  # every rank must take the same stop decision
            value = torch.tensor([elapsed])
            torch.distributed.broadcast(value, src=0)
            elapsed = float(value)
        return elapsed

    def _fix_schedule_from_rate(self, steps_timed: int, seconds: float, log: MetricsLog) -> None:
        """Once, at the start of a time budget: turn the measured step rate into the schedule's length."""
        rate = steps_timed / max(seconds, 1e-9)
        remaining = 60 * self.config.max_minutes - self._elapsed()
        plan = plan_from_rate(self.plan, self.step, rate, remaining, self.config.warmup_ratio)
        if self.ctx.is_distributed:  # rank 0's plan for all: every rank must keep the same schedule
            value = torch.tensor([plan.total, plan.warmup])
            torch.distributed.broadcast(value, src=0)
            plan = SchedulePlan(int(value[0]), int(value[1]), plan.basis, True, plan.steps_per_second)
        self.plan = plan
        self.schedule.total, self.schedule.warmup = plan.total, plan.warmup
        self.guard.min_step = max(50, plan.warmup)
        log.write({"event": "schedule", "step": self.step, **plan.to_record()})

    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train to the end of the schedule (or budget); `until_step` pauses earlier, checkpointed and
        resumable, without changing the schedule (a pre-empted job).

        Raises TrainingCollapsedError (after writing last.pt and the log) when the collapse guard
        saw the loss stuck at ln(B) at the end, or when no validation result beat chance."""
        config, ctx = self.config, self.ctx
        if ctx.is_main and not config.resume:
            for name in EARLIER_RUN_LEFTOVERS:
                leftover = self.out_dir / name
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink(missing_ok=True)
        log = MetricsLog(self.out_dir / "metrics.jsonl", config.tensorboard, resume=bool(config.resume), enabled=ctx.is_main)
        if ctx.is_main:
            atomic_write_text(self.out_dir / "train_config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))
            log.write({"event": "start", "seed": config.seed, "step": self.step, "world_size": ctx.world_size,
                       "resumed_from": config.resume or None, "loss_weights": vars(self.weights),
                       "model_config": self.model_config.to_dict(), "device": str(ctx.device)})
            if self.plan.fixed:
                log.write({"event": "schedule", "step": self.step, **self.plan.to_record()})
        self.started = time.monotonic()
        history: list[dict[str, Any]] = []
        progress = _progress_bar(config.progress and ctx.is_main, self.schedule.total, self.step)
        images_seen, timing_start = 0, time.monotonic()
        steps_this_run, probe_start = 0, None
        last_loss = math.nan
        best_path: Path | None = None
        stop = stopped_by_budget = False
        while self.epoch < config.epochs and not stop:
            if self.epoch_order is None:
                self.epoch_order = self.data.epoch_batches(self.epoch)
            if self.rng_to_restore is not None:  # after re-creating the order, as in the original run
                restore_rng_state(self.rng_to_restore)
                self.rng_to_restore = None
            local = [rank_slice(batch, ctx.rank, ctx.world_size) for batch in self.epoch_order[self.batch_in_epoch :]]
            self.step_module.train()
            for sat, drone, labels in self.data.iterate(local, self.epoch):
                parts = self._optimise(sat, drone, labels)
                self.step += 1
                self.batch_in_epoch += 1
                images_seen += 2 * labels.shape[0] * ctx.world_size
                steps_this_run += 1
                if not self.plan.fixed:  # a time budget: measure the step rate once, then fix the schedule
                    if steps_this_run == RATE_PROBE_SKIP:
                        probe_start = time.monotonic()
                    elif steps_this_run == RATE_PROBE_SKIP + RATE_PROBE_STEPS and probe_start is not None:
                        self._fix_schedule_from_rate(RATE_PROBE_STEPS, time.monotonic() - probe_start, log)
                        if progress is not None:
                            progress.total = self.schedule.total
                if self.step % config.log_every == 0 or self.step == 1:
                    record = {"event": "train", "step": self.step, "epoch": self.epoch,
                              **all_reduce_mean(parts, ctx.world_size),
                              "images_per_s": images_seen / max(time.monotonic() - timing_start, 1e-9)}
                    last_loss = record["loss"]
                    history.append(record)
                    log.write(record)
                    self._watch_collapse(record, log)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{float(parts['loss']):.3f}", refresh=False)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save("last.pt")
                # A resumed run keeps its schedule; --max-steps then only says where to stop.
                if (self.step >= self.schedule.total or self.step == until_step
                        or (config.max_steps and self.step >= config.max_steps)):
                    stop = True
                    break
                if self._out_of_budget():
                    stop = stopped_by_budget = True
                    break
            if self.batch_in_epoch >= len(self.epoch_order):
                self.epoch += 1
                self.batch_in_epoch = 0
                self.epoch_order = None
            # A small area gives epochs of a step or two: validate and checkpoint at epoch ends, but
            # not more often than every `val_every_min_steps` steps (always at the end).
            if not stop and self.epoch < config.epochs and self.step - self.last_checkpoint_step < config.val_every_min_steps:
                continue
            self.last_checkpoint_step = self.step
            metrics = self._validate(log)
            last_path = self.save("last.pt", metrics)
            if metrics and config.selection == "val" and metrics["above_chance"] and metrics["r1"] > self.best_metric:
                self.best_metric = metrics["r1"]
                best_path = self.out_dir / "best.pt"
                if ctx.is_main:
                    atomic_write_bytes(best_path, last_path.read_bytes())  # same bytes as last.pt
        if progress is not None:
            progress.close()
        elapsed = time.monotonic() - timing_start
        end = {"event": "end", "step": self.step, "epoch": self.epoch, "elapsed_s": elapsed,
               "images_per_s": images_seen / max(elapsed, 1e-9), "schedule_total_steps": self.schedule.total,
               "stopped_by_budget": stopped_by_budget, "collapsed": self.guard.collapsed}
        log.write(end)
        log.close()
        if stopped_by_budget and ctx.is_main:
            print(f"meanloc: the {config.max_minutes:g}-minute budget ended training at step {self.step} of the "
                  f"{self.schedule.total} its schedule planned (learning rate not annealed to 0); a step budget "
                  "(--max-steps) gives the same run whatever the machine's load", file=sys.stderr)
        result = TrainResult(self.out_dir, self.step, self.epoch, self.out_dir / "last.pt", best_path, last_loss,
                             images_seen / max(elapsed, 1e-9), history, self.plan.to_record(), stopped_by_budget)
        paused = until_step is not None and self.step == until_step and self.step < self.schedule.total
        if not paused:
            self._refuse_noise(result)
        return result

    def _watch_collapse(self, record: dict[str, Any], log: MetricsLog) -> None:
        event = self.guard.observe(self.step, record["infonce"], record["embedding_cosine"], record["logit_scale"],
                                   record["lr"])
        if event is None:
            return
        log.write(event)
        if self.ctx.is_main:
            if event["event"] == "collapse":
                print(f"\nmeanloc: warning: training looks collapsed at step {self.step}: {self.guard.describe()}",
                      file=sys.stderr)
            else:
                print(f"\nmeanloc: training left the collapsed state at step {self.step}", file=sys.stderr)

    def _refuse_noise(self, result: TrainResult) -> None:
        """No silent "best" among noise: a collapsed run or one whose validation never beat chance fails."""
        config = self.config
        if self.guard.collapsed:
            best = (f", {result.best_checkpoint} (validation R@1 {self.best_metric:.2f} %) predates the collapse"
                    if result.best_checkpoint else "")
            raise TrainingCollapsedError(
                f"training collapsed: {self.guard.describe()}; {result.last_checkpoint} is kept for inspection{best} "
                "(causes and remedies: docs/training.md, 'Collapse')")
        # (Self-supervised pretraining is not judged by retrieval: its validation is only a transfer curve.)
        if (config.selection == "val" and config.objective == "supervised" and self.validator is not None
                and self.validations and not result.best_checkpoint):
            raise TrainingCollapsedError(
                f"no validation result beat chance in {self.validations} validations (best R@1 "
                f"{self.best_r1_seen:.2f} % vs chance {self.chance_r1:.2f} %); {result.last_checkpoint} is kept, "
                "no best checkpoint was written (docs/training.md, 'Collapse')")

    def _optimise(self, sat: torch.Tensor, drone: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        device = self.ctx.device
        sat, drone, labels = sat.to(device, non_blocking=True), drone.to(device, non_blocking=True), labels.to(device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()
        with autocast:
            loss, parts = self.step_module(sat, drone, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.config.grad_clip_value:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.config.grad_clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        parts["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])  # the rate this step used
        self.scheduler.step()
        return parts

    def _validate(self, log: MetricsLog) -> dict[str, Any]:
        if self.validator is None or not self.ctx.is_main:
            return {}
        rng = capture_rng_state()  # validation must not shift the training random streams
        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.validator(self.model))
        self.model.train()
        restore_rng_state(rng)
        # Selection candidates must beat chance. A validator that cannot say (no chance level, or too
        # few queries to tell) leaves it to R@1 alone, and says so once.
        verdict = metrics.get("above_chance")
        if verdict is None and self.validations == 0 and self.ctx.is_main:
            print(f"meanloc: warning: the validation split ({metrics.get('queries', '?')} queries) is too small to "
                  "tell a model from chance; model selection uses R@1 alone", file=sys.stderr)
        metrics["above_chance"] = (verdict is None or bool(verdict)) and not self.guard.collapsed
        self.validations += 1
        self.best_r1_seen = max(self.best_r1_seen, float(metrics.get("r1", -math.inf)))
        self.chance_r1 = float(metrics.get("chance_r1", math.nan))
        log.write({"event": "val", "step": self.step, "epoch": self.epoch, **metrics})
        return metrics


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def run_training(config: TrainConfig, data_factory: Callable[[TrainConfig, DistContext], tuple[TrainData, Validator | None]]) -> TrainResult:
    """Initialise (torchrun or single process), build the data, train, tear down."""
    ctx = init_distributed(config.device)
    try:
        if config.batch_size % ctx.world_size:
            raise MeanlocError(f"batch size {config.batch_size} must be divisible by the {ctx.world_size} processes")
        if config.batch_size // ctx.world_size < 2:  # BatchNorm in training mode needs two samples per process
            raise MeanlocError(f"batch size {config.batch_size} leaves {config.batch_size // ctx.world_size} pair per "
                               "process; MEAN's BatchNorm layers and the contrastive loss need at least 2 (use "
                               f"--batch-size {2 * ctx.world_size} or more)")
        data, validator = data_factory(config, ctx)
        return Trainer(config, data, validator, ctx).fit()
    finally:
        shutdown_distributed()
