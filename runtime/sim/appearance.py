"""Sensor and atmosphere effects applied to a rendered view (datasets-and-metrics.md §5.6).

Every random value drawn is returned in a JSON-able dict, so a sidecar can record exactly what
was done to each image. These effects model the camera and the air, not regularisation: the
training augmentations (albumentations) are separate and live in training/.

Hand-written with OpenCV/numpy rather than albumentations because synthetic flights for
`meanloc localize` use it on Python 3.8 without the training stack, and because the drawn
parameters must be exposed exactly.

Python 3.8 compatible and torch-free.
"""

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from meanloc.runtime.geo.orthophoto import require_cv2
from meanloc.runtime.images import decode_image

# Ranges of §5.6 (multiplicative gains as factors, biases in digital numbers).
CHANNEL_GAIN = 0.15
CHANNEL_BIAS_DN = 10.0
GAMMA_RANGE = (0.8, 1.25)
SATURATION = 0.20
WHITE_BALANCE = 0.08
BRIGHTNESS = 0.10
CONTRAST = (0.85, 1.15)
ILLUMINATION_FIELD = 0.12
HAZE_TRANSMISSION = (0.7, 1.0)
VIGNETTE_STRENGTH = (0.0, 0.3)
MOTION_KERNEL_PX = (3, 9)
GAUSSIAN_SIGMA_PX = (0.0, 1.5)
SHOT_NOISE_DN = (0.0, 0.6)  # variance per DN of signal (signal-dependent part)
READ_NOISE_DN = (0.5, 3.0)
JPEG_QUALITY = (60, 95)


def apply_appearance(image_bgr: np.ndarray, rng: np.random.Generator,
                     valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Apply colour/illumination, haze, vignetting, blur, Poisson-Gaussian noise and a JPEG
    round trip, in that (physical) order. Returns the new BGR uint8 image and the parameters.
    Pixels outside `valid` (if given) are kept black so the validity mask stays meaningful."""
    img = image_bgr.astype(np.float32)
    params = {}  # type: Dict[str, Any]
    img = _colour(img, rng, params)
    img = _illumination_field(img, rng, params)
    img = _haze(img, rng, params)
    img = _vignette(img, rng, params)
    img = _blur(img, rng, params)
    img = _noise(img, rng, params)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    out = _jpeg(out, rng, params)
    if valid is not None:
        out[~valid] = 0
    return out, params


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _colour(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    cv2 = require_cv2()
    gain = [_uniform(rng, 1 - CHANNEL_GAIN, 1 + CHANNEL_GAIN) for _ in range(3)]
    bias = [_uniform(rng, -CHANNEL_BIAS_DN, CHANNEL_BIAS_DN) for _ in range(3)]
    # White balance: warm/cool shift moves red and blue in opposite directions.
    wb = _uniform(rng, -WHITE_BALANCE, WHITE_BALANCE)
    gamma = float(math.exp(rng.uniform(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1]))))
    saturation = _uniform(rng, 1 - SATURATION, 1 + SATURATION)
    brightness = _uniform(rng, 1 - BRIGHTNESS, 1 + BRIGHTNESS)
    contrast = _uniform(rng, *CONTRAST)
    params.update({"channel_gain_bgr": gain, "channel_bias_bgr": bias, "white_balance": wb, "gamma": gamma,
                   "saturation": saturation, "brightness": brightness, "contrast": contrast})
    scale = np.array(gain, dtype=np.float32) * np.array([1 - wb, 1.0, 1 + wb], dtype=np.float32)
    img = img * scale + np.array(bias, dtype=np.float32)
    # Gamma through a 256-entry table (8-bit quantisation is below the sensor noise added later).
    table = (255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** gamma).astype(np.float32).reshape(1, 256)
    img = cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), table)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    img = grey + saturation * (img - grey)
    mean = float(img.mean())
    img *= contrast
    img += mean * (brightness - contrast)
    return img


def _illumination_field(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    """Smooth low-frequency brightness field (cloud shadows, uneven light)."""
    cv2 = require_cv2()
    amplitude = _uniform(rng, 0.0, ILLUMINATION_FIELD)
    coarse = rng.standard_normal((3, 4)).astype(np.float32)
    params["illumination_amplitude"] = amplitude
    field = cv2.resize(coarse, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC)
    field = field / max(float(np.abs(field).max()), 1e-6)
    return img * (1.0 + amplitude * field)[:, :, None]


def _haze(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    """I' = I t + A (1 - t) with bright grey-blue airlight A."""
    t = _uniform(rng, *HAZE_TRANSMISSION)
    grey = _uniform(rng, 190.0, 235.0)
    airlight = [grey + _uniform(rng, 5.0, 20.0), grey + _uniform(rng, 0.0, 8.0), grey]  # B, G, R: bluish
    params.update({"haze_transmission": t, "haze_airlight_bgr": airlight})
    return img * t + np.array(airlight, dtype=np.float32) * (1.0 - t)


def _vignette(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    strength = _uniform(rng, *VIGNETTE_STRENGTH)
    params["vignette_strength"] = strength
    h, w = img.shape[:2]
    y, x = np.ogrid[:h, :w]
    r2 = ((x + 0.5 - w / 2.0) ** 2 + (y + 0.5 - h / 2.0) ** 2) / ((w / 2.0) ** 2 + (h / 2.0) ** 2)
    return img * (1.0 - strength * r2).astype(np.float32)[:, :, None]


def _blur(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    cv2 = require_cv2()
    if rng.uniform() < 0.5:
        size = int(rng.integers(MOTION_KERNEL_PX[0], MOTION_KERNEL_PX[1] + 1))
        angle = _uniform(rng, 0.0, 180.0)
        params["blur"] = {"type": "motion", "kernel_px": size, "angle_deg": angle}
        kernel = np.zeros((size, size), dtype=np.float32)
        kernel[size // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, 1.0)
        kernel = cv2.warpAffine(kernel, rot, (size, size))
        kernel /= max(float(kernel.sum()), 1e-6)
        return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    sigma = _uniform(rng, *GAUSSIAN_SIGMA_PX)
    params["blur"] = {"type": "gaussian", "sigma_px": sigma}
    if sigma < 0.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _noise(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    """Poisson-Gaussian: variance = shot * signal + read^2 (Gaussian approximation of Poisson)."""
    shot = _uniform(rng, *SHOT_NOISE_DN)
    read = _uniform(rng, *READ_NOISE_DN)
    params.update({"shot_noise_dn": shot, "read_noise_dn": read})
    std = np.sqrt(shot * np.clip(img, 0, 255) + read * read)
    return img + std * rng.standard_normal(img.shape, dtype=np.float32)


def _jpeg(img: np.ndarray, rng: np.random.Generator, params: Dict[str, Any]) -> np.ndarray:
    cv2 = require_cv2()
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    params["jpeg_quality"] = quality
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return decode_image(buf.tobytes(), "JPEG round trip", min_side=1) if ok else img
