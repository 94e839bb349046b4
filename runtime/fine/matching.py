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


# Distance rows computed at once in the L2 search (bounds its scratch memory to ~16 MB).
L2_BLOCK_ELEMENTS = 4_000_000


def knn_matches(query_descriptors: np.ndarray, bank_descriptors: np.ndarray, norm: str, k: int) -> Matches:
    """The `k` nearest bank descriptors of every query descriptor (exhaustive: at a few thousand
    features per side it beats FLANN, geometric-verification.md §1.2)."""
    k = min(k, len(bank_descriptors))
    if len(query_descriptors) == 0 or k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, empty)
    nearest, distance = nearest_neighbours(query_descriptors, bank_descriptors, norm, k)
    found = np.isfinite(distance.ravel())
    query_rows, rank = np.repeat(np.arange(len(nearest)), k), np.tile(np.arange(k), len(nearest))
    return Matches(query_rows[found], nearest.ravel()[found], rank[found])


def ratio_matches(query_descriptors: np.ndarray, bank_descriptors: np.ndarray, norm: str, ratio: float) -> Matches:
    """Nearest neighbours that pass Lowe's ratio test (for the homography model, where no
    translation can be voted for)."""
    if len(query_descriptors) == 0 or len(bank_descriptors) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, empty)
    nearest, distance = nearest_neighbours(query_descriptors, bank_descriptors, norm, 2)
    kept = np.flatnonzero(np.isfinite(distance[:, 1]) & (distance[:, 0] < ratio * distance[:, 1]))
    return Matches(kept, nearest[kept, 0], np.zeros(len(kept), dtype=np.int64))


def nearest_neighbours(query_descriptors: np.ndarray, bank_descriptors: np.ndarray, norm: str,
                       k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(Q, k) bank rows nearest to each query descriptor, closest first, and their distances;
    needs 1 <= k <= len(bank_descriptors)."""
    if norm == NORM_HAMMING:
        return _hamming_neighbours(query_descriptors, bank_descriptors, k)
    return _l2_neighbours(descriptors_for_matching(query_descriptors, norm),
                          descriptors_for_matching(bank_descriptors, norm), k)


def _l2_neighbours(query: np.ndarray, bank: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Squared distances as |b|^2 - 2 q.b (|q|^2 is the same along a row, so it cannot change the
    order): one BLAS matrix product, then k passes of argmin. The same neighbours as OpenCV's
    brute-force L2 matcher (tested), several times faster at the fine stage's sizes
    (bench/RESULTS.md, "Which local features")."""
    bank_norms = np.einsum("ij,ij->i", bank, bank)
    query_norms = np.einsum("ij,ij->i", query, query)
    nearest = np.empty((len(query), k), dtype=np.int64)
    squared = np.empty((len(query), k), dtype=np.float32)
    block = max(1, L2_BLOCK_ELEMENTS // len(bank))
    for start in range(0, len(query), block):
        rows = slice(start, start + block)
        distances = query[rows] @ bank.T
        distances *= -2.0
        distances += bank_norms
        row_index = np.arange(len(distances))
        for rank in range(k):
            column = distances.argmin(axis=1)
            nearest[rows, rank] = column
            squared[rows, rank] = distances[row_index, column]
            distances[row_index, column] = np.inf
    squared += query_norms[:, None]
    return nearest, np.sqrt(np.maximum(squared, 0.0))


def _hamming_neighbours(query: np.ndarray, bank: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """OpenCV's brute-force matcher, which counts bits with popcount instructions. Rows it returns
    short (opencv/opencv-python#1040) are padded with a neighbour at infinite distance."""
    cv2 = require_cv2()
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    nearest = np.zeros((len(query), k), dtype=np.int64)
    distance = np.full((len(query), k), np.inf, dtype=np.float32)
    for row in matcher.knnMatch(descriptors_for_matching(query, NORM_HAMMING),
                                descriptors_for_matching(bank, NORM_HAMMING), k=k):
        for rank, match in enumerate(row[:k]):
            nearest[match.queryIdx, rank] = match.trainIdx
            distance[match.queryIdx, rank] = match.distance
    return nearest, distance


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
