"""In-domain self-supervised pretraining on the satellite orthophoto alone (`--objective ssl`).

No drone data: each training "pair" is two views of the same ground cut from the satellite
orthophoto of the training area, each under strong geometric augmentation (a random turn shared
by both, then its own rotation of up to +-15 deg, +-15 % scale and +-10 % shift, like an
attitude error) and strong photometric augmentation (brightness, contrast, saturation, channel
gains, gamma, blur, noise, and a cut-off side filled like ground a drone frame does not show).
The network learns to recognise a place across appearance changes it never saw labelled; the
supervised recipe then starts from those weights (`--init-checkpoint`).

Crops of one batch are centred at least 0.75 tile sides apart, so its negatives are other places.
Only the training area is used: the validation and test ground stay unseen (the bank will hold
them at deployment; the benchmark must not). The augmentations are generic, not tuned to the
synthetic world's textures. The model identity (input size, query view) is the supervised one's.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from meanloc.runtime.query_view import FILLS

from .config import TrainConfig
from .data.query_images import dataset_query_view
from .trainer import Batch

MIN_SEPARATION = 0.75  # tile sides between the centres of one batch's crops


def _satellite_path(root: Path, manifest: dict) -> Path:
    recorded = Path(str(manifest.get("inputs", {}).get("satellite", {}).get("path", "")))
    for candidate in (root / recorded, recorded):
        if recorded.name and candidate.is_file():
            return candidate
    raise MeanlocError(f"--objective ssl needs the satellite orthophoto named in {root / 'dataset.json'}; "
                       f"'{recorded}' was not found")


class SatelliteCropPairs:
    """TrainData of two augmented crops of the same training ground (see the module docstring)."""

    def __init__(self, config: TrainConfig, img_size: int) -> None:
        root = Path(config.data_root)
        try:
            manifest = json.loads((root / "dataset.json").read_text())
            with open(root / "locations.csv", newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if row["split"] == "train"]
        except (OSError, ValueError) as exc:
            raise MeanlocError(f"--objective ssl reads {root}/dataset.json and locations.csv "
                               f"(written by `meanloc data synth`): {exc}") from None
        if len(rows) < config.batch_size:
            raise MeanlocError(f"--objective ssl: {len(rows)} training locations, fewer than the batch of "
                               f"{config.batch_size}")
        self.ortho = Orthophoto.from_geotiff(_satellite_path(root, manifest))
        self.centres = np.array([[float(r["centre_e"]), float(r["centre_n"])] for r in rows])
        self.side_m = float(manifest["parameters"]["tile_side_m"])
        self.spacing_m = float(manifest["parameters"].get("spacing_m", self.side_m / 4))
        self.size = img_size
        self.batch_size = config.batch_size
        self.seed = config.seed
        self.num_classes = len(rows)  # the supervised run's classes: the same model config
        self.query_view = dataset_query_view(root, config.pose_aware_queries)
        self.fill = FILLS[self.query_view.fill] if self.query_view.rectified else FILLS["mean"]
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.pyramid = self.ortho.pyramid()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        count = len(self.centres) // self.batch_size
        return [list(range(b * self.batch_size, (b + 1) * self.batch_size)) for b in range(count)]

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        for batch in batches:
            rng = np.random.default_rng([self.seed, epoch, batch[0], 515])
            centres = self._centres(len(batch), rng)
            first, second = zip(*[(self._crop(c, turn, rng), self._crop(c, turn, rng))
                                  for c, turn in zip(centres, rng.integers(0, 4, len(centres)))])
            views = [self._photometric(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).float(), rng)
                     for v in (first, second)]
            labels = torch.arange(len(batch))
            yield (views[0] - self.mean) / self.std, (views[1] - self.mean) / self.std, labels

    def _centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Jittered training-location centres, at least MIN_SEPARATION tiles apart where possible."""
        chosen = np.zeros((0, 2))
        for _ in range(count):
            candidates = (self.centres[rng.integers(len(self.centres), size=50)]
                          + rng.uniform(-0.5, 0.5, (50, 2)) * self.spacing_m)
            if len(chosen):
                gap = np.abs(candidates[:, None, :] - chosen[None, :, :]).max(axis=2).min(axis=1)
                far = np.flatnonzero(gap >= MIN_SEPARATION * self.side_m)
                pick = far[0] if len(far) else int(np.argmax(gap))  # else the farthest of the draws
            else:
                pick = 0
            chosen = np.vstack([chosen, candidates[pick]])
        return chosen

    def _crop(self, centre: np.ndarray, turn: int, rng: np.random.Generator) -> np.ndarray:
        """RGB crop (size, size, 3) of the ground around `centre`: north-up turned `turn` x 90 deg,
        then rotated, scaled and shifted a little, from the pyramid level of its resolution."""
        angle = math.radians(90.0 * turn + rng.uniform(-15.0, 15.0))
        side = self.side_m * rng.uniform(0.85, 1.15)
        shift = rng.uniform(-0.1, 0.1, 2) * self.side_m
        step = side / self.size  # metres per output pixel
        level = int(np.clip(math.floor(math.log2(max(1.0, step / self.ortho.gsd))), 0, len(self.pyramid) - 1))
        cos, sin = math.cos(angle), math.sin(angle)
        # output pixel (corner convention) -> metres: rotate the north-up grid about the crop centre
        half = self.size / 2.0
        to_world = np.array([[step * cos, step * sin, 0.0], [step * sin, -step * cos, 0.0], [0.0, 0.0, 1.0]])
        to_world[0, 2] = centre[0] + shift[0] - half * (to_world[0, 0] + to_world[0, 1])
        to_world[1, 2] = centre[1] + shift[1] - half * (to_world[1, 0] + to_world[1, 1])
        to_source = np.diag([0.5 ** level, 0.5 ** level, 1.0]) @ self.ortho.inverse @ to_world
        # corner-convention maps -> OpenCV pixel indices (centres at integers)
        shift_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
        shift_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
        matrix = (shift_out @ to_source @ shift_in)[:2]
        crop = cv2.warpAffine(self.pyramid[level], matrix, (self.size, self.size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        return np.ascontiguousarray(crop[:, :, ::-1])

    def _photometric(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Strong, generic appearance changes on a (B, 3, H, W) float batch in [0, 255]."""
        count = images.shape[0]

        def draw(low: float, high: float, shape: tuple = (count, 1, 1, 1)) -> torch.Tensor:
            return torch.from_numpy(rng.uniform(low, high, shape).astype(np.float32))

        images = images * draw(0.7, 1.3) * draw(0.9, 1.1, (count, 3, 1, 1))  # exposure and white balance
        grey = images.mean(dim=1, keepdim=True)
        images = grey + (images - grey) * draw(0.6, 1.4)  # saturation
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * draw(0.6, 1.4) + mean  # contrast
        images = 255.0 * (images.clamp(0, 255) / 255.0) ** draw(0.7, 1.4)  # gamma
        blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        images = torch.where(draw(0, 1) < 0.3, blurred, images)
        images = images + torch.from_numpy(rng.normal(0, 1, images.shape).astype(np.float32)) * draw(0, 6)
        images = self._cut_side(images.clamp(0, 255), rng)
        return images

    def _cut_side(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """With p=0.3, fill a band along one side (up to 40 %) with the query fill colour: ground a
        low or shallow view does not reach."""
        count, _, h, w = images.shape
        rows = torch.arange(h).view(1, h, 1).expand(count, h, w)
        cols = torch.arange(w).view(1, 1, w).expand(count, h, w)
        depth = torch.from_numpy((rng.uniform(0, 0.4, count) * h).astype(np.float32)).view(count, 1, 1)
        side = torch.from_numpy(rng.integers(0, 4, count)).view(count, 1, 1)
        coord = torch.where(side == 0, rows, torch.where(side == 1, h - 1 - rows, torch.where(side == 2, cols, w - 1 - cols)))
        cut = (coord < depth) & torch.from_numpy(rng.uniform(0, 1, count) < 0.3).view(count, 1, 1)
        fill = torch.tensor(self.fill[::-1], dtype=images.dtype).view(1, 3, 1, 1)  # BGR -> RGB
        return torch.where(cut.unsqueeze(1), fill.expand_as(images), images)
