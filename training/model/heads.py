"""MEAN's training-only branches, named and laid out as in the reference code (ISChenawei/MEAN).

The reference does not use the paper's names; the likely mapping (unconfirmed) is
DEG + two part ClassBlocks ~ PEE, the global ClassBlock ~ GEE, SparseMLP1D -> FAT -> MSF ~ CEA.
None of these run at inference time or are exported.
"""

import torch
import torch.nn.functional as F
from torch import nn


class DEG(nn.Module):
    """Three dilated 3x3 convs (d=1,2,3) averaged, ReLU, 1x1 back up, averaged with the input.

    Reference quirk: both returned "parts" are the same tensor passed twice through one dropout
    module, so they differ only by their independent dropout masks.
    """

    def __init__(self, channels: int, reduction: int = 4, dropout: float = 0.01) -> None:
        super().__init__()
        hidden = channels // reduction
        self.FC11 = nn.Conv2d(channels, hidden, 3, padding=1, dilation=1, bias=False)
        self.FC12 = nn.Conv2d(channels, hidden, 3, padding=2, dilation=2, bias=False)
        self.FC13 = nn.Conv2d(channels, hidden, 3, padding=3, dilation=3, bias=False)
        self.FC1 = nn.Conv2d(hidden, channels, 1)
        self.dropout = nn.Dropout(dropout)
        for conv in (self.FC11, self.FC12, self.FC13, self.FC1):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        nn.init.zeros_(self.FC1.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = F.relu((self.FC11(x) + self.FC12(x) + self.FC13(x)) / 3)
        fused = (self.FC1(mixed) + x) / 2
        return self.dropout(fused), self.dropout(fused)


class MultiScaleFusionDilated(nn.Module):
    """Treats a vector as a 1-channel 1-D signal; 4 conv branches; average over the length.

    Reference quirk: averaging a linear conv over the whole length makes the three dilated
    branches (3/4 of the channels) near-affine functions of the input mean.
    """

    def __init__(self, out_channels: int = 512) -> None:
        super().__init__()
        branch = out_channels // 4
        self.dilated1 = nn.Conv1d(1, branch, 3, padding=1, dilation=1)
        self.dilated2 = nn.Conv1d(1, branch, 3, padding=2, dilation=2)
        self.dilated3 = nn.Conv1d(1, branch, 3, padding=3, dilation=3)
        self.extra1 = nn.Sequential(nn.Conv1d(1, branch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signal = x.unsqueeze(1)
        branches = [self.dilated1(signal), self.dilated2(signal), self.dilated3(signal), self.extra1(signal)]
        return F.adaptive_avg_pool1d(torch.cat(branches, dim=1), 1).flatten(1)


class ClassBlock(nn.Module):
    """MultiScaleFusionDilated -> BN1d -> Dropout -> Linear. PyTorch default init (as MEAN)."""

    def __init__(self, num_classes: int, bottleneck: int = 512, droprate: float = 0.5) -> None:
        super().__init__()
        self.multi_scale_block = MultiScaleFusionDilated(bottleneck)
        self.add_block = nn.Sequential(nn.BatchNorm1d(bottleneck), nn.Dropout(droprate))
        self.classifier = nn.Linear(bottleneck, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits, bottleneck feature)."""
        feature = self.add_block(self.multi_scale_block(x))
        return self.classifier(feature), feature


class SparseMLP1D(nn.Module):
    """Conv1d(C->hidden) -> BN -> ReLU -> Conv1d(hidden->out), then functional dropout in training.

    Reference quirk: the docstring promises a skip connection, the code has none (nor do we).
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv1d(in_channels, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)
                ),
                nn.Sequential(nn.Conv1d(hidden, out_channels, 1, bias=False)),
            ]
        )
        self.dropout = dropout
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return F.dropout(x, p=self.dropout, training=self.training)


class FAT(nn.Module):
    """1x1 Conv1d, then a softmax over positions at temperature 0.1 (`feature_scaling` in the reference)."""

    def __init__(self, channels: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Conv1d(channels, channels, 1)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(x) / self.temperature, dim=2)


class MSF(nn.Module):
    """Fuses the flattened map P and the attention W: 1x1 convs, concat, 1x1 conv, BN, ReLU."""

    def __init__(self, map_channels: int, weight_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(map_channels, out_channels, 1)
        self.conv2 = nn.Conv1d(weight_channels, out_channels, 1)
        self.conv_fusion = nn.Conv1d(2 * out_channels, out_channels, 1)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, feature_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.conv1(feature_map), self.conv2(weights)], dim=1)
        return F.relu(self.bn(self.conv_fusion(fused)))
