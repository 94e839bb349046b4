"""`meanloc profile`: latency of any backend or engine, per stage, with Jetson telemetry."""

import argparse
import os
import sys
from typing import Any

from meanloc.cli_args import (
    add_hidden_alias,
    add_model,
    add_out,
    add_overwrite,
    add_threads,
    positive_int,
    positive_int_list,
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model(parser, repeatable=True, help="model to profile: .engine (TensorRT), .onnx (ONNX Runtime) or a checkpoint "
              "(PyTorch reference); repeat to compare several side by side, interleaved")
    parser.add_argument("--engine", action="append", default=[], metavar="PATH",
                        help="TensorRT engine to profile (same as --model X.engine)")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch (default auto)")
    parser.add_argument("--providers", default=None,
                        help="ONNX Runtime execution providers, comma-separated: cpu,cuda,tensorrt")
    add_threads(parser, help="CPU threads for ONNX Runtime (default: all)")
    sizes = parser.add_argument("--batch-sizes", type=positive_int_list, default=[1], metavar="N[,N...]",
                                help="comma-separated batch sizes to sweep (default 1)")
    add_hidden_alias(parser, "--batch", sizes)
    parser.add_argument("--warmup", type=int, default=20, help="warm-up iterations per target and batch (default 20)")
    parser.add_argument("--iterations", type=int, default=200, help="timed iterations (default 200)")
    parser.add_argument("--duration", type=float, default=None,
                        help="time each batch size for this many seconds instead of a fixed iteration count")
    parser.add_argument("--min-iterations", type=int, default=50,
                        help="refuse reports with fewer timed iterations (default 50)")
    parser.add_argument("--bank", default=None, help="satellite bank folder for the search stage (must belong to "
                        "every profiled model, as in `meanloc localize`)")
    parser.add_argument("--bank-check", default="auto", metavar="auto|full|fast",
                        help="integrity check when opening --bank: rows always, file hashes for banks up to 512 MiB "
                        "(auto), always (full) or never (fast)")
    parser.add_argument("--bank-size", type=int, default=10000,
                        help="without --bank: size of a random in-memory bank for the search stage (0 = skip)")
    parser.add_argument("--topk", type=positive_int, default=5, help="top-k of the search stage (default 5)")
    parser.add_argument("--refine", choices=("auto", "off"), default="auto",
                        help="auto: time the fine stage (detect, match, fit) when --bank has local features")
    parser.add_argument("--no-telemetry", action="store_true", help="do not sample tegrastats/jtop")
    add_out(parser, default="profile-report", help="output folder for JSON, Markdown and PNG plots")
    add_overwrite(parser, help="replace the report already in --out (once the new one is complete)")
    parser.set_defaults(handler=run)


def _fine_stage_timer(layer: Any) -> Any:
    """The fine stage as the loop runs it while tracking: the profiled frame (with the profiler's
    oblique attitude) against the bank features around the layer's densest cell."""
    import numpy as np

    from ..fine.stage import Candidate, FineStage, RefineConfig
    from .profiler import PROFILE_ATTITUDE

    stage = FineStage(layer, RefineConfig())
    grid = layer.meta.grid
    cell = int(np.argmax(np.diff(layer.cells)))
    centre = (grid.x0 + (cell % grid.nx + 0.5) * grid.cell_m, grid.y0 + (cell // grid.nx + 0.5) * grid.cell_m)
    candidates = [Candidate(centre[0], centre[1], 30.0, "filter")]
    return lambda image: stage.refine(image, PROFILE_ATTITUDE, PROFILE_ATTITUDE.yaw_deg, candidates).timings


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from meanloc.errors import MeanlocError

    from ..artifacts import claim_output
    from ..backends import open_backend
    from ..bank.search import ExactSearcher
    from ..localize.kalman import ConstantVelocityKalman
    from .profiler import TIMED_WINDOWS, ProfileTarget, profile
    from .report import REPORT_JSON, markdown_table, write_report
    from .tegrastats import JtopSampler, TegrastatsSampler, energy_per_inference_mj, read_power_mode

    paths = list(args.model) + list(args.engine)
    if not paths:
        raise MeanlocError("nothing to profile: pass --model PATH (or --engine X.engine)")
    claim_output(os.path.join(args.out, REPORT_JSON), args.overwrite)
    batch_sizes = list(args.batch_sizes)
    providers = args.providers.split(",") if args.providers else None

    targets = []
    for path in paths:
        backend = open_backend(path, backend=args.backend, providers=providers, threads=args.threads,
                               max_batch=max(batch_sizes))
        targets.append(ProfileTarget("{} [{}, {}]".format(path.split("/")[-1], backend.name,
                                                          backend.identity.precision), backend))
    dims = {t.backend.embed_dim for t in targets}

    search = None
    refine = None
    if args.bank:
        from ..bank import SatelliteBank

        bank = SatelliteBank.open(args.bank, check=args.bank_check)
        for path, target in zip(paths, targets):  # latency of a pair that could never fly together means nothing
            bank.identity.check_compatible(target.backend.identity, "bank {} vs model {}".format(args.bank, path))
        search = lambda q: bank.search(q, args.topk)  # noqa: E731
        if args.refine == "auto" and bank.features is not None:
            refine = _fine_stage_timer(bank.features)
    elif args.bank_size > 0 and len(dims) == 1:
        rng = np.random.default_rng(0)
        random_bank = rng.standard_normal((args.bank_size, dims.pop())).astype(np.float16)
        searcher = ExactSearcher(random_bank)
        search = lambda q: searcher.search(q, args.topk)  # noqa: E731
    kalman = ConstantVelocityKalman()
    clock = [0.0]

    def filter_step(_embeddings: np.ndarray) -> None:
        # One predict + gated update per frame, as the localization loop does.
        clock[0] += 1.0
        if kalman.initialised:
            kalman.predict(clock[0])
        else:
            kalman.reset((0.0, 0.0), clock[0], 50.0)
        kalman.update((1.0, 1.0), clock[0], 30.0)

    notes = []
    sampler = TegrastatsSampler()
    if not sampler.available:
        sampler = JtopSampler()  # type: ignore[assignment]
    if args.no_telemetry:
        notes.append("telemetry disabled (--no-telemetry)")
    elif not sampler.available:
        line = "no tegrastats or jtop on this machine: power, clocks and temperatures not recorded"
        print("meanloc profile: " + line, file=sys.stderr)
        notes.append(line)
    power_mode = read_power_mode()
    if sampler.available and not args.no_telemetry:
        sampler.start()
    try:
        report = profile(targets, batch_sizes, warmup=args.warmup,
                         iterations=None if args.duration else args.iterations, duration_s=args.duration,
                         min_iterations=args.min_iterations, search=search, filter_step=filter_step, refine=refine)
    finally:
        samples = sampler.stop() if sampler.available and not args.no_telemetry else []
        for target in targets:
            target.backend.close()
    for result in report["results"]:
        windows = result.pop(TIMED_WINDOWS)
        inferences = result["iterations"] * result["batch_size"]
        result["energy"] = energy_per_inference_mj(samples, windows, inferences) if samples else None
    report["telemetry"] = {
        "power_mode": power_mode,
        "sampler": type(sampler).__name__,
        "samples": len(samples),
        "note": "energy per result = mean module power over the samples taken during that target's timed "
        "iterations x their total time / inferences (warm-up, other targets and setup excluded; idle not "
        "subtracted)",
    }
    report["notes"] = notes + [
        "profiler overhead = cost of its own clock reads per iteration, reported per target",
        "targets were run interleaved, one iteration each per round",
    ]
    written = write_report(report, args.out)
    print(markdown_table(report))
    print("wrote " + ", ".join(written))
    return 0
