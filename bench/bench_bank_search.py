"""Bank search time and memory at 10k, 100k and 1M tiles x 768-d (float16, memory-mapped).

For each bank size a file of random unit vectors is generated in chunks (never all in RAM) and
memory-mapped, as `SatelliteBank` does; queries lie near bank rows (`near_row_queries`, the noise
model bench_bank_index.py shares). Measured in one run on this machine, all exact searches:
- single-query and batched (default 64) global search with the blocked float32 search (bank stays
  float16 on disk, one block converted at a time), and with a resident float32 copy;
- a naive float16 matmul (`q16 @ E16.T`, what numpy does without the conversion) on a subset,
  scaled to the bank size, and the ratio naive / blocked (how much faster blocking is);
- opening the tile table (memory-mapped records + centre x/y in the local frame) and a windowed
  search (mask over every tile centre + exact search of the ~300 tiles inside);
- memory: the bank file size, RSS split into anonymous (working memory) and file-backed (mapped
  bank pages), and the peak RSS.
Prints a Markdown table with the CPU model, core count, numpy version and date.

Usage: python bench/bench_bank_search.py [--sizes 10000,100000,1000000] [--dim 768] [--batch 64]
"""

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_description

from meanloc.runtime.artifacts import new_manifest
from meanloc.runtime.bank import LocalFrame, SatelliteBank, SearchWindow
from meanloc.runtime.bank.search import ExactSearcher
from meanloc.runtime.bank.tiles import TileTable, tile_dtype
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec


def _memory_mb() -> dict[str, float]:
    """RssAnon / RssFile / VmHWM from /proc (Linux), in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values


def _unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


# Queries near bank rows: a drone frame resembles its true tile without equalling it. Each query is
# cos(theta) * row + sin(theta) * (unit noise orthogonal to the row), so its cosine to the source row
# is exactly QUERY_COSINE, while unrelated random rows of 768-d sit at 0 +- 0.036.
QUERY_COSINE = 0.5


def near_row_queries(bank: np.ndarray, count: int, rng: np.random.Generator, cosine: float = QUERY_COSINE):
    """(queries (count, dim) float32 unit rows, their source rows): the benches' noise model."""
    rows = np.sort(rng.choice(len(bank), size=count, replace=False))
    base = np.asarray(bank[rows], dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = cosine * base + np.sqrt(1.0 - cosine * cosine) * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), rows


def make_bank_file(path: Path, count: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """(count, dim) float16 random unit rows, written in chunks, returned memory-mapped read-only."""
    rng = np.random.default_rng(seed)
    array = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float16, shape=(count, dim))
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        array[start:stop] = _unit_rows(rng, stop - start, dim)
    array.flush()
    del array
    return np.load(str(path), mmap_mode="r", allow_pickle=False)


def grid_records(count: int) -> np.ndarray:
    """`count` tile records on a square 100 m grid (200 m tiles) near Bern."""
    side = int(np.ceil(np.sqrt(count)))
    frame = LocalFrame(46.5, 7.5)
    grid_x = (np.arange(count) % side - side / 2) * 100.0
    grid_y = (np.arange(count) // side - side / 2) * 100.0
    records = np.zeros(count, dtype=tile_dtype({"name": 16, "crs": 10, "path": 1}))
    records["center_lat"], records["center_lon"] = frame.to_latlon(grid_x, grid_y)
    records["side_m"] = 200.0
    return records


def _timed_tile_table(folder: Path, count: int) -> tuple[float, TileTable]:
    """Write `count` tile records on a 100 m grid; time np.load(mmap) + TileTable (x/y frame)."""
    frame = LocalFrame(46.5, 7.5)
    records = grid_records(count)
    path = folder / f"tiles_{count}.npy"
    np.save(str(path), records, allow_pickle=False)
    del records
    start = time.perf_counter()
    tiles = TileTable(
        np.load(str(path), mmap_mode="r", allow_pickle=False), [{"id": "x", "sha256": "0"}], frame
    )
    return time.perf_counter() - start, tiles


def _manifest(dim: int) -> dict:
    identity = ModelIdentity("0" * 64, "mean-paper", dim, PreprocessSpec(size=384))
    return new_manifest("bank", identity=identity.to_dict(), dim=dim)


def _timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_size(folder: Path, count: int, args: argparse.Namespace) -> dict[str, float]:
    bank = make_bank_file(folder / f"bank_{count}.npy", count, args.dim, seed=count)
    rng = np.random.default_rng(1)
    one = near_row_queries(bank, 1, rng)[0]
    batch = near_row_queries(bank, args.batch, rng)[0]
    repeats = args.repeats if count <= 100_000 else max(1, args.repeats // 2)
    result = {"count": count, "file_mb": os.path.getsize(folder / f"bank_{count}.npy") / 1e6}

    blocked = ExactSearcher(bank, device="cpu", block_rows=args.block_rows)
    before = _memory_mb()
    result["single_s"] = _timed(lambda: blocked.search(one, args.k), repeats)
    result["batch_s"] = _timed(lambda: blocked.search(batch, args.k), repeats)
    after = _memory_mb()
    result["anon_mb"] = after["RssAnon"] - before["RssAnon"]
    result["file_rss_mb"] = after["RssFile"]

    # Tile table: a square grid at 100 m stride, saved and re-opened memory-mapped as a bank does.
    open_s, tiles = _timed_tile_table(folder, count)
    result["open_tiles_s"] = open_s
    bank_view = SatelliteBank(folder, _manifest(args.dim), bank, tiles, blocked)
    centre = int(np.argmin(tiles.x**2 + tiles.y**2))
    window = SearchWindow(100.0 * np.sqrt(300 / np.pi), x=tiles.x[centre], y=tiles.y[centre])  # ~300 tiles
    result["window_s"] = _timed(lambda: bank_view.search(one, args.k, window=window), repeats)
    result["window_tiles"] = len(bank_view.window_rows(window))

    # Naive float16 matmul on a subset (it is far too slow for the whole of a large bank).
    subset = min(count, args.naive_rows)
    sub = bank[:subset]
    one16, batch16 = one.astype(np.float16), batch.astype(np.float16)
    naive_single = _timed(lambda: one16 @ sub.T, 1) * count / subset
    naive_batch = _timed(lambda: batch16 @ sub.T, 1) * count / subset
    result["naive_single_s"], result["naive_batch_s"] = naive_single, naive_batch
    result["naive_extrapolated"] = subset < count

    if count * args.dim * 4 <= args.float32_limit_mb * 1e6:
        result.update(_bench_resident(bank, one, batch, repeats, args))
    result["peak_mb"] = _memory_mb()["VmHWM"]
    return result


def _bench_resident(
    bank: np.ndarray, one: np.ndarray, batch: np.ndarray, repeats: int, args
) -> dict[str, float]:
    """The same searches with the bank held in RAM as float32 (freed on return)."""
    resident = ExactSearcher(bank, device="cpu", block_rows=args.block_rows, float32_in_memory=True)
    return {
        "f32_single_s": _timed(lambda: resident.search(one, args.k), repeats),
        "f32_batch_s": _timed(lambda: resident.search(batch, args.k), repeats),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def markdown(results: list[dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"Bank search, {args.dim}-d float16 memory-mapped, k={args.k}, batch={args.batch} queries, block {args.block_rows} rows",
        "Machine: {} ({} logical cores visible), numpy {}, Python {}; {}".format(
            machine_description(),
            os.cpu_count(),
            np.__version__,
            platform.python_version(),
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        ),
        "",
        "| tiles | bank file MB | open tile table ms | single query ms | batch ms/query | window ms (tiles in it) "
        "| naive fp16 single ms | naive fp16 batch ms/query | blocked speed-up single / batch "
        "| fp32-in-RAM single ms | fp32-in-RAM batch ms/query | search RSS anon MB | RSS mapped MB | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        star = "*" if r["naive_extrapolated"] else ""
        lines.append(
            "| {:,} | {:.0f} | {} | {} | {} | {} ({}) | {}{} | {}{} | {:.1f}x / {:.1f}x | {} | {} | {:.0f} | {:.0f} | {:.0f} |".format(
                r["count"],
                r["file_mb"],
                _ms(r["open_tiles_s"]),
                _ms(r["single_s"]),
                _ms(r["batch_s"] / args.batch),
                _ms(r["window_s"]),
                r["window_tiles"],
                _ms(r["naive_single_s"]),
                star,
                _ms(r["naive_batch_s"] / args.batch),
                star,
                r["naive_single_s"] / r["single_s"],
                r["naive_batch_s"] / r["batch_s"],
                _ms(r["f32_single_s"]) if "f32_single_s" in r else "-",
                _ms(r["f32_batch_s"] / args.batch) if "f32_batch_s" in r else "-",
                r["anon_mb"],
                r["file_rss_mb"],
                r["peak_mb"],
            )
        )
    lines.append("")
    lines.append(
        f"\\* naive float16 timed on the first {args.naive_rows:,} tiles and scaled linearly. Speed-up = naive time / blocked "
        "time. RSS anon = private memory added by searching (conversion buffer, scores); RSS mapped = bank pages "
        "the kernel holds mapped (page cache, reclaimable)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="bank sizes (tiles), comma-separated")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (768 = mean-paper)")
    parser.add_argument("--batch", type=int, default=64, help="queries in the batched search")
    parser.add_argument("--k", type=int, default=10, help="top-k")
    parser.add_argument("--block-rows", type=int, default=16384, help="bank rows per float32 block")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument(
        "--naive-rows", type=int, default=20000, help="rows timed for the naive float16 matmul"
    )
    parser.add_argument(
        "--float32-limit-mb", type=float, default=4000, help="largest resident float32 copy tried"
    )
    parser.add_argument(
        "--tmp", default=None, help="folder for the temporary bank files (needs ~1.6 GB for 1M)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_bank_") as folder:
        results = []
        for count in sizes:
            print(f"benchmarking {count:,} tiles...", flush=True)
            results.append(bench_size(Path(folder), count, args))
            os.remove(Path(folder) / f"bank_{count}.npy")
    print()
    print(markdown(results, args))


if __name__ == "__main__":
    main()
