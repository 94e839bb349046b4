"""Oblique drone views of one location: pose sampling with footprint acceptance and retries.

Implements the pinned default difficulty of datasets-and-metrics.md §5.9 (altitude 150-300 m,
pitch 30-60 deg from nadir, yaw uniform, HFOV ~70 deg, roll within +-3 deg, look-at jitter
+-10 m, §5.6 appearance changes) and the acceptance rules of §5.4:

- corner rays must stay within `max_ray_angle_deg` of nadir. Only the pitch can fix that, so a
  sampled pitch above the largest feasible one (about 50 deg for a 4:3, 70 deg HFOV frame at the
  80 deg limit) is lowered to it, and the sidecar keeps both values;
- with `validity="frame"` (the synthetic world) the footprint polygon must lie on valid imagery
  and at most `max_invalid_fraction` of the rendered pixels may be invalid; with
  `validity="query"` (a user's small orthophoto) only the ground square a pose-aware query shows
  (the tile side around the look-at point) must be valid imagery, and the frame's far field may
  leave the raster (rendered black, like no-data). Otherwise resample: new yaw, then lower
  altitude, then lower pitch, up to `max_retries`, counting every rejection.

Every view records `query_coverage`: the share of that ground square the frame shows, the
number training and flight queries are compared on (`runtime.geo.rectify.ground_coverage`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import (
    CameraIntrinsics,
    Pose,
    camera_centre,
    footprint,
    footprint_inside,
    max_pitch_for,
)
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.geo.rectify import CameraAttitude, ground_coverage
from meanloc.runtime.sim.appearance import apply_appearance
from meanloc.runtime.sim.render import RenderedView, render_view

VALIDITY_MODES = ("frame", "query")


@dataclass(frozen=True)
class ViewSampling:
    """Distribution of drone poses (defaults = the pinned benchmark difficulty of §5.9)."""

    altitude_m: tuple[float, float] = (150.0, 300.0)
    pitch_deg: tuple[float, float] = (30.0, 60.0)
    yaw_deg: tuple[float, float] = (0.0, 360.0)
    roll_max_deg: float = 3.0
    target_jitter_m: float = 10.0
    hfov_deg: float = 70.0
    max_ray_angle_deg: float = 80.0
    max_invalid_fraction: float = 0.015
    max_retries: int = 30
    appearance: bool = True
    validity: str = "frame"  # what must be valid imagery: the whole "frame", or the "query" square

    def validate(self) -> None:
        if self.validity not in VALIDITY_MODES:
            raise MeanlocError(f"view validity must be one of {', '.join(VALIDITY_MODES)}, got '{self.validity}'")

    def intrinsics(self, width: int, height: int) -> CameraIntrinsics:
        return CameraIntrinsics(width, height, self.hfov_deg)

    def pitch_cap(self, intrinsics: CameraIntrinsics) -> float:
        """Largest pitch keeping every corner ray within the limit at the worst roll."""
        return max_pitch_for(intrinsics, self.max_ray_angle_deg, self.roll_max_deg)

    def reach_m(self, intrinsics: CameraIntrinsics) -> float:
        """Farthest footprint corner from the location centre over the pose space (for margins)."""
        pitch = min(self.pitch_deg[1], self.pitch_cap(intrinsics))
        worst = 0.0
        for roll in (-self.roll_max_deg, 0.0, self.roll_max_deg):
            fp = footprint(intrinsics, Pose((0.0, 0.0), self.altitude_m[1], pitch, 0.0, roll), 90.0)
            if fp.polygon_xy is not None:
                worst = max(worst, float(np.linalg.norm(fp.polygon_xy, axis=1).max()))
        return worst + self.target_jitter_m * math.sqrt(2.0)


@dataclass
class SampledView:
    view: RenderedView
    image_bgr: np.ndarray  # after appearance changes
    pose: Pose
    pitch_sampled_deg: float
    retries: int
    appearance: dict
    query_coverage: float  # share of the look-at ground square (tile side) that the frame shows


def square_on_valid_imagery(ortho: Orthophoto, centre_xy: tuple[float, float], side_m: float, samples: int = 7) -> bool:
    """True if a north-up square of `side_m` around `centre_xy` lies on valid imagery (sampled grid)."""
    offsets = np.linspace(-side_m / 2.0, side_m / 2.0, samples)
    dx, dy = np.meshgrid(offsets, offsets)
    return bool(ortho.contains_world(centre_xy[0] + dx.ravel(), centre_xy[1] + dy.ravel()).all())


def sample_view(ortho: Orthophoto, centre_xy: tuple[float, float], intrinsics: CameraIntrinsics,
                sampling: ViewSampling, pitch_cap: float, rng: np.random.Generator,
                appearance_rng: np.random.Generator, query_side_m: float = 200.0) -> SampledView | None:
    """Draw a pose around `centre_xy`, retry until accepted (§5.4), render it. None if it never fits.

    `query_side_m`: the ground square a pose-aware query shows (the tile side)."""
    s = sampling
    jitter = rng.uniform(-s.target_jitter_m, s.target_jitter_m, 2)
    target = (centre_xy[0] + float(jitter[0]), centre_xy[1] + float(jitter[1]))
    altitude = float(rng.uniform(*s.altitude_m))
    pitch_sampled = float(rng.uniform(*s.pitch_deg))
    pitch = min(pitch_sampled, pitch_cap)
    roll = float(rng.uniform(-s.roll_max_deg, s.roll_max_deg))
    yaw = float(rng.uniform(*s.yaw_deg))
    third = max(1, s.max_retries // 3)
    for attempt in range(s.max_retries + 1):
        if attempt > 0:
            yaw = float(rng.uniform(*s.yaw_deg))
            if attempt > third:
                altitude = max(s.altitude_m[0] * 0.5, altitude * 0.9)
            if attempt > 2 * third:
                pitch = max(0.0, pitch - 3.0)
        pose = Pose(target, altitude, pitch, yaw, roll)
        fp = footprint(intrinsics, pose, s.max_ray_angle_deg)
        if not fp.ok:
            continue
        if s.validity == "frame" and not footprint_inside(ortho, intrinsics, pose, fp.polygon_xy):
            continue
        if s.validity == "query" and not square_on_valid_imagery(ortho, target, query_side_m):
            continue
        view = render_view(ortho, intrinsics, pose, max_ray_angle_deg=s.max_ray_angle_deg)
        if s.validity == "frame" and 1.0 - view.valid_fraction > s.max_invalid_fraction:
            continue
        image, params = view.image_bgr, {}
        if s.appearance:
            image, params = apply_appearance(view.image_bgr, appearance_rng, view.valid_mask)
        attitude = CameraAttitude(altitude, pitch, yaw, intrinsics.hfov_deg, roll)
        coverage = ground_coverage(attitude, (intrinsics.width, intrinsics.height), query_side_m)
        return SampledView(view, image, pose, pitch_sampled, attempt, params, coverage)
    return None


def view_sidecar(ortho: Orthophoto, sampled: SampledView, intrinsics: CameraIntrinsics, seed: list[int],
                 source: str) -> dict:
    """Everything §5.4 asks to record per view, plus the appearance parameters and the seed."""
    pose = sampled.pose
    centre = camera_centre(pose)
    poly = sampled.view.footprint_xy
    f_lon, f_lat = ortho.world_to_lonlat(poly[:, 0], poly[:, 1])
    t_lon, t_lat = ortho.world_to_lonlat(*pose.target_xy)
    c_lon, c_lat = ortho.world_to_lonlat(centre[0], centre[1])
    return {
        "seed": seed,
        "source": source,
        "crs": ortho.crs,
        "camera": {"width": intrinsics.width, "height": intrinsics.height, "hfov_deg": intrinsics.hfov_deg,
                   "vfov_deg": intrinsics.vfov_deg, "focal_px": intrinsics.focal_px},
        "pose": pose.to_dict(),
        "pitch_sampled_deg": sampled.pitch_sampled_deg,
        "camera_centre_enu": [float(centre[0]), float(centre[1]), float(centre[2])],
        "camera_lonlat": [float(c_lon), float(c_lat)],
        "target_lonlat": [float(t_lon), float(t_lat)],
        "footprint_xy": poly.tolist(),
        "footprint_latlon": [[float(a), float(o)] for a, o in zip(f_lat, f_lon)],
        "valid_fraction": sampled.view.valid_fraction,
        "query_coverage": sampled.query_coverage,
        "gsd_center_m": {"across": sampled.view.gsd_center_m[0], "along": sampled.view.gsd_center_m[1]},
        "retries": sampled.retries,
        "appearance": sampled.appearance,
    }
