"""The profiler's own overhead as a share of inference time at the paper preset (issue 6: <= 1 %).

Runs `meanloc profile`'s procedure on a random-weight mean-paper ONNX (384 px, batch 1, ONNX
Runtime CPU) and reports the cost of the profiler's clock reads per iteration against the
measured inference time, both from the same run.

    python bench/bench_profiler_overhead.py [--iterations 50] [--threads 2]
"""

import argparse
import tempfile
from pathlib import Path

from common import machine_description, random_onnx

from meanloc.runtime.backends import open_backend
from meanloc.runtime.profiling.profiler import ProfileTarget, profile

TARGET_PCT = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meanloc-profiler-") as tmp:
        exported, _ = random_onnx(Path(tmp) / "paper.onnx", "mean-paper")
        with open_backend(str(exported.path), backend="onnxruntime", providers=["cpu"], threads=args.threads) as backend:
            report = profile([ProfileTarget("mean-paper fp32", backend)], warmup=3, iterations=args.iterations,
                             min_iterations=args.iterations)
    result = report["results"][0]
    share = result["profiler_overhead_pct_of_inference"]
    print(f"Profiler overhead, mean-paper 384 px, ONNX Runtime CPU, {args.iterations} iterations; {machine_description()}")
    print()
    print("| inference median ms | profiler overhead per iteration (µs) | share of inference | target |")
    print("|---|---|---|---|")
    print(f"| {result['stages']['inference']['median_ms']:.1f} | {result['profiler_overhead_ms'] * 1e3:.1f} | "
          f"{share:.4f} % | <= {TARGET_PCT} % ({'met' if share <= TARGET_PCT else 'NOT met'}) |")


if __name__ == "__main__":
    main()
