"""The end-to-end demo: every stage of the pipeline, run as the same `meanloc` subcommands a user
would type, on the embedded synthetic world.

Each step records the command it ran in `<workdir>/demo-state.json`; a re-run reuses a step whose
outputs exist and whose command is unchanged, and `--fresh` starts over. The demo prints every
command, so it doubles as a walkthrough of the CLI.
"""

import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from meanloc.errors import MeanlocError


@dataclass
class DemoOptions:
    workdir: str = "meanloc-demo"
    fresh: bool = False
    # Training runs to the synthetic recipe's step budget (or `train_steps`), so a loaded machine
    # trains the same model as an idle one, only slower; `train_minutes` is a safety stop.
    train_minutes: float = 30.0
    train_steps: int = 0  # 0: the synthetic recipe's (training.config.SYNTHETIC_STEPS)
    flight_frames: int = 150
    seed: int = 0
    data_preset: str = "demo"
    model_preset: str = "mean-small"
    batch_size: int = 0  # 0: the synthetic training recipe's
    flight_pattern: str = "lawnmower"
    # An oblique camera inside the benchmark's pose range (altitude 150-300 m, pitch 30-60 deg).
    flight_altitude_m: float = 200.0
    flight_pitch_deg: float = 40.0
    # Train and fly with pose-aware queries (frames rectified with their attitude); False gives
    # MEAN as published, frames embedded as captured.
    pose_aware: bool = True
    # Drone views (and the flight) from the second date of the world. Off by default: a network
    # trained from scratch for minutes on CPU stays at chance level there (see README), so the
    # default demo uses one date, an optimistic setting that every report labels.
    cross_source: bool = False


@dataclass
class DemoStep:
    name: str
    description: str
    argv: List[str]
    outputs: List[Path] = field(default_factory=list)


def data_step(options: DemoOptions, work: Path) -> DemoStep:
    data = work / "data"
    return DemoStep("data", "generate the synthetic world and its cross-view dataset",
                    ["data", "synth", "--data-preset", options.data_preset, "--seed", str(options.seed), "--out", str(data)]
                    + ([] if options.cross_source else ["--same-source"]),
                    [data / "dataset.json", data / "world" / "satellite.tif"])


def held_out_area(data: Path, margin_m: float = 500.0) -> str:
    """LAT_MIN,LON_MIN,LAT_MAX,LON_MAX around the test locations, widened by up to `margin_m` but
    by at most a third of the ground that separates them from training and validation footprints
    (so a flight's own footprints stay off ground any model selection saw)."""
    import csv
    import math

    with open(str(data / "locations.csv"), newline="") as handle:
        test = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    if not test:
        raise MeanlocError("{} has no test locations to fly over".format(data / "locations.csv"))
    geometry = json.loads((data / "dataset.json").read_text()).get("geometry", {})
    clearance = float(geometry.get("min_split_gap_m", 0.0)) - float(geometry.get("footprint_reach_m", 0.0))
    margin = max(0.0, min(margin_m, clearance / 3.0))
    lats = [float(row["lat"]) for row in test]
    lons = [float(row["lon"]) for row in test]
    margin_lat = margin / 111_320.0
    margin_lon = margin / (111_320.0 * math.cos(math.radians(sum(lats) / len(lats))))
    return "{:.6f},{:.6f},{:.6f},{:.6f}".format(min(lats) - margin_lat, min(lons) - margin_lon,
                                                max(lats) + margin_lat, max(lons) + margin_lon)


def plan_steps(options: DemoOptions, work: Path, use_tensorrt: bool, flight_area: str) -> List[DemoStep]:
    """Every step after `data` (the flight area comes from the generated dataset)."""
    data, train, calib = work / "data", work / "train", work / "calib"
    checkpoint = train / "best.pt"
    onnx = work / "model.onnx"
    int8_cpu = calib / "model.int8-cpu.onnx"
    flight_models = {"fp32": onnx, "int8": int8_cpu}
    steps = [
        DemoStep("train", "train {} on the synthetic world ({} steps, stop after {:g} min at the latest)".format(
                     options.model_preset, options.train_steps or "the recipe's", options.train_minutes),
                 ["train", "--dataset", "synthetic", "--data", str(data), "--preset", options.model_preset,
                  "--max-minutes", str(options.train_minutes), "--seed", str(options.seed), "--out", str(train),
                  "--selection", "val"] + ([] if options.pose_aware else ["--no-pose-aware-queries"])
                 + (["--batch-size", str(options.batch_size)] if options.batch_size else [])
                 + (["--max-steps", str(options.train_steps)] if options.train_steps else []),
                 [checkpoint]),
        DemoStep("eval", "evaluate drone->satellite and satellite->drone retrieval on the held-out test split",
                 ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--dataset", "synthetic",
                  "--split", "test", "--protocol", "both", "--out", str(work / "eval.json"), "--no-progress"],
                 [work / "eval.json"]),
        DemoStep("export", "export the inference graph to ONNX (opset 17) with a PyTorch parity check",
                 ["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(onnx)], [onnx]),
        DemoStep("calibrate", "calibrate INT8 on CPU: TensorRT cache, Q/DQ model for TensorRT, CPU INT8 model",
                 ["calibrate", "--onnx", str(onnx), "--data", str(data), "--split", "train", "--out", str(calib),
                  "--num-images", "256", "--no-progress"],
                 [calib / "calibration.cache", int8_cpu]),
    ]
    if use_tensorrt:
        engines = {"fp16": work / "model.fp16.engine", "int8": work / "model.int8.engine"}
        steps += [
            DemoStep("engine-fp16", "build the TensorRT FP16 engine",
                     ["export", "engine", "--onnx", str(onnx), "--out", str(engines["fp16"]), "--precision", "fp16"],
                     [engines["fp16"]]),
            DemoStep("engine-int8", "build the TensorRT INT8 engine from the Q/DQ model",
                     ["export", "engine", "--onnx", str(calib / "model.int8-qdq-trt.onnx"), "--out",
                      str(engines["int8"]), "--precision", "int8-explicit"], [engines["int8"]]),
        ]
        flight_models = dict(engines)
    # The bank is embedded once by the FP32 reference; every precision's flight queries that same bank.
    steps.append(DemoStep(
        "bank", "embed the satellite orthophoto into a tile bank (200 m tiles, 75 % overlap)",
        ["bank", "build", "--model", str(onnx),
         "--orthophoto", str(data / "world" / "satellite.tif"), "--out", str(work / "bank"),
         "--tile-m", "200", "--overlap", "0.75", "--no-progress"],
        [work / "bank" / "manifest.json"]))
    for precision, model in flight_models.items():
        steps.append(DemoStep(
            "flight-" + precision, "fly a synthetic trajectory through the localization loop ({})".format(precision),
            ["localize", "--model", str(model), "--bank", str(work / "bank"),
             "--source", "synthetic:" + str(data / "world" / ("drone.tif" if options.cross_source else "satellite.tif")), "--frames", str(options.flight_frames),
             "--flight-seed", str(options.seed), "--flight-area", flight_area,
             "--flight-pattern", options.flight_pattern, "--flight-altitude", "{:g}".format(options.flight_altitude_m),
             "--flight-pitch", "{:g}".format(options.flight_pitch_deg), "--estimator", "weighted", "--window-m", "400",
             "--jsonl", str(work / "flight-{}.jsonl".format(precision)),
             "--geojson", str(work / "flight-{}.geojson".format(precision)),
             "--summary", str(work / "flight-{}.json".format(precision))],
            [work / "flight-{}.json".format(precision)]))
    profile_argv = ["profile", "--iterations", "60", "--warmup", "5", "--min-iterations", "50",
                    "--bank", str(work / "bank"), "--out", str(work / "profile"), "--no-telemetry"]
    for model in flight_models.values():
        profile_argv += ["--model", str(model)]
    steps.append(DemoStep("profile", "profile per-stage latency of every precision, interleaved",
                          profile_argv, [work / "profile" / "report.json"]))
    return steps


def _load_state(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _run_step(step: DemoStep, position: str, state: Dict[str, Any], state_path: Path,
              timings: Dict[str, float], upstream_changed: bool) -> bool:
    """Run one step through the `meanloc` CLI, or reuse it if its command and outputs are unchanged
    and no earlier step was re-run; returns whether it ran."""
    from meanloc.cli import main as meanloc_main
    from meanloc.runtime.artifacts import atomic_write_json

    done = state.get(step.name, {})
    if not upstream_changed and done.get("argv") == step.argv and all(p.exists() for p in step.outputs):
        print("[{}] {}: reusing the finished step".format(position, step.name))
        timings[step.name] = done.get("seconds", 0.0)
        return False
    print("\n[{}] {}\n  $ meanloc {}".format(position, step.description,
                                              " ".join(shlex.quote(a) for a in step.argv)), flush=True)
    step_start = time.monotonic()
    # The demo owns its work folder: a re-run replaces a step's earlier outputs (each command keeps
    # them until it has produced their replacement). `export engine` reuses or replaces by itself.
    code = meanloc_main(step.argv + ([] if step.argv[:2] == ["export", "engine"] else ["--overwrite"]))
    if code != 0:
        raise MeanlocError("demo step '{}' failed (exit {}); fix the cause and re-run `meanloc demo` to "
                           "resume".format(step.name, code))
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        raise MeanlocError("demo step '{}' finished without writing {}".format(step.name, ", ".join(missing)))
    timings[step.name] = round(time.monotonic() - step_start, 1)
    state[step.name] = {"argv": step.argv, "seconds": timings[step.name]}
    atomic_write_json(state_path, state)
    return True


def run_demo(options: DemoOptions) -> int:
    from meanloc.runtime.artifacts import ensure_writable_dir

    work = Path(options.workdir)
    if options.fresh and work.exists():
        shutil.rmtree(str(work))
    ensure_writable_dir(work)
    from meanloc.runtime.trt_env import tensorrt_gpu_unavailable_reason

    use_tensorrt = tensorrt_gpu_unavailable_reason() is None
    print("meanloc demo: work folder {}, backend: {}".format(
        work, "TensorRT" if use_tensorrt else "ONNX Runtime on CPU (no TensorRT here)"))
    state_path = work / "demo-state.json"
    state = _load_state(state_path)
    started = time.monotonic()
    timings: Dict[str, float] = {}
    first = data_step(options, work)
    total = 1 + len(plan_steps(options, work, use_tensorrt, flight_area=""))
    changed = _run_step(first, "1/{}".format(total), state, state_path, timings, upstream_changed=False)
    steps = [first] + plan_steps(options, work, use_tensorrt, held_out_area(work / "data"))
    for number, step in enumerate(steps[1:], 2):
        changed = _run_step(step, "{}/{}".format(number, total), state, state_path, timings, changed) or changed
    from .demo_report import write_demo_report

    summary = write_demo_report(work, steps, timings, time.monotonic() - started)
    print("\n" + summary)
    return 0

