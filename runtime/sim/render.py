"""Rendering a drone's oblique view of an orthophoto (datasets-and-metrics.md §5.3).

The flat-world limits of `meanloc.runtime.geo.camera` apply (§5.8): this is an optimistic proxy
for a real oblique frame. Python 3.8 compatible and torch-free.
"""

import math
from typing import List, NamedTuple, Tuple

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import (
    CameraIntrinsics,
    Pose,
    camera_centre,
    centre_gsd,
    footprint,
    ground_homography,
)
from meanloc.runtime.geo.orthophoto import Orthophoto, require_cv2, warp


class RenderedView(NamedTuple):
    image_bgr: np.ndarray
    valid_fraction: float
    footprint_xy: np.ndarray
    camera_xy: Tuple[float, float]
    valid_mask: np.ndarray
    gsd_center_m: Tuple[float, float]  # (across, along) the optical axis at the image centre



def render_view(ortho: Orthophoto, intrinsics: CameraIntrinsics, pose: Pose, supersample: int = 2,
                bands: int = 8, max_ray_angle_deg: float = 89.0) -> RenderedView:
    """Render the oblique view of `ortho` seen from `pose` by inverse warping (§5.3).

    Anti-aliasing combines both remedies of §5.3 step 8: the image is rendered at `supersample`
    times its size in horizontal bands, each band sampled (bilinear) from the Gaussian-pyramid
    level matching its local scale (sqrt |det J| of the inverse map), then reduced with
    INTER_AREA. Validity is the nearest-neighbour warp of the orthophoto's mask.
    Raises MeanlocError if a corner ray does not hit the ground (horizon in view).
    """
    cv2 = require_cv2()
    intrinsics.validate()
    fp = footprint(intrinsics, pose, max_ray_angle_deg)
    if fp.polygon_xy is None or not fp.ok:
        raise MeanlocError("pose sees the horizon or too far ({}): lower the pitch (pitch {:.1f} + VFOV/2 {:.1f})".format(
            fp.reason, pose.pitch_deg, intrinsics.vfov_deg / 2.0))
    big = intrinsics.scaled(supersample)
    # image (corner coords) -> orthophoto pixel (corner coords)
    img_to_src = ortho.inverse @ np.linalg.inv(ground_homography(big, pose))
    pyramid = ortho.pyramid()
    rows = _band_edges(big.height, bands)
    out = np.zeros((big.height, big.width, 3), dtype=np.uint8)
    for top, bottom in zip(rows[:-1], rows[1:]):  # noqa: RUF007 - itertools.pairwise is 3.10+
        level = _pyramid_level(img_to_src, big.width / 2.0, 0.5 * (top + bottom), len(pyramid) - 1)
        to_level = np.diag([0.5 ** level, 0.5 ** level, 1.0])  # corner coords halve per pyrDown level
        shift = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, float(top)], [0.0, 0.0, 1.0]])
        out[top:bottom] = warp(pyramid[level], to_level @ img_to_src @ shift, (big.width, bottom - top),
                               cv2.INTER_LINEAR)
    valid_big = ortho.warp_valid(img_to_src, (big.width, big.height))
    if supersample > 1:
        image = cv2.resize(out, (intrinsics.width, intrinsics.height), interpolation=cv2.INTER_AREA)
        # An output pixel is valid only if all its supersamples are.
        valid = valid_big.reshape(intrinsics.height, supersample, intrinsics.width, supersample).all(axis=(1, 3))
    else:
        image, valid = out, valid_big
    image[~valid] = 0
    centre = camera_centre(pose)
    return RenderedView(image, float(valid.mean()), fp.polygon_xy, (float(centre[0]), float(centre[1])), valid,
                        centre_gsd(intrinsics, pose))


def _band_edges(height: int, bands: int) -> List[int]:
    edges = np.linspace(0, height, max(1, bands) + 1).round().astype(int)
    return sorted(set(edges.tolist()))


def _pyramid_level(img_to_src: np.ndarray, u: float, v: float, max_level: int) -> int:
    """floor(log2(source pixels per output pixel)) at image point (u, v), from the Jacobian."""

    def apply(p: Tuple[float, float]) -> np.ndarray:
        q = img_to_src @ np.array([p[0], p[1], 1.0])
        return q[:2] / q[2]

    origin = apply((u, v))
    jac = np.column_stack([apply((u + 1.0, v)) - origin, apply((u, v + 1.0)) - origin])
    scale = math.sqrt(abs(float(np.linalg.det(jac))))
    if scale <= 1.0:
        return 0
    return int(min(max_level, math.floor(math.log2(scale))))
