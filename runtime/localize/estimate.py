"""From retrieval results to a position fix with a confidence.

* Position: the top-1 tile centre, or the similarity-weighted mean of the top-k centres that lie
  next to the top-1 tile (a far-away runner-up must not drag the estimate to the midpoint).
* Confidence: the top-1 cosine score and its margin over the best NON-adjacent tile
  (`SatelliteBank.margin`: overlapping neighbours naturally score almost as high, so they are
  excluded, §4.3 of datasets-and-metrics.md). "Adjacent" means closer than the top-1 tile's side.
* Fix noise: a confident fix is trusted to about a third of the tile spacing (grid
  quantisation), an unconfident one to about two spacings; the Kalman gate uses it.

Python 3.8 compatible, numpy only.
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

ESTIMATORS = ("top1", "weighted")


@dataclass(frozen=True)
class EstimatorConfig:
    method: str = "top1"
    topk: int = 5
    # Softmax temperature over cosine scores for the weighted estimate.
    temperature: float = 0.02
    # A fix is "confident" when both hold; confidence reaches 1 at `full_margin`.
    min_margin: float = 0.02
    min_score: float = 0.0
    full_margin: float = 0.1


FIX_SOURCES = ("retrieval", "geometric")


@dataclass(frozen=True)
class Fix:
    """One frame's position measurement of the look-at point, in the bank's local frame."""

    xy: Tuple[float, float]
    tile_index: int
    score: float
    margin: float
    confidence: float
    confident: bool
    std_m: float
    source: str = "retrieval"  # or "geometric": verified by local features (runtime.fine)
    covariance: Optional[np.ndarray] = None  # (2, 2) m²; None: `std_m` on both axes

    @property
    def noise(self) -> Union[float, np.ndarray]:
        return self.std_m if self.covariance is None else self.covariance


def median_spacing_m(tile_xy: np.ndarray, sample: int = 512, seed: int = 0) -> float:
    """Median nearest-neighbour distance between tile centres, from a fixed sample of tiles."""
    if len(tile_xy) < 2:
        return 100.0
    rng = np.random.RandomState(seed)
    picked = rng.choice(len(tile_xy), size=min(sample, len(tile_xy)), replace=False)
    nearest = np.empty(len(picked))
    for row, index in enumerate(picked):
        distances = np.hypot(*(tile_xy - tile_xy[index]).T)
        distances[index] = np.inf
        nearest[row] = distances.min()
    spacing = float(np.median(nearest[np.isfinite(nearest)]))
    return spacing if spacing > 0 else 100.0


class PositionEstimator:
    def __init__(self, tile_xy: np.ndarray, tile_side_m: np.ndarray, config: EstimatorConfig) -> None:
        if config.method not in ESTIMATORS:
            raise ValueError("estimator must be one of {}, got {!r}".format(ESTIMATORS, config.method))
        self.tile_xy = np.asarray(tile_xy, dtype=np.float64)
        self.tile_side_m = np.asarray(tile_side_m, dtype=np.float64)
        self.config = config
        self.spacing_m = median_spacing_m(self.tile_xy)
        self.min_std_m = 0.35 * self.spacing_m
        self.max_std_m = 2.0 * self.spacing_m

    def estimate(self, scores: np.ndarray, indices: np.ndarray, margin: float) -> Optional[Fix]:
        """`scores`/`indices`: one query's results, best first (index -1 marks an empty slot);
        `margin`: top-1 score minus the best non-adjacent score (inf when every tile is adjacent)."""
        valid = indices >= 0
        scores, indices = scores[valid], indices[valid]
        if len(indices) == 0:
            return None
        top = int(indices[0])
        centres = self.tile_xy[indices]
        near = np.hypot(*(centres - centres[0]).T) <= self.tile_side_m[top]
        cfg = self.config
        confidence = float(np.clip(margin / cfg.full_margin, 0.0, 1.0))
        confident = margin >= cfg.min_margin and float(scores[0]) >= cfg.min_score
        if cfg.method == "weighted":
            pool = np.flatnonzero(near)[: cfg.topk]
            weights = np.exp((scores[pool] - scores[0]) / cfg.temperature)
            position = (centres[pool] * weights[:, None]).sum(axis=0) / weights.sum()
        else:
            position = centres[0]
        std = self.min_std_m + (self.max_std_m - self.min_std_m) * (1.0 - confidence)
        return Fix((float(position[0]), float(position[1])), top, float(scores[0]), margin, confidence, confident, std)
