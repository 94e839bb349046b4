"""Robust geometric models between query and bank points, with the look-at point's covariance.

* Similarity (4 DoF) for rectified patches: `cv2.estimateAffinePartial2D` with RANSAC (it takes
  RANSAC/LMEDS only; the USAC flags are refused there, opencv/opencv#19166).
* Homography for north-up raw frames, and for rectified patches whose attitude errors (pitch,
  roll, height) leave a perspective the similarity cannot absorb: `cv2.findHomography` with plain
  RANSAC. Its USAC flags
  (>= 4.5, PR opencv/opencv#17683) were measured here on cross-date putative matches with ~20 %
  inliers: every USAC variant kept 5-9 inliers where RANSAC found the 22 true ones
  (bench/RESULTS.md, "local features").

OpenCV's inlier masks can be stale after its refinement (#25546; `estimateAffinePartial2D`
never recomputes the mask after Levenberg-Marquardt), so inliers are re-selected against the
final model and the model refitted by least squares, three times. The covariance of the look-at
point is the ordinary least-squares one on those inliers (geometric-verification.md §1.6),
which is a lower bound (it ignores attitude, terrain and georeference errors): its eigenvalues
are floored at `floor_m`².
Python 3.8 compatible, torch-free.
"""

import math
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ..geo.orthophoto import require_cv2

REFITS = 3


class GeometricFit(NamedTuple):
    model: str  # "similarity" or "homography"
    matrix: np.ndarray  # 2x3 (similarity, centred bank coordinates) or 3x3 (homography)
    look_at: np.ndarray  # (2,) where the query's centre lands, in bank metres
    covariance: np.ndarray  # (2, 2) of `look_at`, m²
    inliers: np.ndarray  # bool mask over the putative matches
    scale: float  # query-to-bank scale at the query's centre (1 for a perfect rectification); NaN if mirrored
    rotation_deg: float  # counter-clockwise rotation query -> bank at the centre; NaN if mirrored
    rms_m: float  # residual RMS on the inliers
    spread_m: float  # standard deviation of the inliers' query points along their thinnest axis

    @property
    def n_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))


def fit_similarity(src: np.ndarray, dst: np.ndarray, threshold_m: float, floor_m: float) -> Optional[GeometricFit]:
    """`src` query points (metres about the look-at point), `dst` bank points; None if no model."""
    cv2 = require_cv2()
    if len(src) < 3:
        return None
    centre = dst.mean(axis=0)
    # float32 for OpenCV, so coordinates are centred first (bank metres can be tens of km).
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), (dst - centre).astype(np.float32),
                                            method=cv2.RANSAC, ransacReprojThreshold=threshold_m, maxIters=2000,
                                            confidence=0.999, refineIters=10)
    if matrix is None:
        return None
    params = np.array([matrix[0, 0], matrix[1, 0], matrix[0, 2], matrix[1, 2]])
    target = dst - centre
    inliers = np.zeros(len(src), dtype=bool)
    for _ in range(REFITS):
        inliers = np.hypot(*(_apply_similarity(params, src) - target).T) < threshold_m
        if np.count_nonzero(inliers) < 3:
            return None
        params = np.linalg.lstsq(_similarity_jacobian(src[inliers]), target[inliers].ravel(), rcond=None)[0]
    jacobian = _similarity_jacobian(src[inliers])
    residual = target[inliers].ravel() - jacobian @ params
    dof = max(1, residual.size - 4)
    sigma2 = float(residual @ residual) / dof
    covariance = sigma2 * np.linalg.inv(jacobian.T @ jacobian)[2:, 2:]
    a, b = params[0], params[1]
    matrix = np.array([[a, -b, params[2]], [b, a, params[3]]])
    return GeometricFit("similarity", matrix, params[2:] + centre, floor_covariance(covariance, floor_m), inliers,
                        math.hypot(a, b), math.degrees(math.atan2(b, a)), math.sqrt(sigma2),
                        thinnest_spread(src[inliers]))


def _apply_similarity(params: np.ndarray, src: np.ndarray) -> np.ndarray:
    a, b, tx, ty = params
    return np.column_stack([a * src[:, 0] - b * src[:, 1] + tx, b * src[:, 0] + a * src[:, 1] + ty])


def _similarity_jacobian(src: np.ndarray) -> np.ndarray:
    """Rows [x, -y, 1, 0] and [y, x, 0, 1] per point: the model is linear in (a, b, tx, ty)."""
    n = len(src)
    jacobian = np.zeros((2 * n, 4))
    jacobian[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    jacobian[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    return jacobian


def fit_homography(src: np.ndarray, dst: np.ndarray, centre: np.ndarray, threshold_m: float,
                   floor_m: float, max_iterations: int = 10000) -> Optional[GeometricFit]:
    """`src` north-up frame pixels (or a rectified patch's metres), `dst` bank metres; the look-at
    point is where `centre` lands."""
    cv2 = require_cv2()
    if len(src) < 8:
        return None
    offset = dst.mean(axis=0)
    target = dst - offset
    # 4-point samples at ~20 % inliers need ~4000 draws for 99.9 % confidence.
    matrix, _ = cv2.findHomography(src.astype(np.float64), target, cv2.RANSAC, threshold_m, maxIters=max_iterations,
                                   confidence=0.999)
    if matrix is None or abs(matrix[2, 2]) < 1e-12:
        return None
    inliers = np.zeros(len(src), dtype=bool)
    for _ in range(REFITS):
        inliers = np.hypot(*(_apply_homography(matrix, src) - target).T) < threshold_m
        if np.count_nonzero(inliers) < 8:
            return None
        matrix, _ = cv2.findHomography(src[inliers].astype(np.float64), target[inliers], 0)
        if matrix is None:
            return None
    matrix = matrix / matrix[2, 2]
    look_at = _apply_homography(matrix, centre.reshape(1, 2))[0]
    covariance, rms = _homography_point_covariance(matrix, src[inliers], target[inliers], centre)
    scale, rotation = _local_similarity(matrix, centre)
    return GeometricFit("homography", matrix, look_at + offset, floor_covariance(covariance, floor_m), inliers,
                        scale, rotation, rms, thinnest_spread(src[inliers]))


def _local_similarity(matrix: np.ndarray, point: np.ndarray) -> Tuple[float, float]:
    """(scale, counter-clockwise rotation in degrees) of the similarity closest to the homography
    at `point`; NaN when it mirrors (frame pixels, whose rows grow south, onto the map)."""
    x, y = point
    w = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    u, v = _apply_homography(matrix, np.array([[x, y]]))[0]
    jacobian = np.array([[matrix[0, 0] - u * matrix[2, 0], matrix[0, 1] - u * matrix[2, 1]],
                         [matrix[1, 0] - v * matrix[2, 0], matrix[1, 1] - v * matrix[2, 1]]]) / w
    if np.linalg.det(jacobian) <= 0:
        return float("nan"), float("nan")
    a, b = 0.5 * (jacobian[0, 0] + jacobian[1, 1]), 0.5 * (jacobian[1, 0] - jacobian[0, 1])
    return math.hypot(a, b), math.degrees(math.atan2(b, a))


def perspective_spread(matrix: np.ndarray, reach: float) -> float:
    """How much the homography's projective scale varies over a square of half-side `reach`
    around the origin (0 for an affine map)."""
    corners = np.array([[-reach, -reach], [reach, -reach], [reach, reach], [-reach, reach]])
    w = corners @ matrix[2, :2] + matrix[2, 2]
    return float(np.max(np.abs(w / matrix[2, 2] - 1.0)))


def _apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    projected = np.column_stack([points, np.ones(len(points))]) @ matrix.T
    return projected[:, :2] / projected[:, 2:3]


def _homography_point_covariance(matrix: np.ndarray, src: np.ndarray, dst: np.ndarray, centre: np.ndarray):  # type: ignore[no-untyped-def]
    """Covariance of H(centre) by first-order propagation of the least-squares covariance of the
    8 homography parameters (h33 = 1), and the residual RMS."""
    h = matrix.ravel()[:8]

    def project_jacobian(point: np.ndarray) -> np.ndarray:
        x, y = point
        w = h[6] * x + h[7] * y + 1.0
        u = (h[0] * x + h[1] * y + h[2]) / w
        v = (h[3] * x + h[4] * y + h[5]) / w
        return np.array([[x / w, y / w, 1.0 / w, 0, 0, 0, -u * x / w, -u * y / w],
                         [0, 0, 0, x / w, y / w, 1.0 / w, -v * x / w, -v * y / w]])

    jacobian = np.vstack([project_jacobian(p) for p in src])
    residual = (dst - _apply_homography(matrix, src)).ravel()
    dof = max(1, residual.size - 8)
    sigma2 = float(residual @ residual) / dof
    try:
        parameter_cov = sigma2 * np.linalg.inv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:
        return np.eye(2) * 1e6, math.sqrt(sigma2)
    at_centre = project_jacobian(centre)
    return at_centre @ parameter_cov @ at_centre.T, math.sqrt(sigma2)


def floor_covariance(covariance: np.ndarray, floor_m: float) -> np.ndarray:
    """The same covariance with every eigenvalue raised to at least `floor_m`²."""
    symmetric = 0.5 * (covariance + covariance.T)
    values, vectors = np.linalg.eigh(symmetric)
    values = np.maximum(values, floor_m * floor_m)
    return (vectors * values) @ vectors.T


def thinnest_spread(points: np.ndarray) -> float:
    """Standard deviation of `points` along their thinnest principal axis: small when the inliers
    lie on a line or in a clump, where rotation and scale are poorly determined."""
    if len(points) < 3:
        return 0.0
    centred = points - points.mean(axis=0)
    return float(math.sqrt(max(0.0, float(np.linalg.eigvalsh(centred.T @ centred / len(points))[0]))))
