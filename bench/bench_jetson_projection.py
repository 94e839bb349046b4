"""Jetson Orin projection ON PAPER (nothing runs on a Jetson): mean-paper per-frame time for TF32, FP16 and INT8.

Per stage of the mean-paper embedder (384 px, batch 1) this counts, with forward hooks on the real
network (the MAC definition of `meanloc model summary`, 13.09 GMACs in total):
  - MACs on tensor cores (dense convolutions and Linear layers) and on CUDA cores (depthwise 7x7
    convolutions: TensorRT does not run them as tensor-core GEMMs);
  - bytes moved: the weights once, plus every convolution/Linear layer's input and output
    activation (LayerNorm, GELU, layer scale and residual adds assumed fused into them, as
    TensorRT's pointwise fusion does); a stage that fits in L2 moves less, so this is an upper bound.
Each stage takes max(compute time, memory time) at NVIDIA's published peaks (a roofline bound),
and a derated estimate divides compute by TENSOR_EFFICIENCY and bandwidth by DRAM_EFFICIENCY,
which are ASSUMPTIONS stated in the table, not measurements: replace them with `meanloc profile`
on the device.

Peaks (NVIDIA):
  [1] Jetson AGX Orin Series Technical Brief v1.2 (2022): 16 SMs x 128 CUDA cores at 1.3 GHz =
      5.3 FP32 TFLOPS; 64 third-generation Tensor Cores = 170 sparse INT8 TOPS (GPU); 204.8 GB/s.
  [2] Jetson Orin NX Series data sheet (DS-10712-001): Orin NX 16GB, 1024-core GPU (8 SMs) with
      32 Tensor Cores at 918 MHz, 102.4 GB/s.
  [3] Jetson Orin Nano Series data sheet (DS-11105-001): Orin Nano 8GB, 1024-core GPU (8 SMs)
      with 32 Tensor Cores at 625 MHz, 68 GB/s.
  [4] NVIDIA Technical Blog, "NVIDIA Jetson Orin Nano Developer Kit Gets a Super Boost" (Dec 2024)
      and JetPack 6.2 super modes: Orin Nano 8GB at 1020 MHz and 102 GB/s; Orin NX 16GB at 1173 MHz.
Per-SM rates come from [1]: dense INT8 = 170/2 TOPS / (16 SMs x 1.3 GHz); Ampere tensor cores run
FP16 at half the INT8 rate and TF32 at half the FP16 rate (NVIDIA Ampere architecture whitepaper);
CUDA cores do 2 FP32 FLOP per clock (FP16 on CUDA cores counted at the same rate: conservative).
These reproduce NVIDIA's module totals: Orin Nano 8GB 8 x 0.625 x 2 x 4.09 = 41 sparse TOPS (40
published); Orin NX 16GB GPU 60 sparse TOPS + DLAs = 100 published.

Usage: python bench/bench_jetson_projection.py
"""

from dataclasses import dataclass

import torch
from common import machine_description
from torch import nn

from meanloc.training.model import build_model, resolve_config
from meanloc.training.model.summary import _layer_macs

DENSE_INT8_OPS_PER_SM_CLOCK = 170e12 / 2 / (16 * 1.3e9)  # [1]
CUDA_FLOP_PER_SM_CLOCK = 2 * 128  # [1]: 128 CUDA cores per SM, one FMA each
PRECISIONS = {  # bytes per weight/activation element, tensor-core rate relative to dense INT8
    "TF32 (TensorRT FP32 default)": (4, 0.25),
    "FP16": (2, 0.5),
    "INT8": (1, 1.0),
}
TENSOR_EFFICIENCY = 0.25  # ASSUMED share of tensor-core peak reached by batch-1 1x1 GEMMs
DRAM_EFFICIENCY = 0.50  # ASSUMED share of the published DRAM bandwidth reached by streaming kernels


@dataclass(frozen=True)
class Module:
    name: str
    sms: int
    clock_ghz: float
    dram_gbps: float
    source: str


MODULES = [
    Module("Orin Nano 8GB", 8, 0.625, 68.0, "[3]"),
    Module("Orin Nano 8GB super", 8, 1.020, 102.0, "[4]"),
    Module("Orin NX 16GB", 8, 0.918, 102.4, "[2]"),
    Module("Orin NX 16GB super", 8, 1.173, 102.4, "[2][4]"),
    Module("AGX Orin 64GB", 16, 1.300, 204.8, "[1]"),
]


@dataclass
class Stage:
    name: str
    tensor_macs: int = 0
    cuda_macs: int = 0
    params: int = 0
    activations: int = 0  # elements read and written by the stage's conv/Linear layers


def _stage_name(layer_name: str) -> str:
    parts = layer_name.split(".")
    if parts[0] == "downsample_layers":
        return "stem (4x4 conv)" if parts[1] == "0" else f"stage {int(parts[1]) + 1}"
    if parts[0] == "stages":
        return f"stage {int(parts[1]) + 1}"
    return "head"


def measure_stages(preset: str = "mean-paper") -> tuple[list[Stage], int]:
    config = resolve_config(preset)
    embedder = build_model(config).embedder().eval()
    stages: dict[str, Stage] = {}
    handles = []
    for name, layer in embedder.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            stage = stages.setdefault(_stage_name(name), Stage(_stage_name(name)))

            def hook(layer, inputs, output, stage=stage):
                macs = _layer_macs(layer, output)
                depthwise = isinstance(layer, nn.Conv2d) and layer.groups > 1
                if depthwise:
                    stage.cuda_macs += macs
                else:
                    stage.tensor_macs += macs
                stage.params += sum(p.numel() for p in layer.parameters())
                stage.activations += inputs[0].numel() + output.numel()

            handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        embedder(torch.zeros(1, 3, config.img_size, config.img_size))
    for handle in handles:
        handle.remove()
    # LayerNorm weights and the like are not conv/Linear parameters, but they are read too.
    counted = sum(s.params for s in stages.values())
    stages["head"] = stages.get("head", Stage("head"))
    stages["head"].params += sum(p.numel() for p in embedder.parameters()) - counted
    order = ["stem (4x4 conv)", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    return [stages[n] for n in order if n in stages], config.img_size


def stage_seconds(stage: Stage, module: Module, precision: str, derated: bool) -> tuple[float, bool]:
    """(seconds, memory-bound?) for one stage: max of compute and memory time."""
    element_bytes, tensor_share = PRECISIONS[precision]
    tensor_rate = DENSE_INT8_OPS_PER_SM_CLOCK * tensor_share * module.sms * module.clock_ghz * 1e9
    cuda_rate = CUDA_FLOP_PER_SM_CLOCK * module.sms * module.clock_ghz * 1e9
    compute = 2 * stage.tensor_macs / tensor_rate + 2 * stage.cuda_macs / cuda_rate
    memory = (stage.params + stage.activations) * element_bytes / (module.dram_gbps * 1e9)
    if derated:
        compute, memory = compute / TENSOR_EFFICIENCY, memory / DRAM_EFFICIENCY
    return max(compute, memory), memory > compute


def main() -> None:
    stages, size = measure_stages()
    total_macs = sum(s.tensor_macs + s.cuda_macs for s in stages)
    print(f"PROJECTION, not a measurement: mean-paper {size} px, batch 1, GPU only (no DLA), from "
          f"{total_macs / 1e9:.2f} GMACs counted on the network and NVIDIA's published peaks "
          f"(sources in bench/bench_jetson_projection.py); computed on {machine_description()}\n")
    print("| stage | tensor-core GMACs | CUDA-core GMACs (depthwise) | weights M | activations moved M elements |")
    print("|---|---:|---:|---:|---:|")
    for s in stages:
        print(f"| {s.name} | {s.tensor_macs / 1e9:.2f} | {s.cuda_macs / 1e9:.3f} | {s.params / 1e6:.2f} "
              f"| {s.activations / 1e6:.1f} |")
    print()
    header = " | ".join(f"{p} bound / derated ms" for p in PRECISIONS)
    print(f"| module (peaks) | {header} | memory-bound stages (FP16) |")
    print("|---|" + "---:|" * len(PRECISIONS) + "---:|")
    for module in MODULES:
        cells = []
        for precision in PRECISIONS:
            bound = sum(stage_seconds(s, module, precision, False)[0] for s in stages)
            derated = sum(stage_seconds(s, module, precision, True)[0] for s in stages)
            cells.append(f"{bound * 1e3:.1f} / {derated * 1e3:.1f}")
        memory_bound = sum(stage_seconds(s, module, "FP16", False)[1] for s in stages)
        print(f"| {module.name} ({module.sms} SMs, {module.clock_ghz * 1e3:.0f} MHz, {module.dram_gbps:g} GB/s {module.source}) "
              f"| {' | '.join(cells)} | {memory_bound} of {len(stages)} |")
    print(f"\nbound = every stage at max(compute, memory) at the published peaks (a floor, not reachable); derated "
          f"= the same with compute at {TENSOR_EFFICIENCY:.0%} of tensor-core peak and memory at {DRAM_EFFICIENCY:.0%} "
          "of DRAM bandwidth (assumed, not measured). Network only: preprocessing, copies, search and the "
          "filter come on top (CPU share on this machine: bench_loop_overhead.py).")


if __name__ == "__main__":
    main()
