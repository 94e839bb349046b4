"""ONNX Runtime's idle-thread spinning in the onboard loop: on (ORT's default) or off (the runtime's).

After each run ORT's intra-op threads spin for a while waiting for more work. A bench that only
runs the network back to back gains from it; the loop does not: between two inferences it decodes,
rectifies and runs the fine stage on the same cores, which the spinning threads then take. This
bench flies the same pre-rendered frames of the demo's cross-source flight through the real loop
(random-weight `mean-paper` 384 px on ONNX Runtime FP32 CPU, a bank of the world's orthophoto with
its SIFT layer) with one session of each kind, alternating the order each round, and prints the
median per-frame wall time, network time and fine-stage time of each (ratios in one run).

Usage: python bench/bench_ort_spinning.py [--data DATA] [--frames 30] [--rounds 3]
(without --data it generates the demo's cross-source world first, ~1 min)
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_local_features import JpegFlight
from common import machine_description, random_embedder, random_onnx

from meanloc.cli import main as meanloc
from meanloc.demo import held_out_area
from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.bank.build import build_bank_from_orthophoto
from meanloc.runtime.bank.feature_build import LayerParams, build_feature_layer
from meanloc.runtime.features.extract import FeatureSpec
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.loop import LocalizationLoop, LoopConfig
from meanloc.runtime.localize.synthetic import SyntheticFlightOptions, SyntheticFlightSource
from meanloc.runtime.localize.window import WindowConfig

SETTINGS = {"on (ORT's default)": "1", "off (the runtime's)": "0"}


def use_session(backend, session) -> None:
    """Swap the backend's session for one made with other options (bench-only surgery)."""
    backend._session = session
    backend._binding = session.io_binding()
    backend._host_outputs = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a cross-source `meanloc data synth` folder")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            with contextlib.redirect_stdout(sys.stderr):
                if meanloc(["data", "synth", "--preset", "demo", "--seed", "0", "--out", str(data)]) != 0:
                    raise SystemExit("generating the demo world failed")
        satellite, drone = data / "world" / "satellite.tif", data / "world" / "drone.tif"
        area = tuple(float(v) for v in held_out_area(data).split(","))
        flight = JpegFlight(SyntheticFlightSource(str(drone), SyntheticFlightOptions(
            frames=args.frames, altitude_m=200.0, pitch_deg=40.0, pattern="lawnmower", seed=0, area_latlon=area)))
        model = Path(tmp) / "mean-paper.onnx"
        random_onnx(model, "mean-paper")
        config = LoopConfig(estimator=EstimatorConfig(method="weighted"), window=WindowConfig(radius_m=400.0))
        results = {label: [] for label in SETTINGS}
        with open_backend(str(model), backend="onnxruntime", providers=["cpu"]) as backend:
            bank_dir = Path(tmp) / "bank"
            build_bank_from_orthophoto(satellite, random_embedder(backend.identity), bank_dir, tile_m=200.0,
                                       overlap=0.75, progress=False)
            build_feature_layer(bank_dir, Orthophoto.from_geotiff(satellite), LayerParams(FeatureSpec("sift")),
                                progress=False)
            bank = SatelliteBank.open(bank_dir)
            sessions = {}
            for label, spinning in SETTINGS.items():
                options = ort.SessionOptions()
                options.intra_op_num_threads = 2
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
                sessions[label] = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            for round_index in range(args.rounds):
                order = list(SETTINGS) if round_index % 2 == 0 else list(reversed(SETTINGS))
                for label in order:
                    use_session(backend, sessions[label])
                    started = time.perf_counter()
                    summary = LocalizationLoop(backend, bank, config, []).run(flight, max_frames=args.frames)
                    wall = (time.perf_counter() - started) / args.frames * 1000.0
                    results[label].append((wall, summary["mean_ms"]["embed"], summary["mean_ms"]["refine"]))
    print(f"ORT intra-op spinning in the loop: {args.frames} frames of the demo's cross-source flight, {args.rounds} "
          f"alternating rounds, random-weight mean-paper 384 px, ORT FP32 CPU 2 threads, SIFT fine stage; "
          f"{machine_description()}\n")
    print("| spinning | per-frame wall ms | network ms | fine stage ms |")
    print("|---|---:|---:|---:|")
    base = None
    for label, rows in results.items():
        wall, embed, refine = np.median(np.array(rows), axis=0)
        base = base or wall
        print(f"| {label} | {wall:.1f} ({wall / base:.2f}x) | {embed:.1f} | {refine:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
