"""What a model's query image is: the drone frame as captured, or its pose-aware ground patch.

`QueryView` is part of the model identity (checkpoint manifest, ONNX metadata, engine sidecar,
bank manifest), so training, evaluation and the onboard loop prepare queries the same way, and
`prepare_query` is the one place that does it.

Pose-aware queries are an opt-in *method*: the data and its pinned difficulty
(datasets-and-metrics.md §5.9) are unchanged, but every query needs the camera's attitude and
height above ground, which a flying vehicle knows and University-1652 and SUES-200 do not record.
Python 3.8 compatible and torch-free.
"""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError

from .geo.rectify import CameraAttitude, rectify_to_ground
from .preprocess import IMAGENET_MEAN

# Bank tiles may differ from the trained patch side by this fraction before scale hurts matching.
SIDE_TOLERANCE = 0.05
# How ground the frame does not show is filled in a rectified query (part of the model identity):
# "black" (0, as the first pose-aware models were trained), or "mean": the preprocessing mean
# colour, which the normalisation turns into 0, so it reads like the network's own zero padding.
FILLS = {"black": (0.0, 0.0, 0.0), "mean": tuple(255.0 * m for m in reversed(IMAGENET_MEAN))}
DEFAULT_FILL = "mean"  # for models trained from now on; artifacts without the key are "black"


@dataclass(frozen=True)
class QueryView:
    """How a drone frame becomes the model's query image; part of the model identity.

    `ground_side_m` None: the frame as captured (MEAN as published). A value: the frame is
    rectified to a north-up ground square of that side around the look-at point, and ground the
    frame does not show (a low or shallow view cuts the near side of the square) gets `fill`.
    Training, evaluation, calibration and the onboard loop all call `prepare_query`, so the
    uncovered part is handled identically everywhere.
    """

    ground_side_m: Optional[float] = None
    fill: str = DEFAULT_FILL

    def __post_init__(self) -> None:
        if self.ground_side_m is None:  # nothing is filled in a frame as captured: one identity
            object.__setattr__(self, "fill", DEFAULT_FILL)

    @property
    def rectified(self) -> bool:
        return self.ground_side_m is not None

    def describe(self) -> str:
        if not self.rectified:
            return "camera frame as captured"
        return "pose-aware: frame rectified to a north-up {:g} m ground square (uncovered ground: {})".format(
            self.ground_side_m, self.fill)

    def to_dict(self) -> Dict[str, Any]:
        if not self.rectified:
            return {"ground_side_m": None}
        return {"ground_side_m": self.ground_side_m, "fill": self.fill}

    @classmethod
    def from_dict(cls, payload: Optional[Mapping[str, Any]]) -> "QueryView":
        side = (payload or {}).get("ground_side_m")
        if side is None:
            return cls()
        try:
            side = float(side)
        except (TypeError, ValueError):
            raise MeanlocError("invalid query view {!r}".format(dict(payload or {}))) from None
        if side <= 0:
            raise MeanlocError("query view ground side must be positive, got {}".format(side))
        fill = str((payload or {}).get("fill", "black"))
        if fill not in FILLS:
            raise MeanlocError("query view fill must be one of {}, got {!r}".format(", ".join(FILLS), fill))
        return cls(side, fill)

    def check_tile_side(self, tile_side_m: float, what: str) -> None:
        """A rectified query only matches tiles of the side it was trained on."""
        if self.rectified and abs(tile_side_m - self.ground_side_m) > SIDE_TOLERANCE * self.ground_side_m:
            raise ArtifactMismatchError(
                "{}: the model compares {:g} m ground squares but the bank's tiles are {:g} m; "
                "rebuild the bank with --tile-m {:g}".format(what, self.ground_side_m, tile_side_m, self.ground_side_m))


# The default: MEAN as published, frames embedded as captured.
FRAMES_AS_CAPTURED = QueryView()


def prepare_query(image: np.ndarray, view: QueryView, attitude: Optional[CameraAttitude], size_px: int) -> np.ndarray:
    """The BGR image the model embeds for one drone frame (then `preprocess_bgr` as any image)."""
    if not view.rectified:
        return image
    if attitude is None or attitude.hfov_deg is None:
        raise MeanlocError("this model expects pose-aware queries ({}) but the frame has no camera attitude "
                           "(altitude, pitch, heading, FOV)".format(view.describe()))
    return rectify_to_ground(image, attitude, float(view.ground_side_m), size_px, FILLS[view.fill])
