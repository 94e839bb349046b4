"""Simulated sensor errors: the attitude and height a vehicle reports, as presets.

Errors are first-order Gauss-Markov processes (correlation time `correlation_s`) with a preset's
standard deviation, plus constant biases. The synthetic flight source reports them onboard;
training draws the same presets for attitude-noise augmentation. Python 3.8 compatible.
"""

import math
from dataclasses import dataclass
from typing import Dict

import numpy as np

from meanloc.errors import MeanlocError


@dataclass(frozen=True)
class SensorNoise:
    """Errors of the attitude and height a vehicle reports (standard deviations and biases)."""

    name: str = "ideal"
    heading_sigma_deg: float = 0.0
    heading_bias_deg: float = 0.0
    pitch_sigma_deg: float = 0.0
    roll_sigma_deg: float = 0.0
    height_sigma_m: float = 0.0
    height_bias_m: float = 0.0
    correlation_s: float = 3.0  # how fast the errors wander

    @property
    def ideal(self) -> bool:
        return not any((self.heading_sigma_deg, self.heading_bias_deg, self.pitch_sigma_deg, self.roll_sigma_deg,
                        self.height_sigma_m, self.height_bias_m))

    def describe(self) -> str:
        if self.ideal:
            return "ideal sensors"
        return ("{}: heading sigma {:g} deg + bias {:g} deg, pitch sigma {:g} deg, roll sigma {:g} deg, height sigma "
                "{:g} m + bias {:g} m".format(self.name, self.heading_sigma_deg, self.heading_bias_deg,
                                              self.pitch_sigma_deg, self.roll_sigma_deg, self.height_sigma_m,
                                              self.height_bias_m))


SENSOR_PRESETS: Dict[str, SensorNoise] = {
    "ideal": SensorNoise(),
    # A stabilised gimbal with a good compass: the gimbal's own encoders and a fused heading.
    "good-gimbal": SensorNoise("good-gimbal", heading_sigma_deg=2.0, pitch_sigma_deg=0.5, roll_sigma_deg=0.5,
                               height_sigma_m=2.0),
    # A hobby autopilot's magnetometer near motors and a barometer in the wind.
    "cheap-imu": SensorNoise("cheap-imu", heading_sigma_deg=8.0, heading_bias_deg=5.0, pitch_sigma_deg=2.0,
                             roll_sigma_deg=2.0, height_sigma_m=10.0),
}


def sensor_preset(name: str) -> SensorNoise:
    if name not in SENSOR_PRESETS:
        raise MeanlocError("unknown sensor noise preset '{}' (choose {})".format(name, ", ".join(SENSOR_PRESETS)))
    return SENSOR_PRESETS[name]


def gauss_markov(times: np.ndarray, sigma: float, correlation_s: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary first-order Gauss-Markov process with standard deviation `sigma` at `times`."""
    out = np.zeros(len(times))
    if sigma <= 0 or not len(times):
        return out
    out[0] = rng.normal(0.0, sigma)
    for i in range(1, len(times)):
        rho = math.exp(-max(0.0, times[i] - times[i - 1]) / correlation_s)
        out[i] = rho * out[i - 1] + math.sqrt(1.0 - rho * rho) * rng.normal(0.0, sigma)
    return out
