"""Training that does not depend on the machine's load, and a collapse guard that speaks up.

- A step budget gives the same run beside a CPU hog as on its own (same data, seed and steps).
- A time budget fixes the schedule once, from the step rate of the first steps; a machine that
  slows down later only ends training earlier, the learning rate never jumps back up.
- A run whose loss sits at ln(batch), or whose validation never beats chance, fails loudly and
  writes no best checkpoint.
"""

import json
import math
import subprocess
import sys
import types

import numpy as np
import pytest

from meanloc.training import trainer as trainer_module
from meanloc.training.collapse import (
    CollapseGuard,
    TrainingCollapsedError,
    above_chance,
    chance_tail_probability,
)
from meanloc.training.config import build_config
from meanloc.training.data.synth.writer import preset_config, synthetic_sources, write_dataset
from meanloc.training.train_data import load_train_data
from meanloc.training.trainer import Trainer
from meanloc.training.validation import retrieval_validator


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    config = preset_config("tiny", seed=5, n_train=24, n_val=12, views_train=3, cross_source=False)
    out = tmp_path_factory.mktemp("robust") / "data"
    write_dataset(out, config, *synthetic_sources(config))
    return out


def _config(data, out_dir, **overrides):
    values = {"dataset": "synthetic", "data_root": str(data), "preset": "mean-nano", "img_size": 64,
              "batch_size": 8, "max_steps": 150, "out_dir": str(out_dir), "log_every": 5, "progress": False,
              "threads": 1, "selection": "val", "eval_batch_size": 32}
    values.update(overrides)
    return build_config(cli_values=values)


def _train(config, validator=True):
    trainer = Trainer(config, load_train_data(config, 64), retrieval_validator(config) if validator else None)
    return trainer, trainer.fit()


def _records(out_dir, event):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def test_step_budget_gives_the_same_model_beside_a_cpu_hog(synth_data, tmp_path):
    _, idle = _train(_config(synth_data, tmp_path / "idle"))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _, loaded = _train(_config(synth_data, tmp_path / "loaded"))
        assert hog.poll() is None  # the hog really ran beside the whole second run
    finally:
        hog.kill()
        hog.wait()
    for result, out in ((idle, tmp_path / "idle"), (loaded, tmp_path / "loaded")):
        assert result.steps == 150 and not result.stopped_by_budget
        assert result.best_checkpoint is not None  # some validation beat chance
        assert not _records(out, "collapse")
    val_idle, val_loaded = _records(tmp_path / "idle", "val"), _records(tmp_path / "loaded", "val")
    assert [r["step"] for r in val_idle] == [r["step"] for r in val_loaded]
    for a, b in zip(val_idle, val_loaded):
        assert b["r1"] == pytest.approx(a["r1"], abs=1e-6)
    # It learned: the selected (best) validation beats chance clearly. A tiny model on 12 validation
    # queries can slide back towards chance by the end; the best checkpoint is what a run keeps.
    best = max(val_idle, key=lambda r: r["r1"])
    assert best["above_chance"] and best["r1"] > 3 * best["chance_r1"]
    lrs = [r["lr"] for r in _records(tmp_path / "idle", "train")]
    assert lrs == [r["lr"] for r in _records(tmp_path / "loaded", "train")]


class _SlowingClock:
    """A fake monotonic clock: each step takes 1 s, then 4 s once the rate has been measured."""

    def __init__(self):
        self.now = 100.0
        self.step_seconds = 1.0

    def monotonic(self):
        return self.now


def test_time_budget_fixes_the_schedule_once_and_only_stops_early(synth_data, tmp_path, monkeypatch):
    clock = _SlowingClock()
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    config = _config(synth_data, tmp_path / "budget", max_steps=None, max_minutes=1.5, selection="last", log_every=1)
    trainer = Trainer(config, load_train_data(config, 64))
    original = trainer._optimise

    def slow_step(*args):
        parts = original(*args)
        clock.now += clock.step_seconds
        if trainer.plan.fixed:
            clock.step_seconds = 4.0  # the machine gets busy after the rate was measured
        return parts

    trainer._optimise = slow_step
    result = trainer.fit()
    schedules = _records(tmp_path / "budget", "schedule")
    assert len(schedules) == 1 and schedules[0]["basis"] == "time budget"
    planned = schedules[0]["total_steps"]
    assert schedules[0]["measured_steps_per_s"] == pytest.approx(1.0)
    assert 60 < planned <= 90  # ~0.95 x the 90 s budget at the measured 1 step/s
    assert result.stopped_by_budget and result.steps < planned  # the slowdown only ended it early
    lrs = [r["lr"] for r in _records(tmp_path / "budget", "train")]
    peak = int(np.argmax(lrs))
    after, before = np.diff(lrs[peak:]), np.diff(lrs[: peak + 1])
    assert (after <= 1e-12).all() and (before >= -1e-12).all()  # monotone after warm-up, and during it
    assert _records(tmp_path / "budget", "end")[0]["stopped_by_budget"] is True


def test_a_loss_stuck_at_ln_batch_is_reported_and_fails(synth_data, tmp_path, capsys):
    # A vanishing temperature makes every logit equal: InfoNCE sits at exactly ln(8).
    config = _config(synth_data, tmp_path / "stuck", max_logit_scale=1e-6, max_steps=200)
    with pytest.raises(TrainingCollapsedError, match=r"ln\(8\) = 2\.079"):
        _train(config)
    assert _records(tmp_path / "stuck", "collapse")
    assert "collapsed" in capsys.readouterr().err
    assert (tmp_path / "stuck" / "last.pt").is_file()
    collapse_step = _records(tmp_path / "stuck", "collapse")[0]["step"]
    # Validations after the collapse are never selection candidates.
    assert all(not r["above_chance"] for r in _records(tmp_path / "stuck", "val") if r["step"] >= collapse_step)


def test_no_best_checkpoint_is_picked_among_noise(synth_data, tmp_path):
    config = _config(synth_data, tmp_path / "noise", max_steps=20)

    def guessing(model):  # validation at chance level: one hit out of 64 queries against 8 tiles
        return {"r1": 100.0 / 64, "chance_r1": 12.5, "above_chance": above_chance(100.0 / 64, 64, 8)}

    trainer = Trainer(config, load_train_data(config, 64), guessing)
    with pytest.raises(TrainingCollapsedError, match=r"no validation result beat chance .* vs chance 12\.50 %"):
        trainer.fit()
    assert not (tmp_path / "noise" / "best.pt").exists()
    assert all(record["above_chance"] is False for record in _records(tmp_path / "noise", "val"))


def test_guard_needs_a_whole_window_after_warm_up_and_notices_recovery():
    guard = CollapseGuard(batch_size=64, min_step=50, window_steps=100)
    chance = math.log(64)
    events = [guard.observe(step, chance + 0.001, 0.99, 14.0, 1e-3) for step in range(10, 150, 10)]
    assert all(event is None for event in events)  # steps 10..140: no whole window after step 50 yet
    event = guard.observe(150, chance, 0.99, 14.0, 1e-3)  # the window (50, 150]
    assert event["event"] == "collapse" and guard.collapsed and "collapsed embeddings" in guard.describe()
    assert guard.observe(160, 3.0, 0.5, 14.0, 1e-3)["event"] == "recovered" and not guard.collapsed
    learning = CollapseGuard(batch_size=64)
    assert all(learning.observe(step, chance - 0.2, 0.3, 14.0, 1e-3) is None for step in range(10, 400, 10))


def test_chance_test_is_the_binomial_tail():
    def brute(hits, n, p):
        return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(hits, n + 1))

    for hits, n, p in ((0, 10, 0.1), (3, 10, 0.1), (7, 240, 1 / 60), (20, 240, 1 / 60), (6, 6, 1 / 3)):
        assert chance_tail_probability(hits, n, p) == pytest.approx(brute(hits, n, p), rel=1e-9)
    assert not above_chance(2.5, 240, 60)  # 6 hits where guessing expects 4
    assert above_chance(10.0, 240, 60)  # 24 hits: 6x chance
