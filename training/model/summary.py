"""Parameter and MAC accounting per module, comparable with the MEAN reference figures.

MACs are counted the way `thop` counts this network (shared/docs/mean-model.md §3): one
multiply-accumulate per weight use in Conv and Linear layers (bias, normalisation, activation,
pooling and elementwise ops are not counted). For ConvNeXt-T at 384 px this gives the
reference 13.09 GMACs.
"""

from dataclasses import dataclass

import torch
from torch import nn

MAC_COUNTING_NOTE = (
    "MACs = multiply-accumulates of Conv and Linear layers only (bias, norms, activations, pooling "
    "and elementwise ops not counted), measured with forward hooks on one image; this is how thop "
    "counts this network, which the MEAN reference figures use."
)


@dataclass
class ModuleCost:
    name: str
    params: int
    macs: int


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_macs(layer: nn.Module, output: torch.Tensor) -> int:
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        kernel = int(torch.tensor(layer.kernel_size).prod())
        return output.numel() // output.shape[0] * (layer.in_channels // layer.groups) * kernel
    if isinstance(layer, nn.Linear):
        return output.numel() // output.shape[0] * layer.in_features
    return 0


def count_macs(module: nn.Module, *inputs: torch.Tensor, depth: int = 1) -> tuple[int, dict[str, int]]:
    """MACs per image for one forward, in total and grouped by module-name prefix of `depth` parts."""
    per_prefix: dict[str, int] = {}
    handles = []
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            prefix = ".".join(name.split(".")[:depth])

            def hook(_layer: nn.Module, _inputs: tuple, output: torch.Tensor, prefix: str = prefix) -> None:
                per_prefix[prefix] = per_prefix.get(prefix, 0) + _layer_macs(_layer, output)

            handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(per_prefix.values()), per_prefix


def summarize(model: nn.Module, img_size: int, depth: int = 2) -> list[ModuleCost]:
    """Per-module parameters and per-image MACs of the training graph (model.model_1), eval mode."""
    was_training = model.training
    model.eval()
    try:
        image = torch.zeros(1, 3, img_size, img_size)
        _, macs = count_macs(model.model_1, image, depth=depth)
    finally:
        model.train(was_training)
    rows = []
    for name, child in model.model_1.named_modules():
        if name and name.count(".") == depth - 1:
            rows.append(ModuleCost("model_1." + name, count_params(child), macs.get(name, 0)))
    scalars = sum(p.numel() for n, p in model.named_parameters(recurse=False))
    rows.append(ModuleCost("(scalars: logit_scale, ...)", scalars, 0))
    return rows
