"""Connects the dataset readers (`meanloc.training.data`) to the trainer's `TrainData` protocol.

Two loaders over the same pairs and the same class-unique global batch order:
- `DiskPairs`: the reference pipeline, `PairDataset` (albumentations, read per step) in a DataLoader;
- `RamPairs`: images decoded once into RAM (`CachedPairs`) for few-core CPUs (the demo).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meanloc.errors import MeanlocError
from meanloc.runtime.images import BadImages, ImageError, probe_image, read_image
from meanloc.runtime.sim.sensors import sensor_preset

from .cached_pairs import CachedPairs
from .config import TrainConfig
from .data.query_images import dataset_query_view
from .data.splits import Pair, TrainSplit, load_train_pairs
from .pairs import PairDataset
from .sampler import ClassUniqueBatchSampler
from .trainer import Batch


class _SampledPairs:
    def __init__(self, split: TrainSplit, config: TrainConfig) -> None:
        self.split = split
        self.num_classes = split.num_classes
        self.query_view = dataset_query_view(config.data_root, config.pose_aware_queries)
        # Global batches (world_size=1 here): the trainer slices each one for its rank.
        self.sampler = ClassUniqueBatchSampler(split.pair_classes, config.batch_size, seed=config.seed)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [list(batch) for batch in self.sampler.global_batches(epoch)]


class DiskPairs(_SampledPairs):
    def __init__(self, split: TrainSplit, config: TrainConfig, img_size: int) -> None:
        super().__init__(split, config)
        self.dataset = PairDataset(split.pairs, img_size, augment=config.augment, seed=config.seed,
                                   query_view=self.query_view, skip_bad_images=config.skip_bad_images)
        self.num_workers = config.num_workers
        self.seed = config.seed

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        self.dataset.set_epoch(epoch)  # augmentations depend only on (seed, epoch, index)
        # A private generator: DataLoader otherwise draws its worker seed from torch's global RNG,
        # and a resumed run (new loader mid-epoch) would then shift every later dropout mask.
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) % 2**63)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=torch.cuda.is_available(), generator=generator)
        try:
            yield from loader
        except Exception as exc:
            # A worker's error arrives re-raised with the worker's traceback as its message: keep our sentence.
            found = re.findall(r"^meanloc\.[\w.]+Error: (.+)$", str(exc), flags=re.MULTILINE)
            if "DataLoader worker" not in str(exc) or not found:
                raise
            raise MeanlocError(found[-1]) from None


class RamPairs(_SampledPairs):
    def __init__(self, split: TrainSplit, config: TrainConfig, img_size: int, progress: bool) -> None:
        super().__init__(split, config)
        self.cache = CachedPairs(split.pairs, img_size, augment=config.augment, progress=progress,
                                 query_view=self.query_view, skip_bad_images=config.skip_bad_images,
                                 attitude_noise=sensor_preset(config.attitude_noise))

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        for batch in batches:
            yield self.cache.batch(batch)


def vet_training_images(split: TrainSplit, skip_bad_images: bool, progress: bool = False) -> TrainSplit:
    """Refuse a split with bad images, or (`skip_bad_images`) drop the pairs that use them.

    The satellite images were decoded by `load_train_pairs`; every drone image is probed here
    (header and end of file, no decoding: a few small reads each), so a truncated or oversized
    file stops the run before the first step instead of hours into it.
    """
    bad = BadImages()
    for path in split.unreadable:
        try:
            read_image(path)
        except ImageError as exc:
            bad.add(exc)
    bad_drones = set()
    for path in tqdm(sorted({pair.drone_path for pair in split.pairs}), desc="checking images", unit="img",
                     disable=not progress, leave=False):
        try:
            probe_image(path)
        except ImageError as exc:
            bad.add(exc)
            bad_drones.add(path)
    if not bad:
        return split
    if not skip_bad_images:
        raise MeanlocError(f"{bad.count} training image(s) in {split.root} cannot be used, the first: {bad.examples[0]}; "
                           "replace or remove them, or pass --skip-bad-images to train without them")
    print(f"meanloc train: {bad.summary()}", file=sys.stderr)
    kept = [pair for pair in split.pairs if pair.drone_path not in bad_drones]
    used = sorted({pair.class_index for pair in kept})
    if not used:
        raise MeanlocError(f"no training pair of {split.root} is left without its bad images")
    new_index = {old: new for new, old in enumerate(used)}
    emptied = [split.class_ids[i] for i in range(len(split.class_ids)) if i not in new_index]
    return dataclasses.replace(
        split,
        pairs=[Pair(p.sat_path, p.drone_path, new_index[p.class_index]) for p in kept],
        class_ids=[split.class_ids[i] for i in used],
        one_view_classes={**split.one_view_classes,
                          "satellite_only": sorted(split.one_view_classes.get("satellite_only", []) + emptied)},
    )


def load_train_data(config: TrainConfig, img_size: int, progress: bool = False) -> DiskPairs | RamPairs:
    if config.attitude_noise != "ideal" and not config.cache_images:
        raise MeanlocError("--attitude-noise re-rectifies the cached views: it needs --cache-images")
    # 'synthetic' reads the University-1652 layout the generator writes.
    split = load_train_pairs(config.data_root, config.dataset, config.altitude)
    split = vet_training_images(split, config.skip_bad_images, progress)
    if config.cache_images:
        return RamPairs(split, config, img_size, progress)
    return DiskPairs(split, config, img_size)
