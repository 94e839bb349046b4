"""Pose-aware query views: a drone frame re-projected to a north-up ground patch.

An oblique frame shows a trapezoid that reaches far beyond the look-at point, at any heading;
a satellite tile shows a north-up square. With the attitude and height above ground that the
autopilot and gimbal report, the flat-ground homography of `camera` maps the frame onto the
square of side `side_m` centred on the look-at point, cut exactly like a bank tile. The model then
compares like with like instead of learning perspective and rotation invariance from scratch.

Used through `meanloc.runtime.query_view` (a model's recorded choice). Ground outside the frame
is black.
Python 3.8 compatible and torch-free.
"""

from typing import Any, Mapping, NamedTuple, Optional, Tuple

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


def rectify_to_ground(image: np.ndarray, attitude: CameraAttitude, side_m: float, size_px: int) -> np.ndarray:
    """The north-up `side_m` square around the look-at point, as a `size_px` square BGR image."""
    return ground_patch(image, attitude, side_m, size_px)[0]


def ground_patch(image: np.ndarray, attitude: CameraAttitude, side_m: float, size_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """(patch, valid): the north-up `side_m` square around the look-at point as a `size_px` square
    BGR image, and where it shows the frame (False outside the frame's footprint).

    The frame is first shrunk (area averaging) to about the output's ground resolution at the
    image centre, so a full-HD frame reduced to a 64 px patch does not alias.
    """
    cv2 = require_cv2()
    attitude.validate()
    height, width = image.shape[:2]
    camera = CameraIntrinsics(width, height, attitude.hfov_deg)
    pose = Pose((0.0, 0.0), attitude.altitude_m, attitude.pitch_deg, attitude.yaw_deg, attitude.roll_deg)
    shrink = min(1.0, max(centre_gsd(camera, pose)) / (side_m / size_px))
    if shrink < 0.999:
        small = (max(8, round(width * shrink)), max(8, round(height * shrink)))
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        camera = CameraIntrinsics(small[0], small[1], attitude.hfov_deg)
    metres_per_px = side_m / size_px
    # Output pixel (corner convention) -> ground metres around the look-at point, north up.
    patch_to_ground = np.array([[metres_per_px, 0.0, -side_m / 2.0],
                                [0.0, -metres_per_px, side_m / 2.0],
                                [0.0, 0.0, 1.0]])
    patch_to_image = index_mapping(ground_homography(camera, pose) @ patch_to_ground)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    patch = cv2.warpPerspective(image, patch_to_image, (size_px, size_px), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    inside = np.full(image.shape[:2], 255, dtype=np.uint8)
    valid = cv2.warpPerspective(inside, patch_to_image, (size_px, size_px), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return patch, valid > 0
