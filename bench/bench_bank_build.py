"""Bank-build throughput: tiles/s of `build_bank` against the model's own batch throughput (the ceiling); torchrun speed-up.

In one run, per model (random weights through the real exporter, bench/common.random_onnx) and
one ONNX Runtime CPU session per I/O-binding setting, at the same batch size:
- ceiling: `backend.embed` on batches of tiles already cut and preprocessed, tiles/s;
- `build_bank` from a GeoTIFF orthophoto (per tile: north-up crop with area resampling, then the
  model's preprocessing) and from JPEG tile files (per tile: decode, hash, UTM centre, then
  preprocessing), with the tile-loading thread pool (default workers) and without it (workers=0);
  a build includes writing the bank, its index and its verification;
- the ceiling and the pooled build with ONNX Runtime I/O binding off.
Configurations are interleaved over rounds (medians reported), so machine load hits all alike.
With --distributed: `meanloc bank build` as one process vs `torchrun --nproc-per-node 2` (each
rank with half the cores), wall time including process start-up, and whether the banks are
byte-identical.
Target (issue 17): pooled build >= 80 % of the ceiling. Exit status 1 if missed.

Usage: python bench/bench_bank_build.py [--presets mean-paper,mean-small] [--tiles 32] [--batch 16] [--rounds 3] [--distributed]
"""

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import load_average, machine_description, random_onnx

from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank import FileTileSource, OrthophotoTileSource, build_bank
from meanloc.runtime.bank.build import TileLoader, default_workers
from meanloc.runtime.bank.sharding import Ranks
from meanloc.runtime.geo.orthophoto import Orthophoto

TARGET = 0.80
GSD, TILE_M = 0.5, 200.0  # a 200 m tile is a 400 px crop of 0.5 m imagery, resampled to the model's size
ORIGIN_EN = (500000.0, 5150000.0)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image.astype(np.int16) + rng.integers(-25, 25, image.shape), 0, 255).astype(np.uint8)


def make_orthophoto(folder: Path, tiles: int) -> Path:
    """A GeoTIFF holding a square grid of at least `tiles` 200 m tiles at 50 % overlap."""
    side = int(np.ceil(np.sqrt(tiles)))
    extent_px = int((TILE_M + (side - 1) * TILE_M / 2) / GSD) + 2
    transform = np.array([[GSD, 0.0, ORIGIN_EN[0]], [0.0, -GSD, ORIGIN_EN[1]], [0.0, 0.0, 1.0]])
    path = folder / "area.tif"
    Orthophoto(_texture(np.random.default_rng(0), extent_px, extent_px), transform, "EPSG:32632").save_geotiff(path)
    return path


def make_tile_files(folder: Path, tiles: int) -> tuple[Path, Path]:
    """`tiles` 512 px JPEG tiles and their CSV list (200 m tiles on a 100 m grid near Zurich)."""
    rng = np.random.default_rng(1)
    tiles_dir = folder / "tiles"
    tiles_dir.mkdir()
    rows = []
    for index in range(tiles):
        name = f"t{index:04d}.jpg"
        cv2.imwrite(str(tiles_dir / name), _texture(rng, 512, 512), [cv2.IMWRITE_JPEG_QUALITY, 90])
        lat, lon = 47.37 + 0.0009 * (index // 16), 8.54 + 0.0013 * (index % 16)
        half_lat, half_lon = 0.0009, 0.0013
        rows.append({
            "id": f"t{index}", "path": name, "center_lat": lat, "center_lon": lon,
            "tl_lat": lat + half_lat, "tl_lon": lon - half_lon, "tr_lat": lat + half_lat, "tr_lon": lon + half_lon,
            "br_lat": lat - half_lat, "br_lon": lon + half_lon, "bl_lat": lat - half_lat, "bl_lon": lon - half_lon,
        })
    listing = folder / "tiles.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tiles_dir, listing


def ceiling(backend, batches: list[np.ndarray]) -> tuple[float, float]:
    """(tiles per second, CPU seconds per tile) of the model alone on preprocessed batches."""
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        backend.embed(batch)
    tiles = sum(len(b) for b in batches)
    return tiles / (time.perf_counter() - started), (time.process_time() - cpu) / tiles


def build_rate(make_source, backend, work: Path, batch: int, workers: int) -> tuple[float, float]:
    """(tiles per second, CPU seconds per tile) of a whole `build_bank`."""
    source = make_source(backend)
    out = work / "bank"
    started, cpu = time.perf_counter(), time.process_time()
    build_bank(source, backend, out, batch=batch, shard_size=4096, progress=False, workers=workers, ranks=Ranks())
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    shutil.rmtree(out)
    return len(source) / elapsed, cpu / len(source)


def tiles_for(backend, args: argparse.Namespace) -> int:
    """Enough tiles for a build to last ~args.seconds at the model's rate (fixed costs such as
    writing and verifying the bank then weigh little), at least args.tiles, at most 2048."""
    size = backend.identity.preprocess.size
    batch = np.zeros((args.batch, 3, size, size), dtype=np.float32)
    backend.embed(batch)
    started = time.perf_counter()
    backend.embed(batch)
    rate = args.batch / (time.perf_counter() - started)
    return int(min(2048, max(args.tiles, rate * args.seconds)))


def bench_preset(preset: str, args: argparse.Namespace, work: Path) -> list[tuple]:
    print(f"{preset}: exporting ...", file=sys.stderr, flush=True)
    onnx = random_onnx(work / f"{preset}.onnx", preset)[0].path
    backends = {
        binding: open_backend(str(onnx), max_batch=args.batch, io_binding=binding) for binding in (True, False)
    }
    count = tiles_for(backends[True], args)
    geotiff = make_orthophoto(work, count)
    tiles_dir, listing = make_tile_files(work, count)
    ortho = Orthophoto.from_geotiff(geotiff)

    def orthophoto_source(backend):
        source = OrthophotoTileSource(ortho, TILE_M, 0.5, (1.0,), backend.identity.preprocess.size, 0.5)
        source._candidates = source._candidates[:count]  # exactly `count` candidates
        return source

    sources = {"orthophoto": orthophoto_source, "tile files": lambda backend: FileTileSource(tiles_dir, listing)}
    spec = backends[True].identity.preprocess
    loader = TileLoader(orthophoto_source(backends[True]), spec, 0, 1)
    tiles = [t[0] for t in loader.iterate(range(count)) if t is not None]
    batches = [np.stack(tiles[i : i + args.batch]) for i in range(0, len(tiles), args.batch)]
    configs = [("model alone (ceiling)", None, True, None)]
    for name in sources:
        configs += [(f"build, {name}, loader pool ({default_workers()} threads)", name, True, default_workers()),
                    (f"build, {name}, no pool", name, True, 0)]
    configs += [("model alone (ceiling), I/O binding off", None, False, None),
                ("build, orthophoto, loader pool, I/O binding off", "orthophoto", False, default_workers())]
    rates = {c[0]: [] for c in configs}
    cpu_costs = {c[0]: [] for c in configs}
    for round_index in range(args.rounds + 1):  # round 0 warms up every session and cache
        for label, source, binding, workers in configs:
            print(f"{preset} round {round_index}: {label}", file=sys.stderr, flush=True)
            if source is None:
                rate, cpu = ceiling(backends[binding], batches)
            else:
                rate, cpu = build_rate(sources[source], backends[binding], work, args.batch, workers)
            if round_index:
                rates[label].append(rate)
                cpu_costs[label].append(cpu)
    for backend in backends.values():
        backend.close()
    medians = {label: statistics.median(values) for label, values in rates.items()}
    cpu = {label: statistics.median(values) for label, values in cpu_costs.items()}
    rows = []
    for label, _, binding, _ in configs:
        reference = "model alone (ceiling)" + ("" if binding else ", I/O binding off")
        rows.append((preset, spec.size, f"{label} ({count} tiles)", medians[label], medians[label] / medians[reference],
                     1e3 * cpu[label], cpu[reference] / cpu[label]))
    if args.distributed:
        rows += distributed(onnx, geotiff, work, args, preset, spec.size)
    return rows


def bank_files(folder: Path) -> dict:
    """Every file of a bank (its feature layer's folder included), by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def distributed(onnx: Path, geotiff: Path, work: Path, args, preset: str, size: int) -> list[tuple]:
    """`meanloc bank build` as 1 process vs torchrun with 2; wall time with start-up, same bytes?"""
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600")
    times, folders = {}, {}
    for label, prefix in (("1 process", []), ("torchrun, 2 processes", ["-m", "torch.distributed.run", "--standalone",
                                                                       "--nproc-per-node", "2"])):
        folders[label] = work / ("dist-" + str(len(folders)))
        argv = [sys.executable, *prefix, "-m", "meanloc", "bank", "build", "--model", str(onnx), "--orthophoto",
                str(geotiff), "--out", str(folders[label]), "--tile-m", str(TILE_M), "--batch-size", str(args.batch),
                "--shard-size", str(args.batch), "--no-progress"]
        print(f"{preset}: bank build, {label}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run(argv, check=True, env=env, capture_output=True)
        times[label] = time.perf_counter() - started
    identical = bank_files(folders["1 process"]) == bank_files(folders["torchrun, 2 processes"])
    count = len(np.load(str(folders["1 process"] / "embeddings.npy"), mmap_mode="r"))
    return [(preset, size, f"`meanloc bank build`, {label} ({count} tiles, shards of {args.batch}"
             + (f"; bank byte-identical: {'yes' if identical else 'NO'})" if "torchrun" in label else ")"),
             count / times[label], times["1 process"] / times[label], None, None) for label in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="mean-paper,mean-small", help="model presets, comma-separated")
    parser.add_argument("--tiles", type=int, default=32, help="fewest tiles per build")
    parser.add_argument("--seconds", type=float, default=5.0, help="more tiles for fast models: a build of ~this long")
    parser.add_argument(
        "--gate", default="mean-paper",
        help="presets held to the target (default: the deployed network; on a CPU-only machine a model faster "
        "than tiling cannot reach it, since tiling and inference share the cores)",
    )
    parser.add_argument("--batch", type=int, default=16, help="inference batch size (ceiling and builds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds after one warm-up round")
    parser.add_argument("--distributed", action="store_true", help="also time 1 process vs torchrun with 2")
    args = parser.parse_args()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="meanloc-bench-build-") as tmp:
        for preset in args.presets.split(","):
            work = Path(tmp) / preset
            work.mkdir()
            rows += bench_preset(preset, args, work)
    print(
        f"Bank-build throughput, ONNX Runtime CPU, batch {args.batch}, {TILE_M:g} m tiles, >= {args.tiles} tiles "
        f"(and ~{args.seconds:g} s of the model's work) per build, "
        f"{args.rounds} interleaved rounds after a warm-up; {machine_description()}; load average {load_before} "
        f"before, {load_average()} after\n"
    )
    print("| model | input px | configuration | tiles/s | vs ceiling (torchrun rows: speed-up) | CPU ms per tile "
          "| CPU cost of the model / of this row |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for preset, size, label, rate, ratio, cpu_ms, cpu_ratio in rows:
        cpu_cells = f"{cpu_ms:.1f} | {cpu_ratio:.2f}" if cpu_ms is not None else "- | -"
        print(f"| {preset} | {size} | {label} | {rate:.2f} | {ratio:.2f} | {cpu_cells} |")
    print("\nCPU ms per tile: this process's CPU time (all threads) per tile; its ratio does not depend on what "
          "else the machine runs, and on a CPU-only machine bounds the throughput ratio.")
    gate = set(args.gate.split(","))
    pooled = [(p, label, ratio) for p, _, label, _, ratio, _, _ in rows if "loader pool" in label and "off" not in label]
    met = all(ratio >= TARGET for p, _, ratio in pooled if p in gate)
    print("\nBuild with the loader pool vs the model alone: "
          + ", ".join(f"{p} {label.split(',')[1].strip()} {ratio:.2f}" for p, label, ratio in pooled)
          + f"; target >= {TARGET:.2f} for {', '.join(sorted(gate))}: " + ("PASS" if met else "FAIL"))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
