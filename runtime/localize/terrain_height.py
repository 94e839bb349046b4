"""Height above ground from a DEM: `meanloc localize --dem DEM.tif`.

A pose-aware query is rectified with the camera's height above the ground it looks at. Telemetry
gives the barometric altitude above sea level (GLOBAL_POSITION_INT.alt) or above the take-off
point (relative_alt, which is wrong by the terrain between home and the view). With a DEM:

    height above ground = barometric altitude AMSL - DEM height under the look-at point

The look-at point is not known exactly (that is what the loop estimates), so it is taken from the
vehicle's own position estimate (the frame's prior, dead reckoning) plus the camera's look-ahead
(h tan(pitch) along the heading), iterated because the look-ahead itself depends on h. Smooth
terrain forgives a few tens of metres of position error. Frames without an AMSL altitude or a
position estimate keep the height they carry. Python 3.8 compatible and torch-free.
"""

import dataclasses
import logging
import math
from typing import Iterator, Optional

import numpy as np

from ..geo.orthophoto import lonlat_to_crs
from ..geo.terrain import Terrain
from .frames import Frame, FrameSource

LOG = logging.getLogger("meanloc.localize")
LOOK_AHEAD_ITERATIONS = 3
MIN_HEIGHT_M = 1.0


def height_above_look_at(terrain: Terrain, amsl_m: float, vehicle_xy: np.ndarray, heading_deg: float,
                         pitch_deg: float) -> Optional[float]:
    """Barometric altitude minus the DEM height under the look-at point (None off the DEM)."""
    ground = float(terrain.height_at(vehicle_xy[0], vehicle_xy[1]))
    if not math.isfinite(ground):
        return None
    height = amsl_m - ground
    direction = np.array([math.sin(math.radians(heading_deg)), math.cos(math.radians(heading_deg))])
    for _ in range(LOOK_AHEAD_ITERATIONS):
        look_at = vehicle_xy + max(height, MIN_HEIGHT_M) * math.tan(math.radians(pitch_deg)) * direction
        ground = float(terrain.height_at(look_at[0], look_at[1]))
        if not math.isfinite(ground):
            return None
        height = amsl_m - ground
    return max(height, MIN_HEIGHT_M)


class DemHeightSource(FrameSource):
    """Another source's frames with their height above ground recomputed from a DEM."""

    def __init__(self, source: FrameSource, terrain: Terrain) -> None:
        super().__init__()
        self.source = source
        self.terrain = terrain
        self.description = "{} + DEM {}".format(source.description, terrain.source)
        self.live = source.live
        self.stats = source.stats
        self.corrected = 0
        self._warned = False

    def correct(self, frame: Frame) -> Frame:
        if frame.altitude_amsl_m is None or frame.prior_lonlat is None or frame.heading_deg is None:
            if not self._warned:
                self._warned = True
                LOG.warning("--dem: frame %d has no %s; its height above ground is left as reported", frame.index,
                            "barometric altitude AMSL (telemetry GLOBAL_POSITION_INT)" if frame.altitude_amsl_m is None
                            else "position estimate (prior)" if frame.prior_lonlat is None else "heading")
            return frame
        x, y = lonlat_to_crs(frame.prior_lonlat[0], frame.prior_lonlat[1], self.terrain.crs)
        height = height_above_look_at(self.terrain, frame.altitude_amsl_m, np.array([float(x), float(y)]),
                                      frame.heading_deg, frame.pitch_deg or 0.0)
        if height is None:
            return frame
        self.corrected += 1
        return dataclasses.replace(frame, altitude_m=height)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            yield self.correct(frame)

    def close(self) -> None:
        self.source.close()
