"""Retrieval and flight error against the sensors' attitude and height errors (`--sensor-noise`).

For each preset (ideal; good-gimbal: heading 2 deg, pitch/roll 0.5 deg, height 2 m sigma;
cheap-imu: heading 8 deg sigma + 5 deg bias, pitch/roll 2 deg, height 10 m) and each given
pose-aware model:

- test-split R@1: every drone query is rectified with an attitude drawn from the preset around its
  recorded one (the frame itself is unchanged, as when a real sensor errs);
- a synthetic flight over the held-out test area (`meanloc localize --sensor-noise PRESET`: frames
  rendered with the true pose, the reported attitude interpolated from a 20 Hz noisy stream),
  through the onboard loop with the demo's settings: median / p90 error of the Kalman estimate and
  of the raw fixes, share within 25 m.

Retrieval alone, without the geometric fine stage of issue 12 (the lead re-measures with it).

    python bench/bench_sensor_noise.py --data DATASET --checkpoint A.pt [--checkpoint B.pt ...]
        [--frames 150] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import machine_description

from meanloc.cli import main as meanloc

PRESETS = ("ideal", "good-gimbal", "cheap-imu")


def noisy_test_r1(onnx: Path, data: Path, preset: str, seed: int = 0) -> tuple[float, float]:
    """(R@1 full, chance) of drone->satellite on the test split with noisy query attitudes."""
    from meanloc.runtime.backends import open_backend
    from meanloc.runtime.backends.base import l2_normalise
    from meanloc.runtime.images import read_image
    from meanloc.runtime.preprocess import preprocess_batch
    from meanloc.runtime.query_view import prepare_query
    from meanloc.runtime.sim.sensors import sensor_preset
    from meanloc.training.attitude_noise import noisy_attitude
    from meanloc.training.data.query_images import read_view_attitude
    from meanloc.training.data.splits import load_eval_split
    from meanloc.training.metrics import retrieval_metrics

    split = load_eval_split(data, "synthetic", "d2s", "test")
    rng = np.random.default_rng([seed, PRESETS.index(preset)])
    noise = sensor_preset(preset)
    with open_backend(str(onnx)) as backend:
        spec, view = backend.identity.preprocess, backend.identity.query_view

        def embed(images: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([l2_normalise(backend.embed(preprocess_batch(images[i:i + 64], spec)))
                                   for i in range(0, len(images), 64)])

        gallery = embed([read_image(p) for p in split.gallery_paths])
        queries = []
        for path in split.query_paths:
            truth = read_view_attitude(path)
            attitude = truth if noise.ideal else noisy_attitude(truth, noise, rng)
            queries.append(prepare_query(read_image(path), view, attitude, spec.size))
        metrics = retrieval_metrics(embed(queries), gallery, split.query_labels, split.gallery_labels, "full",
                                    gallery_on_disk=len(split.gallery_paths))
    return 100.0 * metrics.recall[1], 100.0 / metrics.gallery_ranked


def flight(onnx: Path, bank: Path, data: Path, preset: str, frames: int, out: Path) -> dict:
    from meanloc.demo import held_out_area

    world = data / "world" / ("drone.tif" if (data / "world" / "drone.tif").is_file() else "satellite.tif")
    summary = out / f"flight-{preset}.json"
    code = meanloc(["localize", "--model", str(onnx), "--bank", str(bank), "--source", f"synthetic:{world}",
                    "--frames", str(frames), "--flight-seed", "0", "--flight-area", held_out_area(data),
                    "--flight-pattern", "lawnmower", "--flight-altitude", "200", "--flight-pitch", "40",
                    "--estimator", "weighted", "--window-m", "400", "--sensor-noise", preset,
                    "--summary", str(summary), "--jsonl", str(out / f"flight-{preset}.jsonl")])
    if code != 0:
        raise SystemExit(f"flight failed ({preset}, {onnx})")
    return json.loads(summary.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="synthetic dataset (its world/*.tif and test split)")
    parser.add_argument("--checkpoint", action="append", required=True, help="pose-aware checkpoint (repeatable)")
    parser.add_argument("--frames", type=int, default=150, help="frames per flight (default 150, the demo's)")
    parser.add_argument("--work", default=None, help="folder for ONNX, banks and flights (default: temporary)")
    args = parser.parse_args()
    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="meanloc-bench-sensor-"))
    rows = []
    for index, checkpoint in enumerate(args.checkpoint):
        out = work / f"model{index}"
        out.mkdir(parents=True, exist_ok=True)
        onnx, bank = out / "model.onnx", out / "bank"
        if not onnx.is_file() and meanloc(["export", "onnx", "--checkpoint", checkpoint, "--out", str(onnx)]) != 0:
            raise SystemExit(f"export failed for {checkpoint}")
        if not (bank / "manifest.json").is_file() and meanloc(
                ["bank", "build", "--model", str(onnx), "--orthophoto", str(data / "world" / "satellite.tif"),
                 "--out", str(bank), "--overlap", "0.75", "--no-progress"]) != 0:
            raise SystemExit(f"bank build failed for {checkpoint}")
        noise_trained = json.loads(Path(checkpoint).with_name("train_config.json").read_text()).get(
            "attitude_noise", "ideal")
        for preset in PRESETS:
            r1, chance = noisy_test_r1(onnx, data, preset)
            summary = flight(onnx, bank, data, preset, args.frames, out)
            rows.append((checkpoint, noise_trained, preset, r1, chance, summary["error_filtered"], summary["error_raw_fix"]))
    print(f"Sensor noise vs retrieval and flight error, retrieval only (no fine stage); drone views and flight from "
          f"{data}; {machine_description()}\n")
    print("| model (trained with attitude noise) | sensors | test R@1 full (chance) | flight median m | p90 m | "
          "<= 25 m | raw-fix median m |")
    print("|---|---|---|---|---|---|---|")
    for checkpoint, trained, preset, r1, chance, filtered, raw in rows:
        def fmt(value, pattern):
            return "-" if value is None else pattern.format(value)

        print(f"| {Path(checkpoint).parent.name} ({trained}) | {preset} | {r1:.1f} ({chance:.1f}) | "
              f"{fmt(filtered['median_m'], '{:.1f}')} | {fmt(filtered['p90_m'], '{:.0f}')} | "
              f"{fmt(filtered['within_25m'], '{:.0%}')} | {fmt(raw['median_m'], '{:.1f}')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
