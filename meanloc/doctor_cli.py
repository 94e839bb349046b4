"""`meanloc doctor`: what this machine has (runtime/doctor_cli.py), and with `--selftest`, whether
TensorRT works here in every precision meanloc builds (meanloc/selftest.py).

The selftest builds engines (export/) from a model it writes itself, so it sits at the top of the
package, above runtime/, which never imports export/ or calibration/. Python 3.8; no torch.
"""

import argparse
import sys

from meanloc.cli_args import add_out, add_overwrite
from meanloc.runtime import doctor_cli as environment_report

DEFAULT_SELFTEST_REPORT = "meanloc-selftest.json"


def configure(parser: argparse.ArgumentParser) -> None:
    environment_report.add_arguments(parser)
    group = parser.add_argument_group("selftest (TensorRT in every precision, on a built-in model; no data needed)")
    group.add_argument("--selftest", action="store_true",
                       help="build FP32/FP16/INT8-explicit/INT8-implicit engines, run each through TensorRT and "
                       "ONNX Runtime, and report cosine to FP32, latency, sizes, versions and failures")
    add_out(group, default=DEFAULT_SELFTEST_REPORT,
            help="selftest report to write (JSON; default {})".format(DEFAULT_SELFTEST_REPORT))
    add_overwrite(group, help="replace the report already in --out (once the new one is complete)")
    group.add_argument("--onnx", default=None, help="test this FP32 meanloc ONNX instead of the built-in model")
    group.add_argument("--qdq-onnx", default=None, help="with --onnx: its Q/DQ ONNX (for int8-explicit)")
    group.add_argument("--calib-cache", default=None, help="with --onnx: its calibration cache (for int8-implicit)")
    group.add_argument("--iterations", type=int, default=50, help="timed batch-1 runs per model (default 50)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from meanloc.errors import MeanlocError

    if not args.selftest:
        return environment_report.run(args)
    if (args.qdq_onnx or args.calib_cache) and not args.onnx:
        raise MeanlocError("--qdq-onnx and --calib-cache go with --onnx (the built-in model brings its own)")
    if args.iterations < 1:
        raise MeanlocError("--iterations must be >= 1, got {}".format(args.iterations))
    from meanloc.runtime.artifacts import claim_output
    from meanloc.selftest import passed, run_selftest

    claim_output(args.out, args.overwrite)  # before minutes of engine builds, not after
    report = run_selftest(out=args.out, onnx=args.onnx, qdq_onnx=args.qdq_onnx, calib_cache=args.calib_cache,
                          iterations=args.iterations, echo=lambda line: print(line, flush=True))
    if not passed(report):
        print("meanloc: selftest failed: send {} with your question".format(args.out), file=sys.stderr)
        return 1
    return 0
