"""Constant-velocity Kalman filter on a local metric plane, with Mahalanobis gating.

State (x, y, vx, vy) in metres and m/s. A retrieval fix is a position measurement whose
noise depends on its confidence. When the vehicle's odometry (dead reckoning, VIO, the autopilot's
GNSS-free estimate) gives the displacement since the last frame, the prediction follows it, which
is far tighter than the constant-velocity model; otherwise the constant-velocity model predicts.

A fix whose squared Mahalanobis distance to the prediction exceeds the gate (chi-square, 2 degrees
of freedom) is rejected and logged by the caller. Rejected fixes are carried along with the
prediction; once `reinit_consensus` of the last `max_rejections` consecutive ones agree with the
latest (within `reinit_agreement_m`), the filter assumes it was the one that was wrong and
re-initialises on their mean, so a wrong track cannot lock itself in while scattered outliers cannot
hijack it (§4.3 of datasets-and-metrics.md). A majority rather than all of them, so that a wrong
start also ends when fixes are right only some of the time, as over a second date (bench/RESULTS.md,
"Kalman re-initialisation, from runtime/localize/kalman.py"). Python 3.8 compatible, numpy only.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

# A fix's noise: one standard deviation for both axes (m), or a 2x2 covariance (m²).
Noise = Union[float, np.ndarray]


def noise_covariance(noise: Noise) -> np.ndarray:
    if np.ndim(noise) == 0:
        return np.eye(2) * float(noise) ** 2
    return np.asarray(noise, dtype=np.float64).reshape(2, 2)

# chi-square quantile for 2 dof at 99.9 %: a correct fix is wrongly rejected once in 1000 frames.
DEFAULT_GATE_CHI2 = 13.82


@dataclass(frozen=True)
class KalmanConfig:
    # Random-acceleration process noise (m/s^2): how quickly a drone may change velocity.
    accel_std: float = 2.0
    # Velocity uncertainty when (re-)initialising from a single fix (m/s).
    init_speed_std: float = 15.0
    gate_chi2: float = DEFAULT_GATE_CHI2
    max_rejections: int = 5
    # Of the last `max_rejections` consecutive rejected fixes, this many (the latest included) must
    # agree with the latest within `reinit_agreement_m` before they re-initialise the filter.
    reinit_consensus: int = 3
    reinit_agreement_m: float = 100.0
    # Odometry error growth: its displacement is trusted to this many metres per second.
    odometry_std_mps: float = 3.0
    # An odometry displacement faster than this is a jump of that source, not motion: ignored.
    max_speed_mps: float = 40.0


@dataclass(frozen=True)
class UpdateResult:
    accepted: bool
    mahalanobis2: float
    reinitialised: bool


class ConstantVelocityKalman:
    def __init__(self, config: Optional[KalmanConfig] = None) -> None:
        self.config = config or KalmanConfig()
        self.state = np.zeros(4)
        self.cov = np.eye(4)
        self.t: Optional[float] = None
        self.rejected_xy: List[np.ndarray] = []  # consecutive rejected fixes, moved with the prediction

    @property
    def initialised(self) -> bool:
        return self.t is not None

    @property
    def position(self) -> Tuple[float, float]:
        return float(self.state[0]), float(self.state[1])

    @property
    def velocity(self) -> Tuple[float, float]:
        return float(self.state[2]), float(self.state[3])

    def position_std(self) -> float:
        """RMS one-axis position standard deviation (m)."""
        return float(np.sqrt(max(0.5 * (self.cov[0, 0] + self.cov[1, 1]), 0.0)))

    def reset(self, xy: Tuple[float, float], t: float, position_noise: Noise) -> None:
        self.state = np.array([xy[0], xy[1], 0.0, 0.0])
        self.cov = np.eye(4) * self.config.init_speed_std ** 2
        self.cov[:2, :2] = noise_covariance(position_noise)
        self.t = t
        self.rejected_xy = []

    def predict(self, t: float, displacement: Optional[Tuple[float, float]] = None) -> None:
        """Propagate the state to time `t` (no-op before initialisation or for dt <= 0), by the
        odometry `displacement` (m) since the last call when it is given and plausible."""
        if self.t is None:
            return
        dt = t - self.t
        if dt <= 0:
            return
        before = self.state[:2].copy()
        moved = None if displacement is None else np.asarray(displacement, dtype=np.float64)
        if moved is not None and float(np.hypot(*moved)) <= self.config.max_speed_mps * dt:
            self._predict_by_odometry(dt, moved)
        else:
            self._predict_constant_velocity(dt)
        shift = self.state[:2] - before
        self.rejected_xy = [xy + shift for xy in self.rejected_xy]
        self.t = t

    def _predict_by_odometry(self, dt: float, moved: np.ndarray) -> None:
        spread = (self.config.odometry_std_mps * dt) ** 2
        self.state = np.concatenate([self.state[:2] + moved, moved / dt])
        cov = np.zeros((4, 4))
        cov[:2, :2] = self.cov[:2, :2] + np.eye(2) * spread
        cov[2:, 2:] = np.eye(2) * self.config.odometry_std_mps ** 2
        self.cov = cov

    def _predict_constant_velocity(self, dt: float) -> None:
        transition = np.eye(4)
        transition[0, 2] = transition[1, 3] = dt
        # Discrete white-noise acceleration model.
        q = self.config.accel_std ** 2
        dt2, dt3, dt4 = dt * dt, dt ** 3, dt ** 4
        block = np.array([[dt4 / 4.0, dt3 / 2.0], [dt3 / 2.0, dt2]]) * q
        noise = np.zeros((4, 4))
        noise[np.ix_([0, 2], [0, 2])] = block
        noise[np.ix_([1, 3], [1, 3])] = block
        self.state = transition @ self.state
        self.cov = transition @ self.cov @ transition.T + noise

    def update(self, xy: Tuple[float, float], t: float, noise: Noise, may_reinitialise: bool = True) -> UpdateResult:
        """Predict to `t`, then gate and fuse the position fix `xy` whose noise is `noise` (a std
        in metres, or the fix's own 2x2 covariance, e.g. from a geometric fit). With
        `may_reinitialise` False a rejected fix never re-initialises the filter (nor counts
        towards a consensus that would)."""
        measurement_cov = noise_covariance(noise)
        if self.t is None:
            self.reset(xy, t, measurement_cov)
            return UpdateResult(True, 0.0, True)
        self.predict(t)
        innovation = np.asarray(xy, dtype=np.float64) - self.state[:2]
        innovation_cov = self.cov[:2, :2] + measurement_cov
        inv = np.linalg.inv(innovation_cov)
        d2 = float(innovation @ inv @ innovation)
        if d2 > self.config.gate_chi2:
            if not may_reinitialise:
                return UpdateResult(False, d2, False)
            latest = np.asarray(xy, dtype=np.float64)
            self.rejected_xy.append(latest)
            recent = self.rejected_xy[-self.config.max_rejections :]
            agreeing = [other for other in recent
                        if float(np.hypot(*(other - latest))) <= self.config.reinit_agreement_m]
            if len(agreeing) >= min(self.config.reinit_consensus, self.config.max_rejections):
                # The prediction kept disagreeing with consistent evidence: trust the fixes again.
                centre = np.mean(agreeing, axis=0)
                self.reset((float(centre[0]), float(centre[1])), t, measurement_cov)
                return UpdateResult(True, d2, True)
            self.rejected_xy = recent
            return UpdateResult(False, d2, False)
        gain = self.cov[:, :2] @ inv
        self.state = self.state + gain @ innovation
        # Joseph form keeps the covariance symmetric positive definite over long runs.
        identity_minus = np.eye(4)
        identity_minus[:, :2] -= gain
        self.cov = identity_minus @ self.cov @ identity_minus.T + gain @ measurement_cov @ gain.T
        self.rejected_xy = []
        return UpdateResult(True, d2, False)
