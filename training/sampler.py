"""MEAN's class-unique batch order (mean-model.md §6.2), seeded, per epoch, and DDP-aware.

The reference (Sample4Geo's `shuffle()`), per epoch:
1. shuffle all pairs into a pool;
2. pop pairs from the front; accept one if its class is not yet in the current batch and the
   pair was not used this epoch, otherwise push it to the back of the pool;
3. close a batch when it holds `batch_size` pairs;
4. stop when the pool is empty or after 512 consecutive rejections;
5. drop the last partial batch and whatever is left in the pool.

`batch_size` is the GLOBAL batch. Under DDP every rank builds the same global batches from the
same seed and epoch (no communication needed) and takes its own contiguous slice, so N ranks x
B pairs see exactly the batches 1 process x N*B would, and every global batch has distinct
classes (InfoNCE over all-gathered embeddings never sees a false negative).
"""

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from meanloc.errors import MeanlocError

MAX_CONSECUTIVE_REJECTIONS = 512


def class_unique_batches(
    pair_classes: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """One epoch of the reference algorithm over pair indices; returns full batches only."""
    pool = deque(int(i) for i in rng.permutation(len(pair_classes)))
    used: set[int] = set()
    batches: list[list[int]] = []
    batch: list[int] = []
    batch_classes: set[int] = set()
    rejections = 0
    while pool:
        index = pool.popleft()
        if pair_classes[index] not in batch_classes and index not in used:
            batch.append(index)
            batch_classes.add(pair_classes[index])
            used.add(index)
            rejections = 0
        else:
            if index not in used:
                pool.append(index)
            rejections += 1
            if rejections >= MAX_CONSECUTIVE_REJECTIONS:
                break
        if len(batch) >= batch_size:
            batches.append(batch)
            batch, batch_classes = [], set()
    return batches


class ClassUniqueBatchSampler:
    """A `batch_sampler` for `torch.utils.data.DataLoader` yielding this rank's share of each
    class-unique global batch.

    Call `set_epoch(epoch)` before each epoch (as with DistributedSampler). `global_batches(epoch)`
    gives the whole order (identical on every rank); `__iter__` yields
    `global_batch[rank * b:(rank + 1) * b]` with b = batch_size // world_size.
    """

    def __init__(
        self,
        pair_classes: Sequence[int],
        batch_size: int,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise MeanlocError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise MeanlocError(f"invalid rank {rank} for world size {world_size}")
        if batch_size % world_size:
            raise MeanlocError(
                f"global batch size {batch_size} is not divisible by the {world_size} processes"
            )
        num_classes = len(set(pair_classes))
        if batch_size > num_classes:
            raise MeanlocError(
                f"global batch size {batch_size} exceeds the {num_classes} classes: "
                "a class-unique batch cannot be filled"
            )
        self.pair_classes = [int(c) for c in pair_classes]
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches `__iter__` and `__len__` use."""
        self.epoch = int(epoch)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every global batch of `epoch` (default: the current one), a pure function of seed and epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cache = (epoch, class_unique_batches(self.pair_classes, self.batch_size, rng))
        return self._cache[1]

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.local_batch_size
        for batch in self.global_batches():
            yield batch[start : start + self.local_batch_size]

    def __len__(self) -> int:
        return len(self.global_batches())
