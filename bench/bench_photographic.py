"""Learning curves on the photographic second date of the synthetic world, within the demo budget.

The drone views (and flights) come from date 2, which the generator paints photographically
(surface texture, field phenology, tree crowns, soft shadows under another sun, cars, mosaic
seams, a softer sensor, ~1 m co-registration error, JPEG; training/data/synth/photographic.py);
the satellite tiles from date 1. Training uses the synthetic recipe (mean-small, pose-aware
queries, the recipe's step budget) through the real `meanloc train` / `meanloc eval` commands:

- `scratch`: the recipe as is, from random weights;
- `ssl`: in-domain self-supervised pretraining on the satellite orthophoto alone (crops of the
  training area under strong photometric and geometric augmentation; no drone data) for
  `--ssl-steps`, then the recipe from those weights for the rest of the same step budget.

Every validation (each epoch) is a point of the curve; the target is val R@1 >= 10x chance.
Step budgets make the runs independent of the machine's load; the table reports wall time too.

    python bench/bench_photographic.py [--data DATASET] [--work DIR] [--steps 1000] [--ssl-steps 300]
        [--settings scratch,ssl] [--threads N]

Without `--data` it generates the demo dataset with drone views from date 2 (`meanloc data synth
--preset demo`, the cross-source default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine_description

from meanloc.cli import main as meanloc


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


THREADS: list[str] = []  # --threads N for every training run (a busy machine runs better on fewer)


def train(data: Path, out: Path, steps: int, extra: list[str]) -> float:
    started = time.monotonic()
    code = meanloc(["train", "--dataset", "synthetic", "--data", str(data), "--max-steps", str(steps),
                    "--seed", "0", "--out", str(out), "--selection", "val", "--no-progress", *THREADS, *extra])
    if code != 0:
        raise SystemExit(f"training failed for {out} (exit {code})")
    return time.monotonic() - started


def evaluate(data: Path, checkpoint: Path, out: Path) -> dict:
    if meanloc(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--dataset", "synthetic", "--split",
                "test", "--protocol", "both", "--out", str(out), "--no-progress"]) != 0:
        raise SystemExit(f"evaluation failed for {checkpoint}")
    report = json.loads(out.read_text())
    return {(r["direction"], r["protocol"]): r["metrics"] for r in report["results"]}


def run_setting(name: str, data: Path, work: Path, steps: int, ssl_steps: int) -> dict:
    run = work / name
    seconds = 0.0
    curve: list[tuple[int, float]] = []
    extra: list[str] = []
    if name == "ssl":
        pre = work / "ssl-pretrain"
        seconds += train(data, pre, ssl_steps, ["--objective", "ssl"])
        curve += [(r["step"], r["r1"]) for r in _records(pre, "val")]
        extra = ["--init-checkpoint", str(pre / "last.pt")]
        steps -= ssl_steps
    seconds += train(data, run, steps, extra)
    offset = ssl_steps if name == "ssl" else 0
    val = _records(run, "val")
    curve += [(offset + r["step"], r["r1"]) for r in val]
    metrics = evaluate(data, run / "best.pt", work / f"{name}-eval.json")
    return {"seconds": seconds, "curve": curve, "chance": val[-1]["chance_r1"], "best_val": max(r["r1"] for r in val),
            "test": metrics[("d2s", "full")], "test_junk": metrics[("d2s", "junk_distractors")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="synthetic dataset with date-2 drone views (default: generate)")
    parser.add_argument("--work", default=None, help="folder for datasets and runs (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=None, help="total step budget (default: the recipe's)")
    parser.add_argument("--ssl-steps", type=int, default=300, help="of which self-supervised pretraining (ssl)")
    parser.add_argument("--settings", default="scratch,ssl", help="comma-separated: scratch, ssl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training run")
    args = parser.parse_args()
    if args.threads:
        THREADS.extend(["--threads", str(args.threads)])
    from meanloc.training.config import SYNTHETIC_STEPS

    steps = args.steps or SYNTHETIC_STEPS
    work = Path(args.work or tempfile.mkdtemp(prefix="meanloc-bench-photo-"))
    data = Path(args.data) if args.data else work / "data"
    if not args.data and meanloc(["data", "synth", "--preset", "demo", "--seed", "0", "--out", str(data)]) != 0:
        raise SystemExit("dataset generation failed")
    manifest = json.loads((data / "dataset.json").read_text())
    if not manifest.get("cross_source"):
        raise SystemExit(f"{data} has drone views from the satellite date; this bench needs the second date")
    results = [(name, run_setting(name, data, work, steps, args.ssl_steps)) for name in args.settings.split(",")]
    print(f"Photographic second date ({manifest['generator_version']}), {steps} steps in all (mean-small, recipe "
          f"defaults, seed 0), drone->satellite R@1 on {data}; {machine_description()}\n")
    print("| setting | wall s | best val R@1 | chance | x chance | test R@1 full | test R@1 junked | test AP full |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results:
        label = name if name == "scratch" else f"ssl ({args.ssl_steps} self-supervised + {steps - args.ssl_steps})"
        print(f"| {label} | {r['seconds']:.0f} | {r['best_val']:.1f} | {r['chance']:.2f} | "
              f"{r['best_val'] / r['chance']:.0f} | {r['test']['R@1']:.1f} | {r['test_junk']['R@1']:.1f} | "
              f"{r['test']['AP']:.1f} |")
    print("\nValidation R@1 (%) by step:\n")
    for name, r in results:
        print(f"- {name}: " + ", ".join(f"{step}: {r1:.1f}" for step, r1 in r["curve"]))
    met = all(r["best_val"] >= 10 * r["chance"] for _, r in results)
    print(f"\nval R@1 >= 10x chance in every setting: {'met' if met else 'FAIL'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
