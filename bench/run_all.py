"""Run every benchmark and write their Markdown tables into one file.

    python bench/run_all.py [--out bench/RESULTS.md] [--quick]

Each script measures ratios within one run; this file only collects their tables, with the
command that produced each, so the README can quote them.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import machine_description

HERE = Path(__file__).resolve().parent

# (script, full arguments, quick arguments). Timing benches first, training-outcome ones last.
BENCHMARKS = [
    ("bench_local_features.py", [], ["--frames", "40", "--kinds", "sift,akaze"]),
    ("bench_ort_spinning.py", [], ["--frames", "10", "--rounds", "2"]),
    ("bench_int8_cpu.py", ["speed"], ["speed", "--rounds", "8"]),
    ("bench_roofline.py", [], ["--rounds", "5"]),
    ("bench_bank_search.py", [], ["--sizes", "10000,100000"]),
    ("bench_bank_index.py", [], ["--sizes", "10000,100000", "--queries", "100", "--no-alternatives"]),
    ("bench_bank_build.py", ["--distributed"], ["--presets", "mean-small", "--tiles", "16", "--rounds", "1"]),
    ("bench_jetson_projection.py", [], []),
    ("bench_loop_overhead.py", [], ["--frames", "8"]),
    ("bench_profiler_overhead.py", [], []),
    ("bench_train_throughput.py", [], []),
    ("bench_query_view.py", [], ["--minutes", "2"]),
    ("bench_photographic.py", [], ["--steps", "300", "--ssl-steps", "100"]),
    # bench_fine_localization.py needs a finished `meanloc demo` folder: run it by hand (its docstring).
    # bench_sensor_noise.py needs trained pose-aware checkpoints: run it by hand (its docstring).
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="Markdown file to write")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    args = parser.parse_args()

    from meanloc.runtime.artifacts import atomic_write_text

    sections = [f"# meanloc benchmarks\n\nMeasured on {machine_description()}.\n"]
    failures = 0
    for script, full, quick in BENCHMARKS:
        argv = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        command = "python bench/" + " ".join([script, *(quick if args.quick else full)])
        print(f"== {command}", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        # Exit 1 with a table = ran, but a target was missed (the table says which); exit 1 without
        # one is Python's exit code for an uncaught exception.
        ran = result.returncode == 0 or (result.returncode == 1 and result.stdout.strip())
        body = result.stdout.strip() if ran else f"FAILED (exit {result.returncode}):\n\n```\n{result.stderr[-2000:]}\n```"
        failures += not ran
        sections.append(f"## `{command}` ({elapsed:.0f} s)\n\n{body}\n")
    atomic_write_text(args.out, "\n".join(sections))
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
