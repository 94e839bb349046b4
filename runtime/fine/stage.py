"""The loop's fine stage: one frame + candidate regions -> a verified geometric fix, or why not.

Per frame: describe the query (`query.py`), gather the bank's features around every candidate
region (the filter's prediction and/or the top retrieved tiles), match, vote for the translation
and fit the geometric model (`matching.py`, `fit.py`), then accept the fit only when it is
unambiguous and physically plausible:
  * at least `min_inliers` distinct inliers (COLMAP accepts two-view geometry from 15),
  * the winning translation has `min_peak_ratio` times the votes of the best peak elsewhere
    (repetitive ground produces rival peaks),
  * inliers spread over the patch (`min_spread_m`), so rotation and scale are determined,
  * scale within `max_scale_error` of 1 and rotation within `max_rotation_deg` (the attitude and
    height errors a vehicle can have), and the look-at point inside a candidate region.
A frame that fails any of them keeps its retrieval fix; the reason is recorded.
Python 3.8 compatible, torch-free.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..bank.feature_layer import FeatureLayer
from ..features.extract import make_extractor
from ..geo.rectify import CameraAttitude
from .fit import GeometricFit, fit_homography, fit_similarity, perspective_spread
from .matching import VotePeak, knn_matches, ratio_matches, rotate, vote_translation
from .query import SIMILARITY, QueryFeatures, north_up_query, rectified_query

REFINE_MODES = ("auto", "off")
FINE_STAGES = ("detect", "match", "fit")
# Without an attitude the features' ground reach is unknown: gather this far around a region.
DEFAULT_REACH_M = 400.0
# A rectified patch's homography may change scale by at most this much across the patch.
MAX_PERSPECTIVE = 0.3
# A similarity with this many inliers is kept without trying a homography.
SIMILARITY_ENOUGH = 40


@dataclass(frozen=True)
class RefineConfig:
    mode: str = "auto"  # auto: on when the bank has a local feature layer; off
    max_query_features: int = 1000
    # Each query feature votes with its k nearest bank descriptors: across seasons the true
    # neighbour is often not the first (bench/RESULTS.md, "local features").
    knn: int = 10
    vote_bin_m: float = 4.0
    # Rotation hypotheses for the vote (heading error), every `rotation_step_deg` within +-range:
    # a cheap IMU's heading is off by 8 deg (1 sigma) plus a bias of 5.
    rotation_range_deg: float = 20.0
    rotation_step_deg: float = 5.0
    inlier_threshold_m: Optional[float] = None  # None: 2 pixels of the layer
    min_inliers: int = 15
    min_peak_ratio: float = 1.5
    min_spread_m: float = 15.0
    max_scale_error: float = 0.2
    max_rotation_deg: float = 25.0
    ratio: float = 0.85  # Lowe ratio for the homography model
    covariance_floor_m: Optional[float] = None  # None: one pixel of the layer, at least 1 m

    def validate(self) -> None:
        if self.mode not in REFINE_MODES:
            raise MeanlocError("--refine must be one of {}, got {!r}".format(", ".join(REFINE_MODES), self.mode))
        if self.min_inliers < 4 or self.knn < 1 or self.max_query_features < self.min_inliers:
            raise MeanlocError("refine: need min_inliers >= 4, knn >= 1 and max_query_features >= min_inliers")


class Candidate(NamedTuple):
    """A region where the look-at point may lie: local-frame centre and radius (metres)."""

    x: float
    y: float
    radius_m: float
    source: str  # "filter" (its prediction), "prior" (the vehicle's own estimate) or "retrieval"


class FineResult(NamedTuple):
    verified: bool
    reason: str  # why the fit was refused ("" when verified)
    model: Optional[str]
    look_at: Optional[Tuple[float, float]]  # local frame, metres
    covariance: Optional[np.ndarray]  # (2, 2) m²
    inliers: int
    inlier_ratio: Optional[float]  # inliers / putative matches the model was fitted to
    votes: Optional[float]
    rival_votes: Optional[float]
    rotation_deg: Optional[float]  # query -> bank, counter-clockwise = reported minus true heading
    scale: Optional[float]
    candidate: Optional[Candidate]
    timings: Dict[str, float]


class FineStage:
    def __init__(self, layer: FeatureLayer, config: RefineConfig) -> None:
        config.validate()
        self.layer = layer
        self.config = config
        self.extractor = make_extractor(layer.meta.spec)
        gsd = layer.meta.gsd_m
        self.threshold_m = config.inlier_threshold_m or 2.0 * gsd
        self.floor_m = config.covariance_floor_m or max(1.0, gsd)
        steps = round(config.rotation_range_deg / config.rotation_step_deg) if config.rotation_step_deg > 0 else 0
        self.rotations = [k * config.rotation_step_deg for k in range(-steps, steps + 1)]

    def refine(self, image: np.ndarray, attitude: Optional[CameraAttitude], heading_deg: Optional[float],
               candidates: Sequence[Candidate], clock: Callable[[], float] = time.perf_counter) -> FineResult:
        cfg = self.config
        timings = {stage: 0.0 for stage in FINE_STAGES}
        start = clock()
        query = self._describe(image, attitude, heading_deg)
        timings["detect"] = clock() - start
        if query is None:
            return _refused("no heading for this frame", timings)
        if not candidates:
            return _refused("no candidate region", timings)
        if len(query) < cfg.min_inliers:
            return _refused("{} query features (< {})".format(len(query), cfg.min_inliers), timings)
        start = clock()
        reach = query.reach_m if query.reach_m is not None else DEFAULT_REACH_M
        region = self.layer.gather([(c.x, c.y, c.radius_m + reach) for c in candidates])
        if len(region) < cfg.min_inliers:
            timings["match"] = clock() - start
            return _refused("{} bank features around the candidates".format(len(region)), timings)
        if query.model == SIMILARITY:
            matches = knn_matches(query.descriptors, region.descriptors, self.extractor.norm, cfg.knn)
        else:
            matches = ratio_matches(query.descriptors, region.descriptors, self.extractor.norm, cfg.ratio)
        timings["match"] = clock() - start
        start = clock()
        src, dst = query.xy[matches.query], region.xy[matches.bank]
        peak: Optional[VotePeak] = None
        if query.model == SIMILARITY:
            circles = [(c.x, c.y, c.radius_m) for c in candidates]
            peak = vote_translation(src, dst, circles, cfg.vote_bin_m, self.rotations)
            # Matches that agree with the peak within a few bins (plus the rotation step's slack
            # at the patch's edge) go to the robust fit.
            slack = 3.0 * cfg.vote_bin_m + reach * math.radians(cfg.rotation_step_deg) / 2.0
            residual = np.hypot(*(dst - (rotate(src, peak.rotation_deg) + peak.translation)).T)
            keep = one_to_one(matches.query, matches.bank, residual, slack)
            src, dst = src[keep], dst[keep]
            fit = self._rectified_fit(src, dst, reach)
        else:
            fit = fit_homography(src, dst, query.centre, self.threshold_m, self.floor_m)
        timings["fit"] = clock() - start
        return self._verdict(fit, peak, len(src), candidates, timings, query.model, reach)

    def _rectified_fit(self, src: np.ndarray, dst: np.ndarray, reach: float) -> Optional[GeometricFit]:
        """The similarity, or a homography where it holds clearly more inliers: errors of the
        attitude the patch was rectified with (pitch, roll, height) leave a planar perspective
        that a similarity cannot absorb (a cheap IMU's 2 deg of pitch moves the far field metres)."""
        similarity = fit_similarity(src, dst, self.threshold_m, self.floor_m)
        if similarity is not None and similarity.n_inliers >= SIMILARITY_ENOUGH:
            return similarity  # a well-rectified patch: nothing for a homography to add
        # The matches already agree with the voted translation: a few hundred draws suffice.
        perspective = fit_homography(src, dst, np.zeros(2), self.threshold_m, self.floor_m, max_iterations=1000)
        if perspective is None or perspective_spread(perspective.matrix, reach) > MAX_PERSPECTIVE:
            return similarity
        if similarity is None or perspective.n_inliers >= similarity.n_inliers + max(4, similarity.n_inliers // 4):
            return perspective
        return similarity

    def _describe(self, image: np.ndarray, attitude: Optional[CameraAttitude],
                  heading_deg: Optional[float]) -> Optional[QueryFeatures]:
        cfg = self.config
        if attitude is not None and attitude.hfov_deg is not None:
            return rectified_query(image, attitude, self.layer.meta.gsd_m, self.extractor, cfg.max_query_features)
        if heading_deg is not None:
            return north_up_query(image, heading_deg, self.extractor, cfg.max_query_features)
        return None

    def _verdict(self, fit: Optional[GeometricFit], peak: Optional[VotePeak], putative: int,
                 candidates: Sequence[Candidate], timings: Dict[str, float], query_model: str,
                 reach: float) -> FineResult:
        cfg = self.config
        if fit is None:
            return _refused("no geometric model fits the {} matches".format(putative), timings)
        problems: List[str] = []
        if fit.n_inliers < cfg.min_inliers:
            problems.append("{} inliers (< {})".format(fit.n_inliers, cfg.min_inliers))
        if peak is not None and peak.votes < cfg.min_peak_ratio * peak.rival_votes:
            problems.append("ambiguous place ({:.0f} votes vs {:.0f} elsewhere)".format(peak.votes, peak.rival_votes))
        if fit.spread_m < cfg.min_spread_m:
            problems.append("inliers spread {:.1f} m (< {:g})".format(fit.spread_m, cfg.min_spread_m))
        if query_model == SIMILARITY:  # a rectified patch: near the identity, whichever model fitted
            if math.isnan(fit.scale) or abs(fit.scale - 1.0) > cfg.max_scale_error:
                problems.append("scale {:.2f}".format(fit.scale))
            if math.isnan(fit.rotation_deg) or abs(fit.rotation_deg) > cfg.max_rotation_deg:
                problems.append("rotation {:.1f} deg".format(fit.rotation_deg))
        elif np.linalg.det(fit.matrix[:2, :2]) >= 0:
            # Image rows grow south while map y grows north: a true frame-to-ground map mirrors.
            problems.append("mirrored homography")
        inside = [c for c in candidates if math.hypot(fit.look_at[0] - c.x, fit.look_at[1] - c.y) <= c.radius_m]
        if not inside:
            problems.append("look-at point outside every candidate region")
        rotation = None if math.isnan(fit.rotation_deg) else fit.rotation_deg
        scale = None if math.isnan(fit.scale) else fit.scale
        return FineResult(not problems, "; ".join(problems), fit.model,
                          (float(fit.look_at[0]), float(fit.look_at[1])), fit.covariance, fit.n_inliers,
                          fit.n_inliers / max(1, putative), None if peak is None else peak.votes,
                          None if peak is None else peak.rival_votes, rotation, scale,
                          inside[0] if inside else None, timings)


def one_to_one(query: np.ndarray, bank: np.ndarray, residual: np.ndarray, limit: float) -> np.ndarray:
    """Rows of the matches within `limit` of the voted model, at most one per query feature and one
    per bank feature (the closest), so an inlier count counts distinct points: a query feature's k
    neighbours, or a bank point described at two scales, must not count twice."""
    rows = np.flatnonzero(residual < limit)
    rows = rows[np.argsort(residual[rows], kind="stable")]
    _, first_query = np.unique(query[rows], return_index=True)
    rows = rows[np.sort(first_query)]
    _, first_bank = np.unique(bank[rows], return_index=True)
    return np.sort(rows[first_bank])


def _refused(reason: str, timings: Dict[str, float]) -> FineResult:
    return FineResult(False, reason, None, None, None, 0, None, None, None, None, None, None, timings)


def rerank(look_at: Tuple[float, float], tile_xy: np.ndarray, tile_side_m: np.ndarray,
           indices: np.ndarray) -> np.ndarray:
    """Positions in `indices` (one query's retrieval results, best first), re-ordered so that the
    tiles containing the verified look-at point come first (in their retrieval order): a tile that
    verifies wins over one that only scores high."""
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    half = tile_side_m[safe] / 2.0
    contains = valid & (np.abs(tile_xy[safe, 0] - look_at[0]) <= half) & (np.abs(tile_xy[safe, 1] - look_at[1]) <= half)
    return np.concatenate([np.flatnonzero(contains), np.flatnonzero(~contains)])
