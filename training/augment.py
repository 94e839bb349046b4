"""MEAN's training augmentations (mean-model.md §6.3) with albumentations 2.x.

Order, per pair of RGB uint8 images:
- pair level: with p=0.5 flip BOTH images horizontally (one draw for the pair);
- per view: ImageCompression(quality 90-100, p=0.5) -> Resize(size, INTER_LINEAR_EXACT)
  -> ColorJitter(0.15, contrast 0.3 satellite / 0.7 drone, 0.3, 0.3, p=0.5)
  -> OneOf{AdvancedBlur, Sharpen}(p=0.3) -> OneOf{GridDropout(0.4), CoarseDropout(10-25 holes,
  0.1-0.2 of the side)}(p=0.3) -> RandomRotate90(p=1) on the satellite view ONLY -> Normalize.
  With pose-aware (north-up) queries the drone view turns with the satellite view instead, so the
  pair stays aligned (`joint_rot90`).

Every call takes a seed and reseeds the pipelines, so an augmented sample depends only on
(seed, epoch, index): training is reproducible whatever the number of DataLoader workers or
ranks. The non-augmented path is NOT here: it is `meanloc.runtime.preprocess.preprocess_bgr`,
the single definition shared with calibration and the onboard runtime.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from meanloc.runtime.preprocess import PreprocessSpec

SATELLITE_CONTRAST = 0.3
DRONE_CONTRAST = 0.7


def view_pipeline(spec: PreprocessSpec, contrast: float, rotate90: bool) -> A.Compose:
    """The per-view albumentations pipeline of the reference (RGB uint8 in, HWC float32 out)."""
    steps = [
        A.ImageCompression(quality_range=(90, 100), p=0.5),
        A.Resize(spec.size, spec.size, interpolation=cv2.INTER_LINEAR_EXACT),
        A.ColorJitter(brightness=0.15, contrast=contrast, saturation=0.3, hue=0.3, p=0.5),
        A.OneOf([A.AdvancedBlur(p=1.0), A.Sharpen(p=1.0)], p=0.3),
        A.OneOf(
            [
                A.GridDropout(ratio=0.4, p=1.0),
                A.CoarseDropout(
                    num_holes_range=(10, 25), hole_height_range=(0.1, 0.2), hole_width_range=(0.1, 0.2), p=1.0
                ),
            ],
            p=0.3,
        ),
    ]
    if rotate90:
        steps.append(A.RandomRotate90(p=1.0))
    steps.append(A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0))
    return A.Compose(steps, save_applied_params=True)


@dataclass
class AugmentedPair:
    """Both augmented views (CHW float32) plus what the geometric steps did."""

    satellite: np.ndarray  # (3, S, S) float32
    drone: np.ndarray  # (3, S, S) float32
    # np.rot90 count (counter-clockwise quarter turns) applied to the satellite image, applied
    # after the joint flip; the CDA alignment of the reference ignores it (§10 model quirks).
    satellite_rot90_k: int
    flipped: bool
    applied: dict[str, list[str]]  # names of the steps applied to each view, in order


class PairAugment:
    """Callable: (satellite RGB uint8, drone RGB uint8, seed) -> AugmentedPair."""

    def __init__(self, img_size: int, joint_rot90: bool = False) -> None:
        spec = PreprocessSpec(size=img_size)
        self.joint_rot90 = joint_rot90
        self.flip = A.Compose(
            [A.HorizontalFlip(p=0.5)],
            additional_targets={"drone": "image"},
            is_check_shapes=False,  # the two views have different sizes before Resize
            save_applied_params=True,
        )
        self.satellite = view_pipeline(spec, SATELLITE_CONTRAST, rotate90=True)
        self.drone = view_pipeline(spec, DRONE_CONTRAST, rotate90=False)

    def __call__(
        self, satellite_rgb: np.ndarray, drone_rgb: np.ndarray, seed: int | Sequence[int]
    ) -> AugmentedPair:
        flip_seed, sat_seed, drone_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
        flipped = _reseeded(self.flip, flip_seed)(image=satellite_rgb, drone=drone_rgb)
        sat = _reseeded(self.satellite, sat_seed)(image=flipped["image"])
        drone = _reseeded(self.drone, drone_seed)(image=flipped["drone"])
        turns = _rot90_factor(sat["applied_transforms"])
        drone_image = np.rot90(drone["image"], turns) if self.joint_rot90 else drone["image"]
        return AugmentedPair(
            satellite=_chw(sat["image"]),
            drone=_chw(drone_image),
            satellite_rot90_k=turns,
            flipped=any(name == "HorizontalFlip" for name, _ in flipped["applied_transforms"]),
            applied={
                "satellite": [name for name, _ in sat["applied_transforms"]],
                "drone": [name for name, _ in drone["applied_transforms"]],
            },
        )


def _reseeded(pipeline: A.Compose, seed: int) -> A.Compose:
    # One generator pair shared by every step, drawn in sequence. Compose.set_random_seed would
    # give each step its own generator with the SAME seed, so all p=0.5 steps would always fire
    # together (every step would make the same first draw).
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def _rot90_factor(applied: list) -> int:
    for name, params in applied:
        if name == "RandomRotate90":
            return int(params["factor"])
    return 0
