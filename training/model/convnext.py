"""ConvNeXt backbone in the original FAIR layout (facebookresearch/ConvNeXt), as MEAN uses it.

State-dict names match FAIR's (`downsample_layers.i.j`, `stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}`,
`norm`, `head`) so official MEAN and FAIR ImageNet checkpoints load with strict key checking.

One deliberate change from FAIR's code: the channels-first LayerNorm is written as permute +
`F.layer_norm` instead of explicit mean/variance arithmetic. It computes the same function, but
exports to ONNX as a native `LayerNormalization` (opset 17), which TensorRT keeps in FP32 under
FP16 builds; the hand-written form is not recognised and loses precision in FP16
(see shared/docs/deployment.md §2, §6).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (FAIR's `channels_first` LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """dwconv 7x7 -> LN -> Linear C->4C -> GELU -> Linear 4C->C -> layer scale -> residual."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC for the per-pixel MLP
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + x  # drop path is 0 in MEAN, so no stochastic depth module


def run_trunk(downsample_layers: nn.ModuleList, stages: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Stem/downsample and stages, alternating: (B,3,H,W) -> F4 (B,C4,H/32,W/32)."""
    for downsample, stage in zip(downsample_layers, stages):
        x = stage(downsample(x))
    return x


class ConvNeXt(nn.Module):
    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_chans: int = 3,
        head_classes: int = 1000,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        downsamples = [
            nn.Sequential(LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            for i in range(len(dims) - 1)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downsamples])
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dim, layer_scale_init) for _ in range(depth))) for depth, dim in zip(depths, dims)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        # Built, loaded and saved for key compatibility with FAIR/MEAN checkpoints; never used.
        self.head = nn.Linear(dims[-1], head_classes)
        self.apply(_init_fair)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return run_trunk(self.downsample_layers, self.stages, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (g, F4): g = LN(global average pool of F4), the retrieval feature."""
        feature_map = self.forward_features(x)
        return self.norm(feature_map.mean(dim=(-2, -1))), feature_map


def _init_fair(module: nn.Module) -> None:
    # FAIR ConvNeXt init: trunc-normal(0.02) weights and zero bias for conv and linear layers.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
