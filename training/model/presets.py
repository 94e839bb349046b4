"""MEAN configurations. The paper's network and the small CPU presets share one code path;
only these numbers differ.
"""

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from meanloc.errors import MeanlocError
from meanloc.runtime.query_view import QueryView


@dataclass(frozen=True)
class MeanConfig:
    preset: str = "mean-paper"
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    img_size: int = 384
    num_classes: int = 701
    # How many DEG outputs get a ClassBlock (0, 1 or 2); the reference uses 2.
    block: int = 2
    # The unused 1000-class ImageNet head, kept so official checkpoints load strictly.
    imagenet_head_classes: int = 1000
    # Training-branch widths (paper: C/4 DEG hidden, 2C SparseMLP hidden, 256 attention, 512 fused/bottleneck).
    deg_reduction: int = 4
    proj_hidden: int = 1536
    proj_dim: int = 256
    fused_dim: int = 512
    bottleneck: int = 512
    # Dropouts and temperature of the reference.
    deg_dropout: float = 0.01
    proj_dropout: float = 0.05
    classifier_dropout: float = 0.5
    fat_temperature: float = 0.1
    # Reference quirk (shared/docs/mean-model.md §2.3): FAT's output is softmaxed a second
    # time in the forward, which leaves it nearly uniform. True reproduces the reference.
    fat_double_softmax: bool = True
    # Pose-aware queries (meanloc.runtime.query_view): drone frames rectified to a north-up ground
    # square of this side before embedding; None = frames as captured, as MEAN is published.
    query_ground_side_m: float | None = None
    # How the uncovered part of a rectified query is filled (runtime.query_view.FILLS); checkpoints
    # written before this field existed used black.
    query_fill: str = "black"
    quirks_note: str = field(default="faithful", compare=False)

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    @property
    def query_view(self) -> QueryView:
        return QueryView(self.query_ground_side_m, self.query_fill)

    @property
    def feature_grid(self) -> int:
        """Side of the final feature map (stride 32)."""
        return self.img_size // 32

    def to_dict(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload["depths"] = list(self.depths)
        payload["dims"] = list(self.dims)
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "MeanConfig":
        _reject_unknown(payload, "model config")
        values = dict(payload)
        for key in ("depths", "dims"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if len(self.depths) != len(self.dims) or len(self.dims) < 2:
            raise MeanlocError(f"model config: depths {self.depths} and dims {self.dims} must have the same length >= 2")
        if self.img_size % 32:
            raise MeanlocError(f"model config: img_size must be a multiple of 32, got {self.img_size}")
        if self.block not in (0, 1, 2):
            raise MeanlocError(f"model config: block must be 0, 1 or 2, got {self.block}")
        if self.query_ground_side_m is not None and self.query_ground_side_m <= 0:
            raise MeanlocError(f"model config: query_ground_side_m must be positive, got {self.query_ground_side_m}")
        if self.num_classes < 1 or self.bottleneck % 4:
            raise MeanlocError("model config: num_classes must be >= 1 and bottleneck a multiple of 4")


PRESETS: dict[str, MeanConfig] = {
    # The published network: ConvNeXt-T at 384 px, University-1652's 701 training classes.
    "mean-paper": MeanConfig(),
    # About 1/4 width, fewer blocks, 128 px: trains on 2 CPU cores in minutes (the demo).
    "mean-small": MeanConfig(
        preset="mean-small",
        depths=(2, 2, 4, 2),
        dims=(24, 48, 96, 192),
        img_size=128,
        num_classes=256,
        proj_hidden=384,
        proj_dim=64,
        fused_dim=128,
        bottleneck=128,
    ),
    # Smallest useful network for unit tests: a forward pass takes milliseconds.
    "mean-nano": MeanConfig(
        preset="mean-nano",
        depths=(1, 1, 2, 1),
        dims=(16, 32, 64, 128),
        img_size=64,
        num_classes=16,
        proj_hidden=256,
        proj_dim=32,
        fused_dim=64,
        bottleneck=64,
    ),
}


def _reject_unknown(payload: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(MeanConfig)}
    for key in payload:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise MeanlocError(f"{what}: unknown key '{key}'{suffix}")


def resolve_config(preset: str = "mean-paper", **overrides: Any) -> MeanConfig:
    """A preset with optional field overrides, validated (typos get a suggestion)."""
    if preset not in PRESETS:
        hint = difflib.get_close_matches(preset, sorted(PRESETS), n=1)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise MeanlocError(f"unknown model preset '{preset}'{suffix}; choose from {', '.join(PRESETS)}")
    _reject_unknown(overrides, "model override")
    config = dataclasses.replace(PRESETS[preset], **overrides)
    config.validate()
    return config


def initial_logit_scale() -> float:
    """ln(1/0.07): CLIP's initial InfoNCE temperature, as the reference uses."""
    return math.log(1 / 0.07)
