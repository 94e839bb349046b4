"""Pinhole drone camera over a flat ground: pose -> homography, footprint, attitude from body angles.

Follows datasets-and-metrics.md §5.2-§5.4 exactly. World frame: local ENU metres of the
orthophoto's projected CRS (x east, y north, z up), ground = plane z = 0.

Image coordinates use the corner convention like the orthophoto: (0, 0) is the outer corner of
the top-left pixel, the principal point is (W/2, H/2), pixel (i, j) is centred at (i+0.5, j+0.5).

Honest limits (§5.8): the world is flat. The homography cannot show facades, parallax,
occlusion changes or relief displacement; shadows and lighting are those of the orthophoto;
moving objects are frozen; orthophoto artefacts (roof lean, seamlines) are inherited by
every view the simulator renders with it (`meanloc.runtime.sim.render`).

Python 3.8 compatible and torch-free.
"""

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.orthophoto import Orthophoto

# Corner rays steeper than this from nadir are rejected: beyond it the far field is a few
# smeared rows per hundreds of metres, and at 90 deg the horizon is in view (§5.4).
DEFAULT_MAX_RAY_ANGLE_DEG = 80.0


class CameraIntrinsics(NamedTuple):
    """Pinhole camera, principal point at the image centre, square pixels."""

    width: int
    height: int
    hfov_deg: float

    @property
    def focal_px(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan((self.height / 2.0) / self.focal_px))

    @property
    def K(self) -> np.ndarray:
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def scaled(self, factor: int) -> "CameraIntrinsics":
        """Same field of view at `factor` times the resolution (for supersampling)."""
        return CameraIntrinsics(self.width * factor, self.height * factor, self.hfov_deg)

    def validate(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise MeanlocError("camera image size must be positive, got {}x{}".format(self.width, self.height))
        if not 1.0 <= self.hfov_deg <= 170.0:
            raise MeanlocError("horizontal field of view must be within 1..170 deg, got {}".format(self.hfov_deg))


class Pose(NamedTuple):
    """Camera pose by its look-at ground point T (metres), altitude h, pitch from nadir, yaw
    (heading of the optical axis, clockwise from north) and roll about the optical axis."""

    target_xy: Tuple[float, float]
    altitude_m: float
    pitch_deg: float
    yaw_deg: float
    roll_deg: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"target_xy": [float(self.target_xy[0]), float(self.target_xy[1])], "altitude_m": float(self.altitude_m),
                "pitch_deg": float(self.pitch_deg), "yaw_deg": float(self.yaw_deg), "roll_deg": float(self.roll_deg)}


def camera_centre(pose: Pose) -> np.ndarray:
    """C = (Tx - h tan(theta) sin(psi), Ty - h tan(theta) cos(psi), h)."""
    theta, psi = math.radians(pose.pitch_deg), math.radians(pose.yaw_deg)
    back = pose.altitude_m * math.tan(theta)
    return np.array([pose.target_xy[0] - back * math.sin(psi), pose.target_xy[1] - back * math.cos(psi),
                     pose.altitude_m])


def rotation_world_to_camera(pose: Pose) -> np.ndarray:
    """R with rows x_c (right), y_c (down), z_c (forward) expressed in world coordinates."""
    theta, psi, phi = math.radians(pose.pitch_deg), math.radians(pose.yaw_deg), math.radians(pose.roll_deg)
    z_c = np.array([math.sin(theta) * math.sin(psi), math.sin(theta) * math.cos(psi), -math.cos(theta)])
    x_c = np.array([math.cos(psi), -math.sin(psi), 0.0])
    y_c = np.cross(z_c, x_c)
    # Roll rotates the image axes about the optical axis.
    x_r = math.cos(phi) * x_c + math.sin(phi) * y_c
    y_r = -math.sin(phi) * x_c + math.cos(phi) * y_c
    return np.stack([x_r, y_r, z_c])


def ground_homography(intrinsics: CameraIntrinsics, pose: Pose) -> np.ndarray:
    """H_g = K [r1 r2 t]: ground point (x, y, 1) in metres -> image point (corner convention)."""
    rot = rotation_world_to_camera(pose)
    t = -rot @ camera_centre(pose)
    return intrinsics.K @ np.column_stack([rot[:, 0], rot[:, 1], t])


def project_ground(intrinsics: CameraIntrinsics, pose: Pose, xy: np.ndarray) -> np.ndarray:
    """Ground points (N, 2) metres -> image points (N, 2)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    uvw = ground_homography(intrinsics, pose) @ np.vstack([xy.T, np.ones(len(xy))])
    return (uvw[:2] / uvw[2]).T


def image_rays(intrinsics: CameraIntrinsics, pose: Pose, uv: np.ndarray) -> np.ndarray:
    """World directions d = R^T K^-1 (u, v, 1) of image points (N, 2), unit length."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    cam = np.linalg.inv(intrinsics.K) @ np.vstack([uv.T, np.ones(len(uv))])
    world = rotation_world_to_camera(pose).T @ cam
    return (world / np.linalg.norm(world, axis=0)).T


def image_corners(intrinsics: CameraIntrinsics) -> np.ndarray:
    """Outer image corners TL, TR, BR, BL (corner convention)."""
    w, h = float(intrinsics.width), float(intrinsics.height)
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


class Footprint(NamedTuple):
    """Ground footprint of a view. `polygon_xy` (4, 2) TL, TR, BR, BL, or None if a corner ray
    misses the ground; `max_ray_angle_deg` is the steepest corner ray's angle from nadir."""

    polygon_xy: Optional[np.ndarray]
    max_ray_angle_deg: float
    ok: bool
    reason: str


def footprint(intrinsics: CameraIntrinsics, pose: Pose,
              max_ray_angle_deg: float = DEFAULT_MAX_RAY_ANGLE_DEG) -> Footprint:
    """Intersect the four corner rays with the ground (§5.4) and check they point down enough."""
    rays = image_rays(intrinsics, pose, image_corners(intrinsics))
    angles = np.degrees(np.arccos(np.clip(-rays[:, 2], -1.0, 1.0)))
    steepest = float(angles.max())
    if np.any(rays[:, 2] >= -1e-6):
        return Footprint(None, steepest, False, "horizon in view")
    centre = camera_centre(pose)
    s = -centre[2] / rays[:, 2]
    polygon = centre[None, :2] + s[:, None] * rays[:, :2]
    if steepest > max_ray_angle_deg:
        return Footprint(polygon, steepest, False, "corner ray {:.1f} deg from nadir > {:.1f}".format(
            steepest, max_ray_angle_deg))
    return Footprint(polygon, steepest, True, "")


def max_pitch_for(intrinsics: CameraIntrinsics, max_ray_angle_deg: float = DEFAULT_MAX_RAY_ANGLE_DEG,
                  roll_deg: float = 0.0) -> float:
    """Largest pitch whose corner rays all stay within `max_ray_angle_deg` of nadir."""
    lo, hi = 0.0, 89.9
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if footprint(intrinsics, Pose((0.0, 0.0), 100.0, mid, 0.0, roll_deg), max_ray_angle_deg).ok:
            lo = mid
        else:
            hi = mid
    return lo


def footprint_inside(ortho: Orthophoto, intrinsics: CameraIntrinsics, pose: Pose, polygon_xy: np.ndarray,
                     samples: int = 12) -> bool:
    """True if the footprint lies inside the raster and a grid of ground points in it is valid."""
    cols, rows = ortho.world_to_pixel(polygon_xy[:, 0], polygon_xy[:, 1])
    if cols.min() < 0 or rows.min() < 0 or cols.max() > ortho.width or rows.max() > ortho.height:
        return False
    u = (np.arange(samples) + 0.5) * intrinsics.width / samples
    v = (np.arange(samples) + 0.5) * intrinsics.height / samples
    grid = np.stack(np.meshgrid(u, v), axis=-1).reshape(-1, 2)
    h_inv = np.linalg.inv(ground_homography(intrinsics, pose))
    xyw = h_inv @ np.vstack([grid.T, np.ones(len(grid))])
    xy = xyw[:2] / xyw[2]
    return bool(ortho.contains_world(xy[0], xy[1]).all())


def centre_gsd(intrinsics: CameraIntrinsics, pose: Pose) -> Tuple[float, float]:
    """GSD at the image centre: slant D = h / cos(theta); D/f across, D/(f cos(theta)) along."""
    cos_t = math.cos(math.radians(pose.pitch_deg))
    slant = pose.altitude_m / cos_t
    return slant / intrinsics.focal_px, slant / (intrinsics.focal_px * cos_t)


def _rotation_zyx(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """Body (forward, right, down) -> NED rotation of aerospace ZYX Euler angles (MAVLink ATTITUDE)."""
    r, p, y = (math.radians(v) for v in (roll_deg, pitch_deg, yaw_deg))
    rz = np.array([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0], [-math.sin(p), 0.0, math.cos(p)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(r), -math.sin(r)], [0.0, math.sin(r), math.cos(r)]])
    return rz @ ry @ rx


def camera_attitude_from_body(roll_deg: float, pitch_deg: float, yaw_deg: float,
                              tilt_from_nadir_deg: float) -> Tuple[float, float, float]:
    """(heading, pitch from nadir, roll about the optical axis) of a camera fixed to the airframe.

    The camera looks forward-down, `tilt_from_nadir_deg` from the body's down axis in its
    forward-down plane. The vehicle's roll (a bank in a turn) swings its optical axis sideways and
    rotates the image, its pitch tilts it towards the horizon: this composes the full rotation
    instead of adding angles, so `rectify_to_ground` sees the camera as it really points."""
    tau = math.radians(tilt_from_nadir_deg)
    body_to_ned = _rotation_zyx(roll_deg, pitch_deg, yaw_deg)
    forward = body_to_ned @ np.array([math.sin(tau), 0.0, math.cos(tau)])
    right = body_to_ned @ np.array([0.0, 1.0, 0.0])

    def enu(v: np.ndarray) -> np.ndarray:
        return np.array([v[1], v[0], -v[2]])

    z_c, x_a = enu(forward), enu(right)
    pitch = math.degrees(math.acos(max(-1.0, min(1.0, -z_c[2]))))
    heading = math.degrees(math.atan2(z_c[0], z_c[1])) % 360.0
    psi = math.radians(heading)
    x_c = np.array([math.cos(psi), -math.sin(psi), 0.0])
    y_c = np.cross(z_c, x_c)
    roll = math.degrees(math.atan2(float(x_a @ y_c), float(x_a @ x_c)))
    return heading, pitch, roll
