"""Metres from geometry: the demo's flight with its trained model, noisy sensors, and an UNTRAINED model.

Reads a finished `meanloc demo` work folder (its data, ONNX model and bank with the local-feature
layer) and flies the demo's synthetic flight (same frames, seed, area, camera and options as the
demo's `localize` step) through the real loop:
  * trained: the demo's FP32 model and bank (as the demo's own flight step), with ideal attitude
    and with each `--sensor-noise` preset asked for (frames rendered with the true pose carry the
    preset's heading, pitch/roll and height errors; the loop allows for the same errors);
  * untrained: a random-weight model of the same preset, exported by the real exporter, with a bank
    of its own embeddings and the same orthophoto's local features, flown with `--window-m 400`
    from the dead-reckoning prior. Retrieval is then at chance: whatever is within metres comes
    from the fine stage.
Errors are against the true look-at point; shares "within 25 m" count frames without an estimate
as failures. Prints a Markdown table.

Usage: python bench/bench_fine_localization.py --workdir meanloc-demo [--frames 150] [--sensor-noise cheap-imu,...]
"""

import argparse
import json
import tempfile
from pathlib import Path

from common import machine_description, random_onnx

from meanloc.cli import main as meanloc
from meanloc.demo import DemoOptions, held_out_area, plan_steps


def flight_argv(work: Path, model: Path, bank: Path, summary: Path, options: DemoOptions) -> list:
    """The demo's own FP32 localize step (meanloc/demo.py), with another model, bank and outputs."""
    step = next(s for s in plan_steps(options, work, False, held_out_area(work / "data")) if s.name == "flight-fp32")
    replace = {"--model": str(model), "--bank": str(bank), "--summary": str(summary),
               "--jsonl": str(summary.with_suffix(".jsonl")), "--geojson": str(summary.with_suffix(".geojson"))}
    argv = list(step.argv)
    for flag, value in replace.items():
        argv[argv.index(flag) + 1] = value
    return argv


def row(label: str, summary: dict) -> str:
    frames = max(1, summary["frames_processed"])

    def share(stats: dict) -> float:
        return (stats["within_25m"] or 0.0) * stats["frames"] / frames if stats["frames"] else 0.0

    def m(value):
        return "-" if value is None else f"{value:.1f}"

    filtered, fine, retrieval = summary["error_filtered"], summary["error_fine_fix"], summary["error_retrieval_fix"]
    return (f"| {label} | {frames} | {summary['fixes_geometric'] / frames:.0%} | {m(filtered['median_m'])} | "
            f"{m(filtered['p90_m'])} | {share(filtered):.1%} | {m(fine['median_m'])} / {m(fine['p90_m'])} | "
            f"{m(retrieval['median_m'])} / {m(retrieval['p90_m'])} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="meanloc-demo", help="a finished `meanloc demo` folder")
    parser.add_argument("--frames", type=int, default=None, help="frames to fly (default: the demo's)")
    parser.add_argument("--sensor-noise", default="good-gimbal,cheap-imu",
                        help="comma-separated sensor presets to fly the trained model with too ('' for none)")
    parser.add_argument("--untrained-only", action="store_true",
                        help="fly only the untrained model (needs just the demo's data folder and bank)")
    args = parser.parse_args()
    work = Path(args.workdir)
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    cross_source = bool(dataset.get("cross_source"))
    options = DemoOptions(workdir=str(work), cross_source=cross_source)
    if args.frames:
        options.flight_frames = args.frames
    preset = options.model_preset
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.untrained_only:
            trained = folder / "trained.json"
            if meanloc(flight_argv(work, work / "model.onnx", work / "bank", trained, options)) != 0:
                raise SystemExit("the trained flight failed")
            rows.append(row(f"trained {preset} (the demo's model), ideal sensors", json.loads(trained.read_text())))
            for preset_name in [p for p in args.sensor_noise.split(",") if p]:
                noisy = folder / f"trained-{preset_name}.json"
                argv = flight_argv(work, work / "model.onnx", work / "bank", noisy, options)
                if meanloc(argv + ["--sensor-noise", preset_name]) != 0:
                    raise SystemExit(f"the {preset_name} flight failed")
                rows.append(row(f"trained {preset}, {preset_name} sensors", json.loads(noisy.read_text())))
        untrained_model = folder / "untrained.onnx"
        random_onnx(untrained_model, preset)
        satellite = work / "data" / "world" / "satellite.tif"
        tile_m = 200.0  # the demo's bank (meanloc/demo.py)
        # The same kind of local features as the demo's bank.
        kind = json.loads((work / "bank" / "manifest.json").read_text())["local_features"]["spec"]["kind"]
        if meanloc(["bank", "build", "--model", str(untrained_model), "--orthophoto", str(satellite), "--out",
                    str(folder / "bank"), "--tile-m", f"{tile_m:g}", "--overlap", "0.75", "--local-features", kind,
                    "--no-progress"]) != 0:
            raise SystemExit("the untrained bank failed")
        untrained = folder / "untrained.json"
        if meanloc(flight_argv(work, untrained_model, folder / "bank", untrained, options)) != 0:
            raise SystemExit("the untrained flight failed")
        rows.append(row(f"untrained {preset} (random weights)", json.loads(untrained.read_text())))
    setting = "cross-source (flight from the second date)" if cross_source else "single date"
    print(f"Fine localization on the demo's flight ({setting}, {kind} features, {options.flight_frames} frames, "
          f"{options.flight_altitude_m:g} m, {options.flight_pitch_deg:g} deg pitch, window 400 m); "
          f"{machine_description()}\n")
    print("| model | frames | geometric fixes | filtered median m | filtered p90 m | within 25 m (all frames) | "
          "geometric fix median / p90 m | retrieval fix median / p90 m |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
