"""A synthetic flight as a frame source: frames rendered from a georeferenced orthophoto, with the
attitude and height a real vehicle's sensors would report.

Each frame carries its truth, the look-at ground point at the image centre (what retrieval
localises, §4.2 of datasets-and-metrics.md), and a simulated dead-reckoning prior with drift and
injected jumps (§5.5). Planning, rendering and the sensor and terrain models are the simulator's
(`meanloc.runtime.sim`); this module is the onboard code's only door to it, so it also hands the
localize command the sensor presets.

Sensor realism (`SensorNoise`, `--sensor-noise PRESET`): frames are rendered with the *true* pose
but carry the attitude the sensors report:

- the autopilot streams its attitude at `telemetry_hz` (MAVLink ATTITUDE: 10-50 Hz), each sample
  the truth at its own time plus errors; the frame gets those samples interpolated to its
  timestamp (`telemetry.AttitudeHistory`), as the onboard stamping does, so turns between samples
  cost what they cost a real vehicle;
- heading: a constant bias (magnetometer calibration) plus a slowly wandering error;
- pitch and roll: slowly wandering errors; the true camera roll is 0 (a stabilised gimbal) but the
  reported one is not;
- height: the barometer's altitude has a bias and slowly wandering noise. Over terrain
  (`terrain_relief_m`, or a DEM given as `terrain_dem`) the frame reports its height above the
  take-off point, which is wrong by the terrain's relief; `altitude_amsl_m` carries the barometric
  altitude for `meanloc localize --dem` (`terrain_height.py`) to correct it.

Python 3.8 compatible (needs rasterio/pyproj for GeoTIFFs).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..sim.sensors import SENSOR_PRESETS, SensorNoise, gauss_markov, sensor_preset
from .frames import Frame, FrameSource
from .telemetry import AttitudeHistory

# The synthetic: source's public face: onboard code needs nothing else from the simulator.
__all__ = ["SENSOR_PRESETS", "SensorNoise", "SyntheticFlightOptions", "SyntheticFlightSource", "sensor_preset"]


@dataclass(frozen=True)
class SyntheticFlightOptions:
    frames: int = 100
    speed_mps: float = 10.0
    altitude_m: float = 150.0
    pitch_deg: float = 0.0
    pattern: str = "lawnmower"
    seed: int = 0
    fps: float = 1.0
    prior_drift_mps: float = 2.0
    prior_jump_every: int = 0
    prior_jump_m: float = 300.0
    appearance: bool = True
    # (lat_min, lon_min, lat_max, lon_max): every look-at point stays inside (None: anywhere)
    area_latlon: Optional[Tuple[float, float, float, float]] = None
    hfov_deg: float = 70.0
    frame_size: Tuple[int, int] = (640, 480)
    leg_m: Optional[float] = None  # lawnmower leg (None: fitted to the area)
    # Only this ground square around each look-at point must be valid imagery (a pose-aware model's
    # query side); None: the whole footprint.
    query_side_m: Optional[float] = None
    sensor: SensorNoise = SENSOR_PRESETS["ideal"]
    telemetry_hz: float = 20.0
    terrain_relief_m: float = 0.0  # synthetic rolling hills under the flight (0: flat)
    terrain_dem: Optional[str] = None  # or the true terrain from this DEM GeoTIFF


class SyntheticFlightSource(FrameSource):
    def __init__(self, ortho_path: str, options: SyntheticFlightOptions) -> None:
        super().__init__()
        from ..geo.camera import CameraIntrinsics
        from ..geo.orthophoto import Orthophoto
        from ..sim.flight import plan_flight, simulate_prior

        if not Path(ortho_path).is_file():
            raise MeanlocError("synthetic flight: orthophoto not found: {}".format(ortho_path))
        if options.telemetry_hz <= 0:
            raise MeanlocError("synthetic flight: telemetry rate must be positive, got {} Hz".format(options.telemetry_hz))
        self.options = options
        self.ortho = Orthophoto.from_geotiff(ortho_path)
        self.intrinsics = CameraIntrinsics(int(options.frame_size[0]), int(options.frame_size[1]), options.hfov_deg)
        self.plan = plan_flight(self.ortho, options.frames, speed_mps=options.speed_mps, altitude_m=options.altitude_m,
                                pitch_deg=options.pitch_deg, seed=options.seed, pattern=options.pattern, fps=options.fps,
                                area=self._area_world(options.area_latlon), intrinsics=self.intrinsics,
                                leg_m=options.leg_m, query_side_m=options.query_side_m)
        self.priors = simulate_prior(self.plan, drift_mps=options.prior_drift_mps, jump_every=options.prior_jump_every,
                                     jump_m=options.prior_jump_m, seed=options.seed + 1)
        self.terrain = self._terrain()
        self.reported = self._reported_attitude()
        self.description = "synthetic flight over {} ({}{})".format(
            ortho_path, options.sensor.describe(),
            "" if self.terrain is None else ", terrain from " + self.terrain.source)

    def _area_world(self, area_latlon: Optional[Tuple[float, float, float, float]]) -> Optional[Tuple[float, float, float, float]]:
        """The lat/lon box as the box in the orthophoto's CRS spanned by its four corners."""
        if area_latlon is None:
            return None
        lat_min, lon_min, lat_max, lon_max = area_latlon
        x, y = self.ortho.lonlat_to_world(np.array([lon_min, lon_max, lon_max, lon_min]),
                                          np.array([lat_min, lat_min, lat_max, lat_max]))
        return float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y))

    def _terrain(self):  # type: ignore[no-untyped-def]
        from ..geo.terrain import Terrain
        from ..sim.terrain import synthetic_terrain

        if self.options.terrain_dem:
            terrain = Terrain.from_geotiff(self.options.terrain_dem)
            if terrain.crs != self.ortho.crs:
                raise MeanlocError("synthetic flight: the DEM is in {} but the orthophoto in {}; reproject the DEM".format(
                    terrain.crs, self.ortho.crs))
            return terrain
        if self.options.terrain_relief_m > 0:
            return synthetic_terrain(self.ortho.bounds_world(), self.ortho.crs, self.options.terrain_relief_m,
                                     self.options.seed)
        return None

    def _reported_attitude(self) -> List[Tuple[float, float, float, float, Optional[float]]]:
        """Per frame: (heading, pitch, roll, height above ground as reported, barometric altitude AMSL)."""
        options, noise, plan = self.options, self.options.sensor, self.plan
        rng = np.random.default_rng([options.seed, 77])
        duration = plan[-1].t if plan else 0.0
        times = np.arange(0.0, duration + 1.0 / options.telemetry_hz + 1e-9, 1.0 / options.telemetry_hz)
        _, true_heading, _ = plan.pose_at(times)
        heading = true_heading + noise.heading_bias_deg + gauss_markov(times, noise.heading_sigma_deg,
                                                                       noise.correlation_s, rng)
        pitch = plan.pitch_deg + gauss_markov(times, noise.pitch_sigma_deg, noise.correlation_s, rng)
        roll = gauss_markov(times, noise.roll_sigma_deg, noise.correlation_s, rng)
        baro_error = noise.height_bias_m + gauss_markov(times, noise.height_sigma_m, 2.0 * noise.correlation_s, rng)
        history = AttitudeHistory(max_samples=len(times) + 1, max_gap_s=2.0 / options.telemetry_hz)
        for t, h, p, r in zip(times, heading, pitch, roll):
            history.add(float(t), float(h), float(np.clip(p, 0.0, 84.0)), float(r))
        home_ground = 0.0
        ground = np.zeros(len(plan))
        if self.terrain is not None:
            home = plan[0].vehicle_xy
            home_ground = float(self.terrain.height_at(home[0], home[1]))
            targets = np.array([f.pose.target_xy for f in plan])
            ground = self.terrain.height_at(targets[:, 0], targets[:, 1])
            if not np.all(np.isfinite(ground)) or not math.isfinite(home_ground):
                raise MeanlocError("synthetic flight: the DEM does not cover the whole flight")
        reported = []
        for frame, ground_here in zip(plan, ground):
            if noise.ideal:  # the exact attitude the frame was rendered with
                h, p, r = frame.heading_deg, frame.pose.pitch_deg, frame.pose.roll_deg
            else:
                h, p, r = history.at(frame.t) or (frame.heading_deg, frame.pose.pitch_deg, 0.0)
            error = float(np.interp(frame.t, times, baro_error))
            amsl = float(ground_here) + frame.pose.altitude_m + error  # what the barometer says
            above_home = amsl - home_ground  # GLOBAL_POSITION_INT.relative_alt
            reported.append((h % 360.0, p, r, max(1.0, above_home), amsl if self.terrain is not None else None))
        return reported

    def __iter__(self) -> Iterator[Frame]:
        from ..sim.flight import render_flight

        rendered = render_flight(self.ortho, self.plan, intrinsics=self.intrinsics, seed=self.options.seed,
                                 appearance=self.options.appearance)
        for (pose, image), prior, (heading, pitch, roll, height, amsl) in zip(rendered, self.priors, self.reported):
            prior_lon, prior_lat = self.ortho.world_to_lonlat(prior.vehicle_xy[0], prior.vehicle_xy[1])
            self.stats.frames += 1
            yield Frame(pose.index, pose.t, image, truth_lonlat=pose.target_lonlat,
                        prior_lonlat=(float(prior_lon), float(prior_lat)), heading_deg=heading,
                        altitude_m=height, pitch_deg=pitch, roll_deg=roll, hfov_deg=self.intrinsics.hfov_deg,
                        altitude_amsl_m=amsl)
