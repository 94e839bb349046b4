"""Share of the per-frame time of `meanloc localize` that is NOT network inference (target <= 10 %).

Set-up, in one run on this machine: a random-init `mean-paper` embedder (384 px, 768-d) exported
with torch.onnx and run by ONNX Runtime on CPU; a 10,000-tile bank (100 x 100 grid, random unit
embeddings, built by the real bank builder); a 640x480 MJPG video written with
cv2.VideoWriter. The loop runs with every sink on (JSON Lines file, CSV, GeoJSON track, MAVLink
GPS_INPUT over UDP), a global search of all 10k tiles and every fix fed to the Kalman filter
(the worst case), after a few warm-up frames.

Per-frame stages are the loop's own timers: decode (video read), preprocess (resize +
normalise), embed (the ONNX Runtime call: the network), search (bank top-k + margin), estimate
and filter, sinks. The overhead share is 1 - embed / total, measured as ratios in one run.
Prints a Markdown table row (and its header).

Usage: python bench/bench_loop_overhead.py [--frames 20] [--warmup 3] [--model paper.onnx] [--threads N]
"""

import argparse
import csv
import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import machine_description, random_embedder, random_onnx

from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.bank.build import build_bank_from_tiles
from meanloc.runtime.bank.frame import LocalFrame
from meanloc.runtime.bank.tiles import CORNER_COLUMNS
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.loop import RECORD_FIELDS, STAGES, LocalizationLoop, LoopConfig
from meanloc.runtime.localize.mavlink_sink import MavlinkGpsInputSink
from meanloc.runtime.localize.sinks import CsvSink, GeoJsonTrackSink, JsonlSink
from meanloc.runtime.localize.sources import open_source

GRID = 100  # 100 x 100 = 10,000 tiles
TILE_M = 200.0
STRIDE_M = 100.0
LAT0, LON0 = 47.0, 8.0


def write_random_bank(folder: Path, identity) -> None:
    """A 100 x 100 grid of 200 m tiles every 100 m, built by the real builder from a tile list."""
    frame = LocalFrame(LAT0, LON0)
    offsets = (np.arange(GRID) - (GRID - 1) / 2.0) * STRIDE_M
    half = TILE_M / 2.0
    tiles = folder / "tiles"
    tiles.mkdir()
    cv2.imwrite(str(tiles / "tile.png"), np.zeros((16, 16, 3), np.uint8))  # pixels are never looked at
    with open(tiles / "tiles.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "center_lat", "center_lon", *CORNER_COLUMNS])
        for row, y in enumerate(offsets[::-1]):
            x = offsets
            lat, lon = frame.to_latlon(np.stack([x, x - half, x + half, x + half, x - half]),
                                       np.stack([np.full(GRID, y + d) for d in (0, half, half, -half, -half)]))
            for col in range(GRID):
                corners = [v for k in range(1, 5) for v in (lat[k, col], lon[k, col])]
                writer.writerow([f"r{row}c{col}", "tile.png", lat[0, col], lon[0, col], *corners])
    build_bank_from_tiles(tiles, tiles / "tiles.csv", random_embedder(identity), folder / "bank", progress=False)


def write_test_video(path: Path, frames: int) -> None:
    rng = np.random.RandomState(1)
    base = cv2.resize(rng.randint(0, 256, (60, 80, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    for i in range(frames):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()


def run_loop(backend, bank, video: Path, out: Path, frames: int) -> dict:
    sinks = [JsonlSink(str(out / "out.jsonl")), CsvSink(str(out / "out.csv"), RECORD_FIELDS, STAGES),
             GeoJsonTrackSink(str(out / "track.geojson")), MavlinkGpsInputSink("udpout:127.0.0.1:14599")]
    # Worst case for the overhead: global search over all 10k tiles, every fix fed to the filter.
    config = LoopConfig(estimator=EstimatorConfig(min_margin=0.0))
    loop = LocalizationLoop(backend, bank, config, sinks)
    return loop.run(open_source(str(video)), max_frames=frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="measured frames")
    parser.add_argument("--warmup", type=int, default=3, help="frames run first and not measured")
    parser.add_argument("--model", default=None, help="a mean-paper ONNX to use instead of exporting one")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else folder / "mean-paper.onnx"
        if not args.model:
            random_onnx(model, "mean-paper")
        video = folder / "flight.avi"
        write_test_video(video, args.frames + args.warmup)
        with open_backend(str(model), backend="onnxruntime", providers=["cpu"], threads=args.threads) as backend:
            write_random_bank(folder, backend.identity)
            bank = SatelliteBank.open(folder / "bank", device="cpu")
            run_loop(backend, bank, video, folder, args.warmup)
            summary = run_loop(backend, bank, video, folder, args.frames)
    ms = summary["mean_ms"]
    total = sum(ms[stage] for stage in (*STAGES, "sinks"))
    share = 1.0 - ms["embed"] / total
    print("Loop overhead, {} measured frames after {} warm-up; {}".format(
        summary["frames_processed"], args.warmup, machine_description()))
    print()
    print("| preset | input | bank | decode ms | preprocess ms | embed (network) ms | search ms | estimate+filter ms "
          "| sinks ms | per-frame ms | non-inference share | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("| mean-paper (ONNX Runtime CPU) | 384 px | 10k x 768 | {:.2f} | {:.2f} | {:.1f} | {:.2f} | {:.2f} | {:.2f} "
          "| {:.1f} | {:.1%} | <= 10 % ({}) |".format(
              ms["decode"], ms["preprocess"], ms["embed"], ms["search"], ms["estimate"] + ms["filter"], ms["sinks"],
              total, share, "met" if share <= 0.10 else "NOT met"))


if __name__ == "__main__":
    main()
