"""Synthetic flight sequences over an orthophoto and a noisy position prior (§5.5, §4.3).

A flight is a straight or lawn-mower track flown at constant speed, one frame per `1/fps`
seconds, the camera heading along the track at a fixed pitch. The per-frame truth is the
look-at ground point T (what the localizer estimates); the vehicle position (camera centre
below the drone) is recorded as well. Placement is retried until every frame's footprint
lies on valid imagery.

The prior simulates dead reckoning: a slowly wandering velocity error of about `drift_mps`
integrated over time, plus occasional injected jumps (resets to a wrong place), to exercise
the search window and the filter.

Flat-world limits (§5.8) apply to every rendered frame; see `camera`.
Python 3.8 compatible and torch-free.
"""

import math
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import CameraIntrinsics, Pose, footprint, footprint_inside
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.sim.appearance import apply_appearance
from meanloc.runtime.sim.render import render_view

PATTERNS = ("straight", "lawnmower")
DEFAULT_INTRINSICS = CameraIntrinsics(640, 480, 70.0)


class FramePose(NamedTuple):
    index: int
    t: float
    pose: Pose
    target_lonlat: Tuple[float, float]
    vehicle_xy: Tuple[float, float]
    heading_deg: float

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "t": self.t, "pose": self.pose.to_dict(),
                "target_lonlat": list(self.target_lonlat), "vehicle_xy": list(self.vehicle_xy),
                "heading_deg": self.heading_deg}


class FlightPlan(List[FramePose]):
    """The frames of a flight (a list), plus the continuous track they were sampled from, so
    telemetry can be simulated at its own rate between frames (`pose_at`)."""

    def __init__(self, frames: Sequence[FramePose], track: np.ndarray, speed_mps: float, altitude_m: float,
                 pitch_deg: float) -> None:
        super().__init__(frames)
        self.track = track
        self.speed_mps = speed_mps
        self.altitude_m = altitude_m
        self.pitch_deg = pitch_deg

    def pose_at(self, times: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vehicle xy (N, 2), heading deg (N,), look-at xy (N, 2)) at any times of the flight."""
        vehicle, heading = _sample_track(self.track, self.speed_mps * np.asarray(times, dtype=np.float64))
        psi = np.radians(heading)
        ahead = self.altitude_m * math.tan(math.radians(self.pitch_deg))
        return vehicle, heading, vehicle + ahead * np.stack([np.sin(psi), np.cos(psi)], axis=1)


class PriorFix(NamedTuple):
    t: float
    target_xy: Tuple[float, float]
    vehicle_xy: Tuple[float, float]
    error_m: float
    jumped: bool


def _waypoints(pattern: str, length_m: float, leg_m: float, spacing_m: float) -> np.ndarray:
    """Track in a local frame starting at the origin heading north (+y)."""
    if pattern == "straight":
        return np.array([[0.0, 0.0], [0.0, length_m]])
    points = [[0.0, 0.0]]
    x, y, direction = 0.0, 0.0, 1.0
    travelled = 0.0
    while travelled < length_m:
        y += direction * leg_m
        points.append([x, y])
        x += spacing_m
        points.append([x, y])
        travelled += leg_m + spacing_m
        direction = -direction
    return np.array(points)


def _sample_track(waypoints: np.ndarray, distances: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Positions (N, 2) and headings (deg clockwise from north) at arc lengths `distances`."""
    seg = np.diff(waypoints, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    idx = np.clip(np.searchsorted(cum, distances, side="right") - 1, 0, len(seg) - 1)
    frac = (distances - cum[idx]) / np.maximum(seg_len[idx], 1e-9)
    pos = waypoints[idx] + frac[:, None] * seg[idx]
    heading = np.degrees(np.arctan2(seg[idx, 0], seg[idx, 1])) % 360.0
    return pos, heading


def _square_valid(ortho: Orthophoto, centre: Tuple[float, float], side_m: float, samples: int = 5) -> bool:
    offsets = np.linspace(-side_m / 2.0, side_m / 2.0, samples)
    dx, dy = np.meshgrid(offsets, offsets)
    return bool(ortho.contains_world(centre[0] + dx.ravel(), centre[1] + dy.ravel()).all())


def fit_leg_m(area_size: Tuple[float, float], ahead_m: float, reach_m: float, spacing_m: float,
              leg_m: Optional[float]) -> float:
    """The lawnmower leg: as asked, or (None) the longest that fits the area with the look-ahead
    and the footprint's reach on both ends (at most 600 m)."""
    if leg_m is not None:
        return leg_m
    usable = max(area_size) - 2.0 * (ahead_m + reach_m)
    return float(min(600.0, max(spacing_m, usable)))


def plan_flight(ortho: Orthophoto, n_frames: int, speed_mps: float = 10.0, altitude_m: float = 200.0,
                pitch_deg: float = 40.0, seed: int = 0, pattern: str = "straight",
                intrinsics: Optional[CameraIntrinsics] = None, fps: float = 1.0, leg_m: Optional[float] = None,
                spacing_m: float = 150.0, attempts: int = 200,
                area: Optional[Tuple[float, float, float, float]] = None,
                query_side_m: Optional[float] = None) -> FlightPlan:
    """Place a track of `n_frames` frames on `ortho` so every frame sees valid imagery.

    `area` (min_x, min_y, max_x, max_y in the orthophoto's CRS) keeps every look-at point inside
    it, e.g. to fly only over ground held out from training. `query_side_m`: only the ground square
    of that side around each look-at point must be valid imagery (what a pose-aware model uses;
    the far field may leave a small orthophoto and is rendered black); None: the whole footprint.
    `leg_m` None fits the lawnmower's legs to the area. A plan that cannot fit is refused with the
    constraint that failed and its numbers.
    """
    if pattern not in PATTERNS:
        raise MeanlocError("unknown flight pattern '{}' (choose {})".format(pattern, ", ".join(PATTERNS)))
    if n_frames < 1 or speed_mps <= 0 or fps <= 0 or altitude_m <= 0:
        raise MeanlocError("flight needs n_frames >= 1 and positive speed, fps and altitude")
    intrinsics = intrinsics or DEFAULT_INTRINSICS
    intrinsics.validate()
    probe = footprint(intrinsics, Pose((0.0, 0.0), altitude_m, pitch_deg, 0.0))
    if not probe.ok:
        raise MeanlocError("camera sees too far: pitch {:.1f} deg + half the vertical FOV {:.1f} deg puts a corner ray "
                           "{:.1f} deg from nadir (limit 80; {}x{} px frame, HFOV {:g} deg); lower --flight-pitch or "
                           "--flight-hfov".format(pitch_deg, intrinsics.vfov_deg / 2.0, probe.max_ray_angle_deg,
                                                  intrinsics.width, intrinsics.height, intrinsics.hfov_deg))
    rng = np.random.default_rng(seed)
    times = np.arange(n_frames) / fps
    min_x, min_y, max_x, max_y = area if area is not None else ortho.bounds_world()
    ahead = altitude_m * math.tan(math.radians(pitch_deg))
    # How far valid ground must extend around a look-at point.
    reach = float(np.linalg.norm(probe.polygon_xy, axis=1).max()) if query_side_m is None else query_side_m / 2.0 * math.sqrt(2)
    leg = fit_leg_m((max_x - min_x, max_y - min_y), ahead, reach if area is None else 0.0, spacing_m, leg_m)
    local = _waypoints(pattern, speed_mps * times[-1] + 1e-6, leg, spacing_m)
    failures = {"track": 0, "area": 0, "imagery": 0}
    for _ in range(attempts):
        angle = math.radians(rng.uniform(0.0, 360.0))
        rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        # Place the rotated track so its whole bounding box (plus the look-ahead) lies in the area.
        rotated = local @ rot.T
        low = np.array([min_x, min_y]) + ahead - rotated.min(axis=0)
        high = np.array([max_x, max_y]) - ahead - rotated.max(axis=0)
        if np.any(low > high):
            failures["track"] += 1
            continue
        track = rotated + rng.uniform(low, high)
        vehicle, heading = _sample_track(track, speed_mps * times)
        psi = np.radians(heading)
        targets = vehicle + ahead * np.stack([np.sin(psi), np.cos(psi)], axis=1)
        if area is not None and not _inside(targets, area):
            failures["area"] += 1
            continue
        poses = [Pose((float(x), float(y)), altitude_m, pitch_deg, float(h)) for (x, y), h in zip(targets, heading)]
        if query_side_m is None:
            fits = all(footprint_inside(ortho, intrinsics, p, footprint(intrinsics, p).polygon_xy, samples=4) for p in poses)
        else:
            fits = all(_square_valid(ortho, p.target_xy, query_side_m) for p in poses)
        if fits:
            lon, lat = ortho.world_to_lonlat(targets[:, 0], targets[:, 1])
            return FlightPlan([FramePose(i, float(times[i]), poses[i], (float(lon[i]), float(lat[i])),
                                         (float(vehicle[i, 0]), float(vehicle[i, 1])), float(heading[i]))
                               for i in range(n_frames)], track, speed_mps, altitude_m, pitch_deg)
        failures["imagery"] += 1
    raise MeanlocError(_why_no_flight(failures, local, (max_x - min_x, max_y - min_y), area is not None, pattern,
                                      n_frames, speed_mps, leg, spacing_m, ahead, reach, altitude_m, pitch_deg,
                                      intrinsics, query_side_m))


def _why_no_flight(failures: Dict[str, int], local: np.ndarray, size: Tuple[float, float], is_area: bool, pattern: str,
                   n_frames: int, speed_mps: float, leg_m: float, spacing_m: float, ahead: float, reach: float,
                   altitude_m: float, pitch_deg: float, intrinsics: CameraIntrinsics,
                   query_side_m: Optional[float]) -> str:
    """Name the constraint that failed most often, with its numbers."""
    what = "flight area" if is_area else "orthophoto"
    width, height = size
    extent = local.max(axis=0) - local.min(axis=0)
    track = ("a {} of {} frames at {:g} m/s ({:.0f} m of track{}) spans {:.0f} x {:.0f} m".format(
        pattern, n_frames, speed_mps, speed_mps * (n_frames - 1),
        ", legs {:.0f} m, {:.0f} m apart".format(leg_m, spacing_m) if pattern == "lawnmower" else "",
        min(extent), max(extent)))
    camera = "altitude {:g} m, pitch {:g} deg, HFOV {:g} deg".format(altitude_m, pitch_deg, intrinsics.hfov_deg)
    worst = max(failures, key=lambda key: failures[key])
    if worst == "track":
        return ("{} ({:.0f} x {:.0f} m) is shorter than the track: {} and the look-at point runs {:.0f} m ahead of "
                "the vehicle ({}), so it needs {:.0f} x {:.0f} m; fly fewer --frames, slower, or a lawnmower with "
                "shorter legs (--flight-leg-m)".format(what, width, height, track, ahead, camera,
                                                       min(extent) + 2 * ahead, max(extent) + 2 * ahead))
    if worst == "area":
        return ("no placement of the track keeps every look-at point inside the {} ({:.0f} x {:.0f} m): {}; fly fewer "
                "--frames or widen --flight-area".format(what, width, height, track))
    need = ("the {:g} m ground square around each look-at point".format(query_side_m) if query_side_m is not None
            else "the whole footprint (reaching {:.0f} m from the look-at point; {})".format(reach, camera))
    return ("the footprint leaves the raster or its valid imagery: {} must lie on valid imagery of the {} ({:.0f} x "
            "{:.0f} m), and no placement of the track ({}) managed it in {} tries; lower --flight-altitude or "
            "--flight-pitch, narrow --flight-hfov, or fly fewer --frames".format(
                need, what, width, height, track, sum(failures.values())))


def _inside(points: np.ndarray, area: Tuple[float, float, float, float]) -> bool:
    min_x, min_y, max_x, max_y = area
    return bool(np.all((points[:, 0] >= min_x) & (points[:, 0] <= max_x) & (points[:, 1] >= min_y) & (points[:, 1] <= max_y)))


def render_flight(ortho: Orthophoto, plan: Sequence[FramePose], intrinsics: Optional[CameraIntrinsics] = None,
                  seed: int = 0, appearance: bool = True) -> Iterator[Tuple[FramePose, np.ndarray]]:
    """Yield (frame pose, BGR frame) for each planned frame, with §5.6 effects if `appearance`."""
    intrinsics = intrinsics or DEFAULT_INTRINSICS
    for frame in plan:
        view = render_view(ortho, intrinsics, frame.pose)
        image = view.image_bgr
        if appearance:
            image, _ = apply_appearance(image, np.random.default_rng([seed, frame.index]), view.valid_mask)
        yield frame, image


def simulate_prior(plan: Sequence[FramePose], drift_mps: float = 2.0, jump_every: int = 60, jump_m: float = 150.0,
                   seed: int = 0) -> List[PriorFix]:
    """Dead-reckoning prior: truth + integrated wandering velocity error + injected jumps.

    The velocity error keeps magnitude ~`drift_mps` and turns slowly (random walk of its
    direction); a jump of `jump_m` in a random direction happens on average every `jump_every`
    frames (0 disables jumps) and persists, like a dead-reckoning reset to a wrong fix.
    """
    rng = np.random.default_rng(seed)
    error = np.zeros(2)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    fixes = []  # type: List[PriorFix]
    previous_t = plan[0].t if plan else 0.0
    for frame in plan:
        dt = frame.t - previous_t
        previous_t = frame.t
        direction += rng.normal(0.0, 0.05) * math.sqrt(max(dt, 0.0))  # a bias that turns slowly
        error += drift_mps * dt * np.array([math.sin(direction), math.cos(direction)])
        jumped = bool(jump_every > 0 and frame.index > 0 and rng.uniform() < 1.0 / jump_every)
        if jumped:
            angle = rng.uniform(0.0, 2.0 * math.pi)
            error += jump_m * np.array([math.sin(angle), math.cos(angle)])
        tx, ty = frame.pose.target_xy
        vx, vy = frame.vehicle_xy
        fixes.append(PriorFix(frame.t, (tx + error[0], ty + error[1]), (vx + error[0], vy + error[1]),
                              float(np.hypot(*error)), jumped))
    return fixes
