"""Connects the dataset readers (`meanloc.training.data`) to the trainer's `TrainData` protocol.

Two loaders over the same pairs and the same class-unique global batch order:
- `DiskPairs`: the reference pipeline, `PairDataset` (albumentations, read per step) in a DataLoader;
- `RamPairs`: images decoded once into RAM (`CachedPairs`) for few-core CPUs (the demo).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from meanloc.errors import MeanlocError
from meanloc.runtime.localize.synthetic import sensor_preset

from .cached_pairs import CachedPairs
from .config import TrainConfig
from .data.pairs import PairDataset
from .data.query_images import dataset_query_view
from .data.sampler import ClassUniqueBatchSampler
from .data.splits import TrainSplit, load_train_pairs
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
                                   query_view=self.query_view)
        self.num_workers = config.num_workers
        self.seed = config.seed

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        self.dataset.set_epoch(epoch)  # augmentations depend only on (seed, epoch, index)
        # A private generator: DataLoader otherwise draws its worker seed from torch's global RNG,
        # and a resumed run (new loader mid-epoch) would then shift every later dropout mask.
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) % 2**63)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            pin_memory=torch.cuda.is_available(), generator=generator)
        yield from loader


class RamPairs(_SampledPairs):
    def __init__(self, split: TrainSplit, config: TrainConfig, img_size: int, progress: bool) -> None:
        super().__init__(split, config)
        self.cache = CachedPairs(split.pairs, img_size, augment=config.augment, progress=progress,
                                 query_view=self.query_view, attitude_noise=sensor_preset(config.attitude_noise))

    def iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Batch]:
        for batch in batches:
            yield self.cache.batch(batch)


def load_train_data(config: TrainConfig, img_size: int, progress: bool = False) -> DiskPairs | RamPairs:
    if config.attitude_noise != "ideal" and not config.cache_images:
        raise MeanlocError("--attitude-noise re-rectifies the cached views: it needs --cache-images")
    # 'synthetic' reads the University-1652 layout the generator writes.
    split = load_train_pairs(config.data_root, config.dataset, config.altitude)
    if config.cache_images:
        return RamPairs(split, config, img_size, progress)
    return DiskPairs(split, config, img_size)
