"""ClassUniqueBatchSampler: the reference algorithm, determinism, DDP slicing, DataLoader use."""

import copy

import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.training.sampler import ClassUniqueBatchSampler, class_unique_batches


def reference_shuffle(pairs, pool_order, batch_size):
    """Sample4Geo's `shuffle()` transcribed (list.pop(0), sets, 512 rejections), with the pool's
    initial random order given instead of drawn by `random.shuffle`."""
    pair_pool = copy.deepcopy([pairs[i] for i in pool_order])
    pairs_epoch, idx_batch, batches, current_batch = set(), set(), [], []
    break_counter = 0
    while True:
        if len(pair_pool) > 0:
            pair = pair_pool.pop(0)
            idx, _, _ = pair
            if idx not in idx_batch and pair not in pairs_epoch:
                idx_batch.add(idx)
                current_batch.append(pair)
                pairs_epoch.add(pair)
                break_counter = 0
            else:
                if pair not in pairs_epoch:
                    pair_pool.append(pair)
                break_counter += 1
            if break_counter >= 512:
                break
        else:
            break
        if len(current_batch) >= batch_size:
            batches.extend(current_batch)
            idx_batch = set()
            current_batch = []
    return batches


def make_classes(seed, num_classes=40, max_per_class=12):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_per_class, num_classes)
    return [c for c, n in enumerate(counts) for _ in range(n)]


@pytest.mark.parametrize(("seed", "batch_size"), [(0, 8), (1, 16), (2, 40)])
def test_matches_reference_transcription(seed, batch_size):
    classes = make_classes(seed)
    pairs = [(c, f"sat{c}", f"drone{i}") for i, c in enumerate(classes)]
    ours = class_unique_batches(classes, batch_size, np.random.default_rng(seed))
    pool_order = np.random.default_rng(seed).permutation(len(classes))
    expected = reference_shuffle(pairs, pool_order, batch_size)
    assert [pairs[i] for batch in ours for i in batch] == expected


def test_batches_are_class_unique_full_and_unrepeated():
    classes = make_classes(3)
    sampler = ClassUniqueBatchSampler(classes, batch_size=10, seed=5)
    batches = sampler.global_batches(0)
    assert batches and all(len(b) == 10 for b in batches)
    assert all(len({classes[i] for i in b}) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert len(flat) > len(classes) // 2  # most pairs are used


def test_512_consecutive_rejections_end_the_epoch():
    # a single class: after the first pair every pop is rejected and pushed back, forever,
    # unless the 512-rejection rule stops it; the one-pair partial batch is then dropped
    assert class_unique_batches([0] * 100, 2, np.random.default_rng(0)) == []


def test_last_partial_batch_is_dropped():
    batches = class_unique_batches(list(range(10)), 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4]


def test_seeded_deterministic_and_epoch_dependent():
    classes = make_classes(4)
    a = ClassUniqueBatchSampler(classes, 8, seed=1)
    b = ClassUniqueBatchSampler(classes, 8, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) == a.global_batches(3)
    assert a.global_batches(3) != a.global_batches(4)
    assert ClassUniqueBatchSampler(classes, 8, seed=2).global_batches(3) != a.global_batches(3)
    assert len(a) == len(a.global_batches(3))


def test_ranks_take_contiguous_slices_of_the_same_global_batches():
    classes = make_classes(5)
    world = [ClassUniqueBatchSampler(classes, 12, seed=7, rank=r, world_size=3) for r in range(3)]
    for sampler in world:
        sampler.set_epoch(2)
    single = ClassUniqueBatchSampler(classes, 12, seed=7)
    single.set_epoch(2)
    per_rank = [list(s) for s in world]
    rebuilt = [[i for r in range(3) for i in per_rank[r][step]] for step in range(len(single))]
    assert rebuilt == list(single)
    assert all(len(batch) == 4 for batch in per_rank[1])


def test_with_dataloader_as_batch_sampler():
    torch = pytest.importorskip("torch")
    classes = make_classes(6)
    dataset = torch.utils.data.TensorDataset(torch.tensor(classes))
    sampler = ClassUniqueBatchSampler(classes, 6, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    for (labels,), batch in zip(loader, sampler.global_batches(0)):
        assert labels.tolist() == [classes[i] for i in batch]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "must be >= 1"),
        ({"batch_size": 8, "world_size": 3}, "not divisible"),
        ({"batch_size": 8, "rank": 2, "world_size": 2}, "invalid rank"),
        ({"batch_size": 64}, "exceeds the 40 classes"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(MeanlocError, match=message):
        ClassUniqueBatchSampler(make_classes(0), **kwargs)
