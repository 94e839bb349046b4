"""Pose-aware query views: a drone frame re-projected to a north-up ground patch.

An oblique frame shows a trapezoid that reaches far beyond the look-at point, at any heading;
a satellite tile shows a north-up square. With the attitude and height above ground that the
autopilot and gimbal report, the flat-ground homography of `camera` maps the frame onto the
square of side `side_m` centred on the look-at point, cut exactly like a bank tile. The model then
compares like with like instead of learning perspective and rotation invariance from scratch.

Used through `meanloc.runtime.query_view` (a model's recorded choice, which also says how ground
outside the frame is filled). The camera's roll is part of the homography, so a banked body-fixed
camera or a gimbal's residual roll is rectified exactly like pitch and heading.
Python 3.8 compatible and torch-free.
"""

from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from .camera import CameraIntrinsics, Pose, centre_gsd, ground_homography
from .orthophoto import index_mapping, require_cv2


class CameraAttitude(NamedTuple):
    """What the vehicle knows about one frame: height above ground, camera pitch from nadir,
    heading of the optical axis (clockwise from north), roll, and the lens's horizontal FOV."""

    altitude_m: float
    pitch_deg: float
    yaw_deg: float
    hfov_deg: Optional[float]  # None: unknown (enough for the look-at offset, not for rectifying)
    roll_deg: float = 0.0

    def validate(self) -> None:
        if not self.altitude_m > 0:
            raise MeanlocError("pose-aware query: altitude above ground must be positive, got {}".format(self.altitude_m))
        if not 0.0 <= self.pitch_deg < 85.0:
            raise MeanlocError("pose-aware query: camera pitch from nadir must be within 0..85 deg, got {}".format(
                self.pitch_deg))
        if self.hfov_deg is None or not 1.0 <= self.hfov_deg <= 170.0:
            raise MeanlocError("pose-aware query: horizontal FOV must be within 1..170 deg, got {}".format(self.hfov_deg))

    @classmethod
    def from_view_sidecar(cls, payload: Mapping[str, Any], source: str) -> "CameraAttitude":
        """From a synthetic view's JSON sidecar (`camera.hfov_deg`, `pose.*`)."""
        try:
            pose, camera = payload["pose"], payload["camera"]
            return cls(float(pose["altitude_m"]), float(pose["pitch_deg"]), float(pose["yaw_deg"]),
                       float(camera["hfov_deg"]), float(pose.get("roll_deg", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise MeanlocError("{}: view sidecar lacks the camera pose ({})".format(source, exc)) from None


def _patch_to_image(camera: CameraIntrinsics, pose: Pose, side_m: float, size_px: int) -> np.ndarray:
    """Output patch pixel (corner convention) -> frame pixel: north-up ground metres around the look-at point."""
    metres_per_px = side_m / size_px
    patch_to_ground = np.array([[metres_per_px, 0.0, -side_m / 2.0],
                                [0.0, -metres_per_px, side_m / 2.0],
                                [0.0, 0.0, 1.0]])
    return ground_homography(camera, pose) @ patch_to_ground


def _pose(attitude: CameraAttitude) -> Pose:
    return Pose((0.0, 0.0), attitude.altitude_m, attitude.pitch_deg, attitude.yaw_deg, attitude.roll_deg)


def rectify_to_ground(image: np.ndarray, attitude: CameraAttitude, side_m: float, size_px: int,
                      fill_bgr: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The north-up `side_m` square around the look-at point, as a `size_px` square BGR image;
    ground the frame does not show gets `fill_bgr`."""
    return ground_patch(image, attitude, side_m, size_px, fill_bgr)[0]


def ground_patch(image: np.ndarray, attitude: CameraAttitude, side_m: float, size_px: int,
                 fill_bgr: Sequence[float] = (0.0, 0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray]:
    """(patch, valid): the north-up `side_m` square around the look-at point as a `size_px` square
    BGR image, and where it shows the frame (False where it got `fill_bgr`).

    The frame is first shrunk (area averaging) to about the output's ground resolution at the
    image centre, so a full-HD frame reduced to a 64 px patch does not alias.
    """
    cv2 = require_cv2()
    attitude.validate()
    height, width = image.shape[:2]
    camera = CameraIntrinsics(width, height, attitude.hfov_deg)
    pose = _pose(attitude)
    shrink = min(1.0, max(centre_gsd(camera, pose)) / (side_m / size_px))
    if shrink < 0.999:
        small = (max(8, round(width * shrink)), max(8, round(height * shrink)))
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        camera = CameraIntrinsics(small[0], small[1], attitude.hfov_deg)
    # OpenCV samples at integer pixel centres; the geometry uses the corner convention.
    patch_to_image = index_mapping(_patch_to_image(camera, pose, side_m, size_px))
    patch = cv2.warpPerspective(image, patch_to_image, (size_px, size_px), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill_bgr))
    inside = np.full(image.shape[:2], 255, dtype=np.uint8)
    valid = cv2.warpPerspective(inside, patch_to_image, (size_px, size_px), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return patch, valid > 0


def ground_coverage(attitude: CameraAttitude, frame_size: Tuple[int, int], side_m: float, samples: int = 32) -> float:
    """Share of the north-up `side_m` square around the look-at point that the frame shows.

    The same geometry as `rectify_to_ground` (sample points at the patch's pixel centres), without
    the image: training data, flights and the loop can all report it. `frame_size` = (width, height).
    """
    attitude.validate()
    camera = CameraIntrinsics(int(frame_size[0]), int(frame_size[1]), attitude.hfov_deg)
    centres = (np.arange(samples) + 0.5)
    u, v = np.meshgrid(centres, centres)
    points = _patch_to_image(camera, _pose(attitude), side_m, samples) @ np.vstack(
        [u.ravel(), v.ravel(), np.ones(u.size)])
    ahead = points[2] > 0
    x = points[0] / np.where(ahead, points[2], 1.0)
    y = points[1] / np.where(ahead, points[2], 1.0)
    inside = ahead & (x >= 0) & (y >= 0) & (x <= camera.width) & (y <= camera.height)
    return float(inside.mean())
