"""Attitude-noise augmentation for pose-aware queries (`--attitude-noise PRESET`).

Onboard, a query is rectified with the attitude the sensors report, not the true one: a heading
error turns the patch and moves it sideways, a pitch or height error moves and stretches it along
the view, a roll error moves it across. Training on perfectly rectified patches leaves the model
unprepared. This draws errors of a sensor preset (`runtime.sim.sensors.SENSOR_PRESETS`,
the same numbers the synthetic flights use) and produces exactly the patch the noisy attitude
would give, without re-reading the frame:

    noisy patch pixel p shows the ground  g = H_true^-1 . H_noisy . P . p

(P: patch pixel -> ground metres around the assumed look-at point; H: ground -> frame pixel of the
camera with the true or the noisy attitude). The views are decoded once as a larger patch
(`MARGIN` x the side), so the ground a shifted patch needs is there; ground outside it, or outside
the frame, is the query view's fill, as onboard. A heading bias is drawn symmetrically (its sign is
unknown before flight).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from meanloc.runtime.geo.camera import CameraIntrinsics, Pose, ground_homography
from meanloc.runtime.geo.rectify import CameraAttitude
from meanloc.runtime.sim.sensors import SensorNoise

MARGIN = 1.3  # decoded patch side / query side


class ViewGeometry(NamedTuple):
    """What a drone view's rectification needs: its reported attitude and frame size."""

    attitude: CameraAttitude
    width: int
    height: int


def _patch_to_ground(side_m: float, size_px: float) -> np.ndarray:
    step = side_m / size_px
    return np.array([[step, 0.0, -side_m / 2.0], [0.0, -step, side_m / 2.0], [0.0, 0.0, 1.0]])


def _ground_to_frame(view: ViewGeometry, attitude: CameraAttitude) -> np.ndarray:
    camera = CameraIntrinsics(view.width, view.height, float(attitude.hfov_deg))
    pose = Pose((0.0, 0.0), attitude.altitude_m, attitude.pitch_deg, attitude.yaw_deg, attitude.roll_deg)
    return ground_homography(camera, pose)


def noisy_attitude(attitude: CameraAttitude, noise: SensorNoise, rng: np.random.Generator) -> CameraAttitude:
    """The attitude a sensor of `noise` might report for a frame whose truth is `attitude`."""
    heading = rng.normal(0.0, math.hypot(noise.heading_sigma_deg, noise.heading_bias_deg))
    height = rng.normal(0.0, math.hypot(noise.height_sigma_m, noise.height_bias_m))
    return CameraAttitude(max(1.0, attitude.altitude_m + height),
                          float(np.clip(attitude.pitch_deg + rng.normal(0.0, noise.pitch_sigma_deg), 0.0, 84.0)),
                          (attitude.yaw_deg + heading) % 360.0, attitude.hfov_deg,
                          attitude.roll_deg + rng.normal(0.0, noise.roll_sigma_deg))


def patch_homography(view: ViewGeometry, reported: CameraAttitude, side_m: float, size_px: int) -> np.ndarray:
    """Output patch pixel (corner convention) -> pixel of the MARGIN-larger true patch."""
    big = _patch_to_ground(side_m * MARGIN, round(size_px * MARGIN))
    true_frame = _ground_to_frame(view, view.attitude)
    noisy_frame = _ground_to_frame(view, reported)
    return np.linalg.inv(big) @ np.linalg.inv(true_frame) @ noisy_frame @ _patch_to_ground(side_m, size_px)


def resample_patches(big: torch.Tensor, homographies: np.ndarray, size_px: int, fill_rgb: tuple) -> torch.Tensor:
    """(B, 3, size, size) float patches sampled from the (B, 3, N, N) larger patches through the
    per-sample (B, 3, 3) homographies; samples outside take `fill_rgb`."""
    count, _, n, _ = big.shape
    centres = torch.arange(size_px, dtype=torch.float64) + 0.5
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([u.ravel(), v.ravel(), torch.ones(size_px * size_px, dtype=torch.float64)])  # (3, P)
    mapped = torch.from_numpy(homographies) @ points  # (B, 3, P)
    xy = mapped[:, :2] / mapped[:, 2:3]
    grid = (2.0 * xy / n - 1.0).transpose(1, 2).reshape(count, size_px, size_px, 2).float()
    fill = torch.tensor(fill_rgb, dtype=big.dtype).view(1, 3, 1, 1)
    # Sample (image - fill) with zero padding, then add the fill back: outside = fill exactly.
    sampled = F.grid_sample(big - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled + fill
