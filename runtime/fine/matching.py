"""Putative correspondences between query and bank features, and translation voting.

Cross-season aerial imagery defeats Lowe's ratio test: the correct neighbour is rarely much
closer than the second, so most true matches die (on the cross-source synthetic world ~15 % of
frames verified with ratio 0.85 + RANSAC, as on the real pair of the issue). But both sides are
north-up at the same scale, so every correct match implies the same translation. Each query
feature's k nearest bank descriptors vote for a translation (under a few rotation hypotheses, for
heading error); true matches pile up in one bin while wrong ones scatter over the region
(Hough voting, Lowe IJCV 2004 §7.1, here with scale and rotation known). The peak's votes over
the best peak elsewhere measures how unambiguous the place is: repetitive ground (crop rows, roof
grids) gives several similar peaks and is refused.
Python 3.8 compatible, torch-free.
"""

import math
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from ..features.extract import NORM_HAMMING, descriptors_for_matching
from ..geo.orthophoto import require_cv2

# A peak elsewhere must be this far from the winner to count as a rival (not the same peak smeared).
RIVAL_DISTANCE_M = 25.0


class Matches(NamedTuple):
    query: np.ndarray  # (M,) query feature index
    bank: np.ndarray  # (M,) bank (region) feature index
    rank: np.ndarray  # (M,) 0 for the nearest descriptor, 1 for the second, ...


def knn_matches(query_descriptors: np.ndarray, bank_descriptors: np.ndarray, norm: str, k: int) -> Matches:
    """The `k` nearest bank descriptors of every query descriptor (brute force: at a few thousand
    features per side it beats FLANN, geometric-verification.md §1.2)."""
    cv2 = require_cv2()
    if len(query_descriptors) == 0 or len(bank_descriptors) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, empty)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if norm == NORM_HAMMING else cv2.NORM_L2)
    rows = matcher.knnMatch(descriptors_for_matching(query_descriptors, norm),
                            descriptors_for_matching(bank_descriptors, norm), k=min(k, len(bank_descriptors)))
    flat = [(m.queryIdx, m.trainIdx, rank) for row in rows for rank, m in enumerate(row)]
    array = np.array(flat, dtype=np.int64).reshape(-1, 3)
    return Matches(array[:, 0], array[:, 1], array[:, 2])


def ratio_matches(query_descriptors: np.ndarray, bank_descriptors: np.ndarray, norm: str, ratio: float) -> Matches:
    """Nearest neighbours that pass Lowe's ratio test (for the homography model, where no
    translation can be voted for). Guards OpenCV returning fewer than 2 neighbours
    (opencv/opencv-python#1040)."""
    cv2 = require_cv2()
    if len(query_descriptors) == 0 or len(bank_descriptors) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, empty)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if norm == NORM_HAMMING else cv2.NORM_L2)
    rows = matcher.knnMatch(descriptors_for_matching(query_descriptors, norm),
                            descriptors_for_matching(bank_descriptors, norm), k=2)
    kept = [(pair[0].queryIdx, pair[0].trainIdx, 0) for pair in rows
            if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance]
    array = np.array(kept, dtype=np.int64).reshape(-1, 3)
    return Matches(array[:, 0], array[:, 1], array[:, 2])


class VotePeak(NamedTuple):
    translation: np.ndarray  # (2,) metres: where the query origin (the look-at point) lands
    rotation_deg: float  # the rotation hypothesis that won (query -> bank, counter-clockwise)
    votes: float  # votes in the winning 3x3 bins
    rival_votes: float  # the best peak at least RIVAL_DISTANCE_M away (any hypothesis)
    region: int  # which of the regions the peak lies in


def rotate(xy: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation of (N, 2) east/north points."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return xy @ np.array([[c, s], [-s, c]])


def vote_translation(query_xy: np.ndarray, bank_xy: np.ndarray, regions: Sequence[Tuple[float, float, float]],
                     bin_m: float, rotations_deg: Sequence[float]) -> VotePeak:
    """The translation most matches agree on, among those that put the look-at point inside one
    of `regions` (x, y, radius): each region is voted on its own grid."""
    best = VotePeak(np.zeros(2), 0.0, 0.0, 0.0, -1)
    peaks: List[Tuple[float, np.ndarray]] = []  # (votes, translation) of each grid's top peaks
    for rotation in rotations_deg:
        translations = bank_xy - rotate(query_xy, rotation)
        for index, (cx, cy, radius) in enumerate(regions):
            inside = (translations[:, 0] - cx) ** 2 + (translations[:, 1] - cy) ** 2 <= radius * radius
            if not np.any(inside):
                continue
            for votes, translation in _grid_peaks(translations[inside], (cx - radius, cy - radius), 2.0 * radius, bin_m):
                peaks.append((votes, translation))
                if votes > best.votes:
                    best = VotePeak(translation, float(rotation), votes, 0.0, index)
    rivals = [votes for votes, translation in peaks
              if float(np.hypot(*(translation - best.translation))) >= RIVAL_DISTANCE_M]
    return best._replace(rival_votes=max(rivals, default=0.0))


def _grid_peaks(translations: np.ndarray, origin: Tuple[float, float], extent: float, bin_m: float,
                count: int = 4) -> List[Tuple[float, np.ndarray]]:
    """The `count` strongest 3x3-smoothed bins of a translation histogram, with their centres,
    each at least RIVAL_DISTANCE_M from the stronger ones."""
    cv2 = require_cv2()
    bins = max(1, math.ceil(extent / bin_m))
    index = np.clip(np.floor((translations - np.asarray(origin)) / bin_m).astype(np.int64), 0, bins - 1)
    histogram = np.bincount(index[:, 1] * bins + index[:, 0], minlength=bins * bins).astype(np.float32)
    smoothed = cv2.boxFilter(histogram.reshape(bins, bins), -1, (3, 3), normalize=False,
                             borderType=cv2.BORDER_CONSTANT)
    peaks = []
    suppress = math.ceil(RIVAL_DISTANCE_M / bin_m)
    for _ in range(count):
        row, col = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
        votes = float(smoothed[row, col])
        if votes <= 0:
            break
        centre = np.asarray(origin) + (np.array([col, row]) + 0.5) * bin_m
        peaks.append((votes, centre))
        smoothed[max(0, row - suppress): row + suppress + 1, max(0, col - suppress): col + suppress + 1] = 0
    return peaks
