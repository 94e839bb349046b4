"""`PairDataset`: MEAN training pairs as tensors (satellite, drone, class index).

Images are probed up front (`train_data.vet_training_images`: header and end of file), so what
fails here is damage inside a file. By default that stops training with the file's name; with
`skip_bad_images` an unreadable image is replaced, deterministically, by the next pair of the SAME
class (in pair-list order, wrapping around), so the label and the class-unique batch stay valid;
the event is logged once per file and counted in `unreadable_count` (shared across DataLoader
worker processes). A class with no readable pair at all is a one-line MeanlocError.

Call `set_epoch(epoch)` before each epoch (with `persistent_workers=False`, the default, workers
pick it up) so augmentations differ per epoch yet depend only on (seed, epoch, index).
"""

import logging
import multiprocessing
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from meanloc.errors import MeanlocError
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_bgr
from meanloc.runtime.query_view import FRAMES_AS_CAPTURED, QueryView

from .augment import PairAugment
from .data.query_images import read_query_image
from .data.splits import Pair

log = logging.getLogger(__name__)


class PairDataset(Dataset):
    """Items are `(sat (3,S,S) float32 tensor, drone (3,S,S) float32 tensor, class index)`.

    `augment=False` gives the evaluation preprocessing (`preprocess_bgr`). With
    `return_rot90=True` a fourth item is the np.rot90 count applied to the satellite image.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        img_size: int,
        augment: bool = True,
        seed: int = 1,
        return_rot90: bool = False,
        query_view: QueryView = FRAMES_AS_CAPTURED,
        skip_bad_images: bool = False,
    ) -> None:
        if not pairs:
            raise MeanlocError("no training pairs")
        self.skip_bad_images = skip_bad_images
        self.pairs = list(pairs)
        self.spec = PreprocessSpec(size=img_size)
        self.query_view = query_view
        self.augment = PairAugment(img_size, joint_rot90=query_view.rectified) if augment else None
        self.seed = int(seed)
        self.epoch = 0
        self.return_rot90 = return_rot90
        self._class_pairs: dict[int, list[int]] = {}
        for index, pair in enumerate(self.pairs):
            self._class_pairs.setdefault(pair.class_index, []).append(index)
        # A spawn-context lock also works in forked workers; a fork-context one cannot be sent to spawned ones.
        self._unreadable = multiprocessing.get_context("spawn").Value("q", 0)
        self._logged: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of later reads depend on this epoch (call before building the loader)."""
        self.epoch = int(epoch)

    @property
    def unreadable_count(self) -> int:
        """How many reads failed and were substituted (all worker processes together)."""
        return int(self._unreadable.value)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple:
        sat_bgr, drone_bgr, pair = self._read_pair(index)
        if self.augment is None:
            sat, drone, k = preprocess_bgr(sat_bgr, self.spec), preprocess_bgr(drone_bgr, self.spec), 0
        else:
            aug = self.augment(
                cv2.cvtColor(sat_bgr, cv2.COLOR_BGR2RGB),
                cv2.cvtColor(drone_bgr, cv2.COLOR_BGR2RGB),
                seed=(self.seed, self.epoch, index),
            )
            sat, drone, k = aug.satellite, aug.drone, aug.satellite_rot90_k
        item = (torch.from_numpy(sat), torch.from_numpy(drone), pair.class_index)
        return (*item, k) if self.return_rot90 else item

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, Pair]:
        siblings = self._class_pairs[self.pairs[index].class_index]
        start = siblings.index(index)
        for offset in range(len(siblings)):
            pair = self.pairs[siblings[(start + offset) % len(siblings)]]
            sat = self._read(pair.sat_path)
            drone = self._read(pair.drone_path, query=True) if sat is not None else None
            if sat is not None and drone is not None:
                return sat, drone, pair
        raise MeanlocError(
            f"class {self.pairs[index].class_index}: none of its {len(siblings)} pairs is readable"
        )

    def _read(self, path: str, query: bool = False) -> np.ndarray | None:
        try:
            return read_query_image(path, self.query_view, self.spec.size) if query else read_image(path)
        except MeanlocError:
            if not self.skip_bad_images:
                raise
            with self._unreadable.get_lock():
                self._unreadable.value += 1
            if path not in self._logged:
                self._logged.add(path)
                log.warning("unreadable image skipped (a pair of the same class is used instead): %s", path)
            return None
