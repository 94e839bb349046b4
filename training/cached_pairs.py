"""Training pairs decoded once into RAM, batched and augmented with vectorised torch ops.

On a 2-core CPU, JPEG decoding plus per-image albumentations costs about as much as the small
network's forward/backward, so the demo decodes and resizes every image once (with the project's
single resize definition, `meanloc.runtime.preprocess.resize_bgr`) and keeps uint8 RGB tensors.
Each batch is then an index gather plus cheap augmentations that draw from torch's global RNG,
so a restored RNG state reproduces them exactly (`--resume`).

Augmentations (a reduced form of shared/docs/mean-model.md §6.3): the pair-level joint horizontal
flip (p=0.5), satellite-only RandomRotate90 (p=1; the same turn for both views with pose-aware,
north-up queries), and per-image brightness/contrast jitter. With `attitude_noise`, pose-aware
drone views are decoded as a larger ground patch and each batch re-rectifies them with the
attitude errors of a sensor preset (`attitude_noise.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from meanloc.errors import MeanlocError
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_bgr
from meanloc.runtime.query_view import FILLS, FRAMES_AS_CAPTURED, QueryView, prepare_query
from meanloc.runtime.sim.sensors import SensorNoise

from .attitude_noise import MARGIN, ViewGeometry, noisy_attitude, patch_homography, resample_patches
from .data.query_images import read_query_image, read_view_attitude


def decode_images(paths: Sequence[str], size: int, progress: bool = False, query_view: QueryView | None = None,
                  failed: list[int] | None = None) -> torch.Tensor:
    """(N, 3, size, size) uint8 RGB; a bad file is a one-line error naming it, or, given a `failed`
    list, its index is appended there and its slot left black. With a `query_view`, the files are
    drone views prepared as that view says."""
    out = torch.zeros((len(paths), 3, size, size), dtype=torch.uint8)
    for index, path in enumerate(tqdm(paths, desc="decoding images", disable=not progress, leave=False)):
        try:
            image = read_image(path) if query_view is None else read_query_image(path, query_view, size)
        except MeanlocError:
            if failed is None:
                raise
            failed.append(index)
            continue
        rgb = np.ascontiguousarray(resize_bgr(image, size)[:, :, ::-1].transpose(2, 0, 1))
        out[index] = torch.from_numpy(rgb)
    return out


class CachedPairs:
    """pairs = [(sat_path, drone_path, class_index), ...] held as decoded uint8 tensors."""

    def __init__(self, pairs: Sequence[tuple[str, str, int]], size: int, augment: bool, progress: bool = False,
                 query_view: QueryView = FRAMES_AS_CAPTURED, skip_bad_images: bool = False,
                 attitude_noise: SensorNoise | None = None) -> None:
        if not pairs:
            raise MeanlocError("no training pairs to cache")
        sat_paths = sorted({sat for sat, _, _ in pairs})
        sat_index = {path: i for i, path in enumerate(sat_paths)}
        self.satellite = decode_images(sat_paths, size, progress)  # one per class: shared by its pairs
        self.size = size
        self.query_view = query_view
        self.noise = attitude_noise if attitude_noise is not None and not attitude_noise.ideal else None
        if self.noise is not None and not query_view.rectified:
            raise MeanlocError("--attitude-noise perturbs the rectification of pose-aware queries; this run embeds "
                               "frames as captured")
        drone_paths = [drone for _, drone, _ in pairs]
        failed: list[int] | None = [] if skip_bad_images else None
        if self.noise is None:
            self.drone = decode_images(drone_paths, size, progress, query_view, failed)
        else:
            self.drone, self.geometry = _decode_wide(drone_paths, size, query_view, progress, failed)
        self.sat_of_pair = torch.tensor([sat_index[sat] for sat, _, _ in pairs])
        self.labels = torch.tensor([label for _, _, label in pairs])
        if failed:
            self._substitute(failed, drone_paths)
        self.augment = augment
        self.joint_rot90 = query_view.rectified
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def _substitute(self, failed: list[int], drone_paths: list[str]) -> None:
        """As `PairDataset` does: a bad drone image is replaced by the first good one of its class."""
        bad = set(failed)
        for index in failed:
            label = int(self.labels[index])
            good = next((j for j in range(len(self.labels)) if int(self.labels[j]) == label and j not in bad), None)
            if good is None:
                raise MeanlocError(f"class {label}: none of its drone images is readable (e.g. {drone_paths[index]})")
            self.drone[index] = self.drone[good]
            if self.noise is not None:
                self.geometry[index] = self.geometry[good]
        print(f"meanloc train: {len(failed)} unreadable drone image(s) replaced by another of the same class, "
              f"e.g. {drone_paths[failed[0]]}", file=sys.stderr)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(satellite, drone) float32 NCHW normalised, and the class labels."""
        index = torch.as_tensor(list(indices))
        sat = self.satellite[self.sat_of_pair[index]].float()
        drone = self.drone[index].float()
        if self.noise is not None:
            drone = self._with_attitude_noise(drone, index)
        if self.augment:
            sat, drone = self._augment(sat, drone)
        return (sat - self.mean) / self.std, (drone - self.mean) / self.std, self.labels[index]

    def _with_attitude_noise(self, wide: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Re-rectify each view's wide patch as a noisy attitude would (draws from torch's RNG, so a
        resumed run draws the same errors)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        side = float(self.query_view.ground_side_m)
        homographies = np.stack([
            patch_homography(self.geometry[i], noisy_attitude(self.geometry[i].attitude, self.noise, rng), side, self.size)
            for i in index.tolist()])
        fill = FILLS[self.query_view.fill]
        return resample_patches(wide, homographies, self.size, (fill[2], fill[1], fill[0]))

    def _augment(self, sat: torch.Tensor, drone: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = sat.shape[0]
        flip = torch.rand(count) < 0.5  # one decision per pair: both views flip together
        sat = torch.where(flip.view(-1, 1, 1, 1), sat.flip(-1), sat)
        drone = torch.where(flip.view(-1, 1, 1, 1), drone.flip(-1), drone)
        turns = torch.randint(0, 4, (count,))  # satellite only as the reference, unless both are north-up
        sat = torch.stack([torch.rot90(image, int(k), dims=(-2, -1)) for image, k in zip(sat, turns)])
        if self.joint_rot90:
            drone = torch.stack([torch.rot90(image, int(k), dims=(-2, -1)) for image, k in zip(drone, turns)])
        return _jitter(sat), _jitter(drone)


def _jitter(images: torch.Tensor, brightness: float = 0.15, contrast: float = 0.3) -> torch.Tensor:
    count = images.shape[0]
    gain = 1 + (torch.rand(count, 1, 1, 1) * 2 - 1) * brightness
    contrast_gain = 1 + (torch.rand(count, 1, 1, 1) * 2 - 1) * contrast
    images = images * gain
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast_gain + mean).clamp(0, 255)


def _decode_wide(paths: Sequence[str], size: int, view: QueryView, progress: bool, failed: list[int] | None = None
                 ) -> tuple[torch.Tensor, list[ViewGeometry | None]]:
    """Drone views rectified to a MARGIN-larger ground patch, and the geometry to re-rectify them;
    bad files as in `decode_images` (a failed view's geometry is None until substituted)."""
    wide_px = round(size * MARGIN)
    wide = QueryView(float(view.ground_side_m) * MARGIN, view.fill)
    out = torch.zeros((len(paths), 3, wide_px, wide_px), dtype=torch.uint8)
    geometry: list[ViewGeometry | None] = []
    for index, path in enumerate(tqdm(paths, desc="decoding drone views", disable=not progress, leave=False)):
        try:
            image = read_image(path)
            attitude = read_view_attitude(path)
        except MeanlocError:
            if failed is None:
                raise
            failed.append(index)
            geometry.append(None)
            continue
        patch = prepare_query(image, wide, attitude, wide_px)
        out[index] = torch.from_numpy(np.ascontiguousarray(patch[:, :, ::-1].transpose(2, 0, 1)))
        geometry.append(ViewGeometry(attitude, image.shape[1], image.shape[0]))
    return out, geometry
