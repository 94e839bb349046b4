"""Efficiency against this machine's measured roofline (issue 6).

Measures, with the same runtime the models use (ONNX Runtime, CPU EP, N threads):
  - the FP32 GEMM peak: a large square MatMul;
  - the INT8 GEMM peak: the same MatMul through ONNX Runtime's dynamic quantization (the same
    U8S8 GEMM kernels the INT8 CPU model's MatMulIntegerToFloat and QLinearConv use);
then runs the mean-paper embedder (random weights, 384 px, batch 1) in FP32 and as the INT8 CPU
flavour, and reports achieved GFLOP/s (2 x 13.09 GMACs per image) divided by the matching peak.
Everything is interleaved in one run, so the ratios hold even when absolute speed drifts.

    python bench/bench_roofline.py [--threads 2] [--rounds 10]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import machine_description, random_onnx, synthetic_calibration_set
from onnx import TensorProto, helper, numpy_helper

GEMM_SIZE = 1024


def gemm_onnx(path: Path, size: int) -> Path:
    """Y = X @ W with a constant W: the shape ORT's MatMul kernels are tuned for."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((size, size)).astype(np.float32) * 0.02, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds (default 10)")
    parser.add_argument("--preset", default="mean-paper", help="model preset (default mean-paper)")
    args = parser.parse_args()

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from meanloc.calibration.qdq import quantize_for_cpu
    from meanloc.calibration.ranges import collect_ranges
    from meanloc.runtime.onnx_contract import INPUT_NAME
    from meanloc.training.model.summary import count_macs

    with tempfile.TemporaryDirectory(prefix="meanloc-roofline-") as tmp:
        work = Path(tmp)
        gemm32 = gemm_onnx(work / "gemm.onnx", GEMM_SIZE)
        gemm8 = work / "gemm.int8.onnx"
        quantize_dynamic(str(gemm32), str(gemm8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        exported, model = random_onnx(work / "model.onnx", args.preset)
        calib_set = synthetic_calibration_set(work / "images", exported.identity.preprocess)
        ranges = collect_ranges(exported.path, calib_set, "minmax", progress=False)
        int8_model = quantize_for_cpu(exported.path, work / "model.int8.onnx", exported.identity, ranges)
        size = model.config.img_size
        macs, _ = count_macs(model.embedder().eval(), torch.zeros(1, 3, size, size))

        gemm_input = {"X": np.random.default_rng(1).standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(np.float32)}
        image = {INPUT_NAME: np.random.default_rng(2).standard_normal((1, 3, size, size)).astype(np.float32)}
        cases = {
            "GEMM FP32": (session(gemm32, args.threads), gemm_input, 2.0 * GEMM_SIZE**3),
            "GEMM INT8 (dynamic)": (session(gemm8, args.threads), gemm_input, 2.0 * GEMM_SIZE**3),
            "model FP32": (session(exported.path, args.threads), image, 2.0 * macs),
            "model INT8 CPU flavour": (session(int8_model, args.threads), image, 2.0 * macs),
        }
        times = {name: [] for name in cases}
        for sess, feed, _ in cases.values():
            sess.run(None, feed)  # warm-up
        for _ in range(args.rounds):
            for name, (sess, feed, _) in cases.items():
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append(time.perf_counter() - start)

    rate = {name: cases[name][2] / statistics.median(times[name]) / 1e9 for name in cases}
    print(f"Roofline efficiency, ONNX Runtime CPU, {args.threads} threads, {args.rounds} interleaved rounds; "
          f"{machine_description()}")
    print()
    print("| what | median ms | GFLOP/s (GOP/s for int8) | share of its peak |")
    print("|---|---|---|---|")
    peaks = {"FP32": rate["GEMM FP32"], "INT8": rate["GEMM INT8 (dynamic)"]}
    for name in cases:
        peak = peaks["INT8" if "INT8" in name else "FP32"]
        print(f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {rate[name]:.1f} | {rate[name] / peak:.0%} |")
    print()
    print(f"{args.preset}: {macs / 1e9:.2f} GMACs per image (2 FLOP per MAC). INT8 GEMM peak / FP32 GEMM peak = "
          f"{peaks['INT8'] / peaks['FP32']:.2f}.")


if __name__ == "__main__":
    main()
