"""From the camera's look-at point to the vehicle, and how uncertain that step is.

A fix locates the look-at point; the filter tracks the vehicle, h·tan(pitch) behind it along the
heading. With a real attitude that offset has errors of its own (a magnetometer heading is off
by degrees, barometric height by metres), so a fix that is exact about the look-at point is only
as good as the offset about the vehicle: its covariance is propagated to first order and added
to the fix's. A verified geometric fit measures the heading error (the fit's rotation), which
corrects the offset's direction for that frame.
Python 3.8 compatible.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..geo.rectify import CameraAttitude


@dataclass(frozen=True)
class AttitudeUncertainty:
    """One-sigma errors of the attitude the frames carry (defaults: a good gimbal)."""

    heading_deg: float = 2.0
    pitch_deg: float = 0.5
    altitude_m: float = 2.0
    # Heading error left once a geometric fit has measured it.
    measured_heading_deg: float = 1.0


def look_at_offset(attitude: Optional[CameraAttitude]) -> Tuple[float, float]:
    """Ground vector from the vehicle to the look-at point (h tan(pitch) along the heading);
    unknown attitude: nadir."""
    if attitude is None:
        return 0.0, 0.0
    reach = attitude.altitude_m * math.tan(math.radians(attitude.pitch_deg))
    heading = math.radians(attitude.yaw_deg)
    return reach * math.sin(heading), reach * math.cos(heading)


def offset_covariance(attitude: Optional[CameraAttitude], uncertainty: AttitudeUncertainty,
                      heading_measured: bool = False) -> np.ndarray:
    """Covariance (m²) of `look_at_offset` from the attitude's errors (first-order propagation)."""
    if attitude is None:
        return np.zeros((2, 2))
    pitch, heading = math.radians(attitude.pitch_deg), math.radians(attitude.yaw_deg)
    along = np.array([math.sin(heading), math.cos(heading)])
    across = np.array([math.cos(heading), -math.sin(heading)])
    reach = attitude.altitude_m * math.tan(pitch)
    heading_std = uncertainty.measured_heading_deg if heading_measured else uncertainty.heading_deg
    d_heading = reach * across * math.radians(heading_std)
    d_pitch = attitude.altitude_m / math.cos(pitch) ** 2 * along * math.radians(uncertainty.pitch_deg)
    d_height = math.tan(pitch) * along * uncertainty.altitude_m
    return sum(np.outer(d, d) for d in (d_heading, d_pitch, d_height))


def with_heading_error_removed(attitude: Optional[CameraAttitude], heading_error_deg: Optional[float]) -> Optional[CameraAttitude]:
    """The attitude with a measured heading error (reported minus true) taken off."""
    if attitude is None or heading_error_deg is None:
        return attitude
    return attitude._replace(yaw_deg=(attitude.yaw_deg - heading_error_deg) % 360.0)
