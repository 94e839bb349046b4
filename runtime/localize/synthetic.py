"""A synthetic flight as a frame source: frames rendered from a georeferenced orthophoto.

Each frame carries its truth, the look-at ground point at the image centre (what retrieval
localises, §4.2 of datasets-and-metrics.md), the camera attitude and altitude, and a simulated
dead-reckoning prior with drift and injected jumps (§5.5). Rendering and planning are
`meanloc.runtime.geo.flight`'s. Python 3.8 compatible (needs rasterio/pyproj for GeoTIFFs).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from .sources import Frame, FrameSource


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


class SyntheticFlightSource(FrameSource):
    def __init__(self, ortho_path: str, options: SyntheticFlightOptions) -> None:
        super().__init__()
        from ..geo.flight import plan_flight, simulate_prior
        from ..geo.orthophoto import Orthophoto

        if not Path(ortho_path).is_file():
            raise MeanlocError("synthetic flight: orthophoto not found: {}".format(ortho_path))
        self.description = "synthetic flight over {}".format(ortho_path)
        self.options = options
        self.ortho = Orthophoto.from_geotiff(ortho_path)
        self.plan = plan_flight(self.ortho, options.frames, speed_mps=options.speed_mps, altitude_m=options.altitude_m,
                                pitch_deg=options.pitch_deg, seed=options.seed, pattern=options.pattern, fps=options.fps,
                                area=self._area_world(options.area_latlon))
        self.priors = simulate_prior(self.plan, drift_mps=options.prior_drift_mps, jump_every=options.prior_jump_every,
                                     jump_m=options.prior_jump_m, seed=options.seed + 1)

    def _area_world(self, area_latlon: Optional[Tuple[float, float, float, float]]) -> Optional[Tuple[float, float, float, float]]:
        """The lat/lon box as the box in the orthophoto's CRS spanned by its four corners."""
        if area_latlon is None:
            return None
        lat_min, lon_min, lat_max, lon_max = area_latlon
        x, y = self.ortho.lonlat_to_world(np.array([lon_min, lon_max, lon_max, lon_min]),
                                          np.array([lat_min, lat_min, lat_max, lat_max]))
        return float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y))

    def __iter__(self) -> Iterator[Frame]:
        from ..geo.flight import DEFAULT_INTRINSICS, render_flight

        rendered = render_flight(self.ortho, self.plan, seed=self.options.seed, appearance=self.options.appearance)
        for (pose, image), prior in zip(rendered, self.priors):
            prior_lon, prior_lat = self.ortho.world_to_lonlat(prior.vehicle_xy[0], prior.vehicle_xy[1])
            self.stats.frames += 1
            yield Frame(pose.index, pose.t, image, truth_lonlat=pose.target_lonlat,
                        prior_lonlat=(float(prior_lon), float(prior_lat)), heading_deg=pose.heading_deg,
                        altitude_m=pose.pose.altitude_m, pitch_deg=pose.pose.pitch_deg, roll_deg=pose.pose.roll_deg,
                        hfov_deg=DEFAULT_INTRINSICS.hfov_deg)
