"""The trainer on a tiny on-disk University-1652-layout dataset (mean-nano, 64 px, real files).

Exact resume: train k steps, pause (checkpoint), resume in a fresh Trainer: every later loss
and the final weights equal the uninterrupted run's. Kill safety: SIGKILL a `meanloc train`
subprocess that checkpoints every step; the last checkpoint still loads.
"""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from meanloc.training.checkpoint import load_checkpoint
from meanloc.training.config import build_config
from meanloc.training.train_data import load_train_data
from meanloc.training.trainer import Trainer
from meanloc.training.validation import retrieval_validator

CLASSES = 10
DRONES_PER_CLASS = 3


def _write_view(folder, class_id: str, name: str, image: np.ndarray) -> None:
    target = folder / class_id
    target.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(target / name), image)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Per class: a random satellite texture; drone views are noisy, shifted copies of it."""
    root = tmp_path_factory.mktemp("tiny_u1652")
    rng = np.random.default_rng(0)
    for split, first, count in (("train", 0, CLASSES), ("val", 100, 4)):
        for offset in range(count):
            class_id = f"{first + offset:04d}"
            sat = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            sat_folder = root / split / ("satellite" if split == "train" else "gallery_satellite")
            _write_view(sat_folder, class_id, f"{class_id}.jpg", sat)
            for view in range(DRONES_PER_CLASS):
                noisy = np.clip(np.roll(sat, view, axis=1) + rng.normal(0, 20, sat.shape), 0, 255).astype(np.uint8)
                drone_folder = root / split / ("drone" if split == "train" else "query_drone")
                _write_view(drone_folder, class_id, f"image-{view:02d}.jpeg", noisy)
    return root


def _config(root, out_dir, **overrides):
    values = {"dataset": "university", "data_root": str(root), "preset": "mean-nano", "img_size": 64,
              "batch_size": 4, "epochs": 2, "out_dir": str(out_dir), "log_every": 1, "progress": False,
              "threads": 1, "selection": "last"}
    values.update(overrides)
    return build_config(cli_values=values)


def _trainer(config, validator=None) -> Trainer:
    return Trainer(config, load_train_data(config, 64), validator)


def _losses(result) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in result.history}


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = _trainer(_config(tiny_dataset, tmp_path / "straight")).fit()
    assert straight.steps > 6  # 2 epochs of several steps: the pause below is mid-epoch

    pause = 4
    paused = _trainer(_config(tiny_dataset, tmp_path / "resumed")).fit(until_step=pause)
    assert paused.steps == pause
    resumed = _trainer(_config(tiny_dataset, tmp_path / "resumed", resume=str(paused.last_checkpoint))).fit()

    expected, got = _losses(straight), _losses(resumed)
    assert min(got) == pause + 1 and max(got) == straight.steps
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-7, rel=0), step
    final_straight = load_checkpoint(straight.last_checkpoint).model.state_dict()
    final_resumed = load_checkpoint(resumed.last_checkpoint).model.state_dict()
    for key, value in final_straight.items():
        torch.testing.assert_close(final_resumed[key], value, atol=1e-7, rtol=0, msg=key)


def test_selection_uses_validation_split_and_writes_metrics(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, tmp_path / "run", selection="val", epochs=1, eval_batch_size=8)
    result = _trainer(config, retrieval_validator(config)).fit()
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = [record["event"] for record in records]
    assert events[0] == "start" and events[-1] == "end" and "val" in events
    assert records[0]["seed"] == config.seed
    val = next(record for record in records if record["event"] == "val")
    assert val["split"] == "val" and 0 <= val["r1"] <= 100
    best = load_checkpoint(result.best_checkpoint)
    assert best.manifest["metrics"]["r1"] == val["r1"]
    assert best.manifest["train_config"]["selection"] == "val"


def test_kill_during_checkpointing_leaves_a_loadable_checkpoint(tiny_dataset, tmp_path):
    out_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "meanloc", "train", "--dataset", "university", "--data-root", str(tiny_dataset),
               "--preset", "mean-nano", "--batch-size", "4", "--epochs", "50", "--checkpoint-every", "1",
               "--selection", "last", "--no-progress", "--threads", "1", "--out-dir", str(out_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoint = out_dir / "last.pt"
    deadline = time.monotonic() + 60
    try:
        while not checkpoint.exists():  # the subprocess is now rewriting last.pt every step
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint written within 60 s"
            time.sleep(0.05)
        time.sleep(0.7)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    loaded = load_checkpoint(checkpoint)
    assert loaded.train_state["step"] >= 1
    assert loaded.config.preset == "mean-nano"


def test_ram_cache_matches_the_shared_preprocessing_and_augments(tiny_dataset):
    from meanloc.runtime.images import read_image
    from meanloc.runtime.preprocess import PreprocessSpec, preprocess_bgr
    from meanloc.training.cached_pairs import CachedPairs
    from meanloc.training.data.splits import load_train_pairs

    pairs = load_train_pairs(tiny_dataset, "university").pairs[:4]
    plain = CachedPairs(pairs, 64, augment=False)
    sat, drone, labels = plain.batch([0, 3])
    spec = PreprocessSpec(size=64)
    for got, path in ((sat[0], pairs[0].sat_path), (drone[1], pairs[3].drone_path)):
        np.testing.assert_allclose(got.numpy(), preprocess_bgr(read_image(path), spec), atol=1e-5)
    assert labels.tolist() == [pairs[0].class_index, pairs[3].class_index]

    torch.manual_seed(0)
    augmented = CachedPairs(pairs, 64, augment=True)
    sats = torch.stack([augmented.batch([0])[0][0] for _ in range(12)])
    assert not torch.allclose(sats[0], sats[1:])  # random rotations/flips/jitter happen
