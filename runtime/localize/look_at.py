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
    # Heading error left once geometric fits have measured it (a fit's rotation from a few dozen
    # inliers is good to a degree or two; the estimate also lags a wandering error).
    measured_heading_deg: float = 3.0


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


class HeadingCorrection:
    """The heading error that verified fits measure, applied to the following frames.

    A compass heading's error wanders slowly (a bias plus errors correlated over seconds), so the
    recent measurements predict the next frames' error far better than zero. Each fit's rotation is
    noisy (a few dozen inliers), so measurements are averaged exponentially (`smoothing`: the weight
    of the newest); the estimate is dropped once older than `max_age_s`."""

    def __init__(self, max_age_s: float = 10.0, smoothing: float = 0.5) -> None:
        self.max_age_s = max_age_s
        self.smoothing = smoothing
        self.value_deg = 0.0
        self.t: Optional[float] = None

    def at(self, t: float) -> float:
        """The correction (reported minus true heading, degrees) to apply to a frame at `t`."""
        if self.t is None or t - self.t > self.max_age_s:
            return 0.0
        return self.value_deg

    def measured(self, t: float, applied_deg: float, residual_deg: float) -> float:
        """A fit at `t` found `residual_deg` left after `applied_deg` was removed; returns the new
        estimate of the whole error."""
        weight = self.smoothing if self.at(t) == applied_deg and self.t is not None else 1.0
        self.value_deg, self.t = applied_deg + weight * residual_deg, t
        return self.value_deg


def with_heading_error_removed(attitude: Optional[CameraAttitude], heading_error_deg: Optional[float]) -> Optional[CameraAttitude]:
    """The attitude with a measured heading error (reported minus true) taken off."""
    if attitude is None or heading_error_deg is None:
        return attitude
    return attitude._replace(yaw_deg=(attitude.yaw_deg - heading_error_deg) % 360.0)
