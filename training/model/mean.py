"""The MEAN network: a weight-shared Siamese ConvNeXt with training-only branches.

Module names reproduce the reference checkpoint layout (`model_1.*`, `logit_scale`,
`logit_scale_blocks`, `w_blocks1..3`) so official checkpoints load with strict key checks.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .convnext import ConvNeXt, run_trunk
from .heads import DEG, FAT, MSF, ClassBlock, SparseMLP1D
from .presets import MeanConfig, initial_logit_scale


class ViewOutputs(NamedTuple):
    """Everything the losses need from one view (satellite or drone batch)."""

    aligned: torch.Tensor  # A (B, fused_dim, H*W): the CDA alignment map
    logits: tuple[torch.Tensor, ...]  # [mcb1, mcb2][:block] + [classifier1], each (B, num_classes)
    features: tuple[torch.Tensor, ...]  # ClassBlock bottlenecks; unused by MEAN's losses
    global_feature: torch.Tensor  # g = LN(GAP(F4)) (B, C): InfoNCE input and the retrieval feature
    feature_map: torch.Tensor  # F4 (B, C, H, W)


class MEANBranches(nn.Module):
    """`model_1` in the reference: backbone plus DEG, ClassBlocks, SparseMLP1D, FAT and MSF."""

    def __init__(self, config: MeanConfig) -> None:
        super().__init__()
        channels = config.embed_dim
        self.config = config
        self.convnext = ConvNeXt(config.depths, config.dims, head_classes=config.imagenet_head_classes)
        self.classifier1 = ClassBlock(config.num_classes, config.bottleneck, config.classifier_dropout)
        self.DEG = DEG(channels, config.deg_reduction, config.deg_dropout)
        self.MSF = MSF(channels, config.proj_dim, config.fused_dim)
        for index in range(1, config.block + 1):
            head = ClassBlock(config.num_classes, config.bottleneck, config.classifier_dropout)
            self.add_module(f"classifier_mcb{index}", head)
        self.proj = SparseMLP1D(channels, config.proj_hidden, config.proj_dim, config.proj_dropout)
        self.feature_scaling = FAT(config.proj_dim, config.fat_temperature)

    def part_classifiers(self) -> list[ClassBlock]:
        return [getattr(self, f"classifier_mcb{i}") for i in range(1, self.config.block + 1)]

    def forward(self, x: torch.Tensor) -> ViewOutputs:
        global_feature, feature_map = self.convnext(x)

        parts = self.DEG(feature_map)
        head_outputs = [head(part.mean(dim=(-2, -1))) for head, part in zip(self.part_classifiers(), parts)]
        head_outputs.append(self.classifier1(global_feature))

        flat = feature_map.flatten(2)  # P (B, C, H*W)
        weights = F.normalize(self.proj(flat), dim=1)  # per-position L2 over channels (x 1/scale, scale=1)
        weights = self.feature_scaling(weights)
        if self.config.fat_double_softmax:
            weights = torch.softmax(weights, dim=2)
        aligned = self.MSF(flat, weights)

        return ViewOutputs(
            aligned=aligned,
            logits=tuple(logits for logits, _ in head_outputs),
            features=tuple(feature for _, feature in head_outputs),
            global_feature=global_feature,
            feature_map=feature_map,
        )


class MEAN(nn.Module):
    """`two_view_net`: one shared `model_1` applied to the satellite and the drone batch."""

    def __init__(self, config: MeanConfig) -> None:
        super().__init__()
        self.config = config
        scale = initial_logit_scale()
        self.logit_scale = nn.Parameter(torch.tensor(scale))  # InfoNCE temperature (learned)
        # Unused by MEAN's losses; kept only so official checkpoints load strictly.
        self.logit_scale_blocks = nn.Parameter(torch.tensor(scale))
        self.w_blocks1 = nn.Parameter(torch.tensor(1.0))
        self.w_blocks2 = nn.Parameter(torch.tensor(1.0))
        self.w_blocks3 = nn.Parameter(torch.tensor(1.0))
        self.model_1 = MEANBranches(config)

    def forward(self, satellite: torch.Tensor, drone: torch.Tensor) -> tuple[ViewOutputs, ViewOutputs]:
        return self.model_1(satellite), self.model_1(drone)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised retrieval embedding: the exported graph (`MEANEmbedder`), run in PyTorch."""
        return self.embedder()(images)

    def embedder(self) -> "MEANEmbedder":
        """The inference graph `meanloc export onnx` writes and evaluation runs (shares the weights)."""
        return MEANEmbedder(self.model_1.convnext)


class MEANEmbedder(nn.Module):
    """The inference graph: backbone -> global average pool -> LayerNorm -> L2 normalisation.

    Shares (does not copy) the backbone's modules but not its unused `head`, so its parameters
    are exactly the deployed ones and it traces to ONNX with only the batch axis dynamic.
    """

    def __init__(self, backbone: ConvNeXt) -> None:
        super().__init__()
        self.downsample_layers = backbone.downsample_layers
        self.stages = backbone.stages
        self.norm = backbone.norm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = run_trunk(self.downsample_layers, self.stages, images)
        embedding = self.norm(feature_map.mean(dim=(-2, -1)))
        # Written out (not F.normalize) so the export is ReduceL2-free and FP16-safe to pin: x / max(||x||, eps).
        norm = torch.sqrt(torch.sum(embedding * embedding, dim=1, keepdim=True))
        return embedding / torch.clamp(norm, min=1e-12)


def build_model(config: MeanConfig) -> MEAN:
    return MEAN(config)
