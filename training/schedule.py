"""The learning-rate schedule: fixed once, by steps, never re-fitted to the machine's speed.

Linear warm-up then a half-cosine to 0, stepped every iteration (HF get_cosine_schedule_with_warmup,
the reference's shape). Its length is decided once:

- `--max-steps N` (or the epochs alone): the schedule spans N steps from the start. The run is then
  the same whatever the machine's load: same data, seed and steps give the same weights on CPU.
- `--max-minutes M` alone: the step rate is measured once, over the first `RATE_PROBE_STEPS` steps
  after `RATE_PROBE_SKIP` start-up steps, and the schedule is fixed to the steps that rate affords
  in the budget. Until then the warm-up ramps towards the longest warm-up the run could have, so
  fixing the length only steepens the ramp (the rate never drops).

A wall-clock budget only decides where training stops: if the machine slows down later, training
stops before the end of its schedule (and says so); it never re-shapes the schedule. The previous
trainer re-fitted the cosine's end every 10 steps to the recent step rate, so on a loaded machine
the learning rate jumped up and down (1.94e-3 -> 1.06e-3 -> 1.93e-3 within 20 steps) and the
warm-up was cut to a tenth of a pessimistic first estimate; see docs/training.md ("Training on a
busy machine") for what that did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RATE_PROBE_SKIP = 3  # start-up steps (thread pools, allocator) left out of the rate measurement
RATE_PROBE_STEPS = 20  # steps timed once to turn a wall-clock budget into a step count
BUDGET_SAFETY = 0.95  # plan for this share of the remaining budget (evaluation, checkpoints)


class CosineWithWarmup:
    """Multiplier of the peak learning rate at `step`: 0 -> 1 linearly over `warmup` steps, then a
    half-cosine to 0 at `total`. A callable object (not a lambda) so LambdaLR's state_dict saves
    `warmup` and `total` and a resumed run continues the same schedule."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class SchedulePlan:
    """How long the schedule is and what decided it (logged as the `schedule` event)."""

    total: int
    warmup: int
    basis: str  # "steps", "epochs" or "time budget"
    fixed: bool  # False only while a time budget's step rate is still being measured
    steps_per_second: float | None = None

    def to_record(self) -> dict:
        return {"total_steps": self.total, "warmup_steps": self.warmup, "basis": self.basis,
                "measured_steps_per_s": self.steps_per_second}


def initial_plan(epochs_steps: int, max_steps: int | None, max_minutes: float | None,
                 warmup_ratio: float) -> SchedulePlan:
    """The plan at the start. With a step budget (or none) it is final; with only a time budget it
    is provisional: as long as the epochs allow, with their warm-up (an upper bound of the final one)."""
    if max_steps:
        total = min(epochs_steps, max_steps)
        return SchedulePlan(total, round(warmup_ratio * total), "steps", True)
    if max_minutes is None:
        return SchedulePlan(epochs_steps, round(warmup_ratio * epochs_steps), "epochs", True)
    return SchedulePlan(epochs_steps, round(warmup_ratio * epochs_steps), "time budget", False)


def plan_from_rate(provisional: SchedulePlan, step: int, steps_per_second: float, remaining_s: float,
                   warmup_ratio: float) -> SchedulePlan:
    """The final plan of a time budget, from the step rate measured once at the start."""
    affordable = step + int(BUDGET_SAFETY * max(0.0, remaining_s) * steps_per_second)
    total = max(step + 1, min(provisional.total, affordable))
    # Never longer than the provisional warm-up: the ramp only steepens, the rate never drops.
    warmup = min(provisional.warmup, round(warmup_ratio * total))
    return SchedulePlan(total, warmup, "time budget", True, round(steps_per_second, 4))
