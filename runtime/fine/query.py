"""A drone frame's local features, in the form the matcher needs.

* With the full attitude (height above ground, pitch, heading, lens FOV) the frame is rectified
  into a north-up ground patch around its look-at point at the feature layer's metres per pixel,
  so query and bank features differ by a 4-DoF similarity close to the identity: feature
  positions are metres east/north of the look-at point, which is where the fitted model puts
  the origin (the "similarity" model).
* With only the heading, the frame is turned north-up and its features stay in pixels; a
  homography maps them to the ground (the "homography" model), the look-at point being where the
  frame centre lands.
* Without a heading there is no fine stage: the layer's descriptors are upright.
Python 3.8 compatible, torch-free.
"""

import math
from typing import NamedTuple, Optional

import numpy as np

from ..features.extract import FeatureExtractor, LocalFeatures
from ..geo.orthophoto import require_cv2
from ..geo.rectify import CameraAttitude, ground_patch

SIMILARITY = "similarity"
HOMOGRAPHY = "homography"
# The patch spans the ground width the lens sees at the look-at point, within these bounds: the
# near and middle field, where the frame is sharp; the far field of an oblique view is smeared.
MIN_PATCH_SIDE_M = 60.0
MAX_PATCH_SIDE_M = 300.0


class QueryFeatures(NamedTuple):
    model: str  # SIMILARITY or HOMOGRAPHY
    xy: np.ndarray  # (N, 2): metres east/north of the look-at point, or north-up frame pixels
    size: np.ndarray  # (N,) keypoint diameter in the same unit
    descriptors: np.ndarray  # (N, D) uint8
    centre: np.ndarray  # (2,): the point whose ground position is the look-at point
    reach_m: Optional[float]  # how far from the look-at point the features lie (None: unknown)

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.xy.shape[0])


def patch_side_m(attitude: CameraAttitude) -> float:
    """Ground width across the optical axis at the look-at point, clamped."""
    slant = attitude.altitude_m / math.cos(math.radians(attitude.pitch_deg))
    width = 2.0 * slant * math.tan(math.radians(float(attitude.hfov_deg)) / 2.0)
    return float(min(MAX_PATCH_SIDE_M, max(MIN_PATCH_SIDE_M, width)))


def rectified_query(image: np.ndarray, attitude: CameraAttitude, gsd_m: float, extractor: FeatureExtractor,
                    max_features: int) -> QueryFeatures:
    side = patch_side_m(attitude)
    size_px = max(16, round(side / gsd_m))
    side = size_px * gsd_m
    patch, valid = ground_patch(image, attitude, side, size_px)
    features = _strongest(extractor.detect_and_describe(patch, _shrink(valid)), max_features)
    # Patch pixels (corner convention) -> metres around the look-at point, y north.
    xy = np.column_stack([features.xy[:, 0] * gsd_m - side / 2.0, side / 2.0 - features.xy[:, 1] * gsd_m])
    return QueryFeatures(SIMILARITY, xy, features.size * gsd_m, features.descriptors, np.zeros(2),
                         side / math.sqrt(2.0))


def north_up_query(image: np.ndarray, heading_deg: float, extractor: FeatureExtractor, max_features: int) -> QueryFeatures:
    cv2 = require_cv2()
    height, width = image.shape[:2]
    theta = math.radians(heading_deg)
    out_w = math.ceil(abs(width * math.cos(theta)) + abs(height * math.sin(theta)))
    out_h = math.ceil(abs(width * math.sin(theta)) + abs(height * math.cos(theta)))
    # cv2 angles are counter-clockwise: turning clockwise by the heading brings north to the top.
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), -heading_deg, 1.0)
    matrix[:, 2] += (out_w - width) / 2.0, (out_h - height) / 2.0
    turned = cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpAffine(np.full((height, width), 255, np.uint8), matrix, (out_w, out_h), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT) > 0
    features = _strongest(extractor.detect_and_describe(turned, _shrink(valid)), max_features)
    return QueryFeatures(HOMOGRAPHY, features.xy.astype(np.float64), features.size.astype(np.float64),
                         features.descriptors, np.array([out_w / 2.0, out_h / 2.0]), None)


def _shrink(valid: np.ndarray) -> np.ndarray:
    """Keep detections a few pixels inside the footprint: its edge is artificial contrast."""
    cv2 = require_cv2()
    return cv2.erode(valid.view(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)


def _strongest(features: LocalFeatures, count: int) -> LocalFeatures:
    if len(features) <= count:
        return features
    return features.take(np.sort(np.argsort(-features.response, kind="stable")[:count]))
