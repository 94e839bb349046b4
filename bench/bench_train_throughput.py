"""Training throughput of MEAN on this CPU (issue 3: "training images/s on CPU for the small preset").

Runs the real `Trainer` loop (forward both views, loss, backward, clip, AdamW, schedule) on
in-memory random pairs, so only compute is measured, not decoding (the demo pre-decodes its
images into RAM, see training/cached_pairs.py). All rows come from one run on one machine, so
their ratios are comparable even when absolute numbers move with the machine's load.

    python bench/bench_train_throughput.py [--steps 8] [--threads 2]

Prints one Markdown row per configuration (images/s counts both views: 2 x pairs).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from meanloc.runtime.query_view import FRAMES_AS_CAPTURED
from meanloc.training.config import build_config
from meanloc.training.trainer import Trainer

# (label, overrides): the demo recipe (64 px, InfoNCE + uniformity), larger inputs, the full MEAN loss.
CONFIGS = [
    ("mean-small 64 px, demo recipe", {"img_size": 64}),
    ("mean-small 96 px", {"img_size": 96}),
    ("mean-small 128 px (preset size)", {"img_size": 128}),
    ("mean-small 128 px, full MEAN loss (CE + CDA)", {"img_size": 128, "weight_ce": 0.1, "weight_cda": 1.3}),
]


class RandomPairs:
    """TrainData of random images: B distinct classes per batch, no decoding cost."""

    query_view = FRAMES_AS_CAPTURED  # the images are random: nothing to rectify

    def __init__(self, num_classes: int, batch_size: int, img_size: int, batches: int) -> None:
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.img_size = img_size
        self.batches = batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [list(range(i * self.batch_size, (i + 1) * self.batch_size)) for i in range(self.batches)]

    def iterate(self, batches, epoch):
        for batch in batches:
            size = (len(batch), 3, self.img_size, self.img_size)
            yield torch.randn(size), torch.randn(size), torch.tensor(batch) % self.num_classes


def measure(overrides: dict, steps: int, threads: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as out_dir:
        config = build_config(cli_values={"dataset": "synthetic", "data_root": "unused", "out_dir": out_dir,
                                          "progress": False, "threads": threads, "max_minutes": None,
                                          "batch_size": batch_size, **overrides})
        data = RandomPairs(256, batch_size, config.img_size, batches=steps + 2)
        trainer = Trainer(config, data)
        trainer.fit(until_step=2)  # warm-up steps (allocator, oneDNN kernels) are not timed
        started = time.perf_counter()
        trainer.fit(until_step=2 + steps)
        return 2 * batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps per configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the demo uses 2 cores)")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per step (demo recipe: 64)")
    args = parser.parse_args()
    rates = [(label, measure(overrides, args.steps, args.threads, args.batch_size)) for label, overrides in CONFIGS]
    reference = rates[0][1]
    print(f"| configuration ({args.threads} threads, batch {args.batch_size} pairs) | train images/s | vs demo recipe |")
    print("|---|---|---|")
    for label, rate in rates:
        print(f"| {label} | {rate:.1f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
