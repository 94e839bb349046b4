"""PairAugment / PairDataset: joint flip, satellite-only RandomRotate90, seeding, corrupt files."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_support import make_university, write_corrupt

from meanloc.errors import MeanlocError
from meanloc.training.augment import PairAugment
from meanloc.training.data.splits import Pair, load_train_pairs
from meanloc.training.pairs import PairDataset


def half_bright(height=40, width=48):
    """RGB uint8: left half bright, right half dark, and the matching +1/-1 sign map."""
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    image[:, : width // 2] = 200
    return image


def correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def best_orientation(image_chw, candidates):
    """Index of the candidate map the image correlates with most (dropout holes and colour
    jitter blur the picture, but the bright half stays where the geometry put it)."""
    return int(np.argmax([correlation(image_chw.mean(axis=0), c) for c in candidates]))


def test_joint_flip_and_rotation_on_satellite_only():
    size = 32
    augment = PairAugment(img_size=size)
    sign = np.where(np.arange(size) < size // 2, 1.0, -1.0)[None, :].repeat(size, axis=0)
    orientations = [np.rot90(sign, k) for k in range(4)]  # bright left, bottom, right, top
    ks, flips = set(), set()
    for seed in range(24):
        out = augment(half_bright(), half_bright(), seed=seed)
        assert out.satellite.shape == out.drone.shape == (3, size, size)
        assert out.satellite.dtype == np.float32
        flipped = 2 if out.flipped else 0  # a horizontal flip of this pattern = a half turn
        assert best_orientation(out.drone, orientations) == flipped
        assert best_orientation(out.satellite, orientations) == (flipped + out.satellite_rot90_k) % 4
        ks.add(out.satellite_rot90_k)
        flips.add(out.flipped)
    assert len(ks) >= 3 and flips == {True, False}


def test_augmentation_depends_only_on_seed():
    augment = PairAugment(img_size=32)
    rng = np.random.default_rng(0)
    sat, drone = (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    a, b = augment(sat, drone, seed=(1, 0, 5)), PairAugment(img_size=32)(sat, drone, seed=(1, 0, 5))
    assert np.array_equal(a.satellite, b.satellite) and np.array_equal(a.drone, b.drone)
    others = [augment(sat, drone, seed=(1, epoch, 5)) for epoch in (1, 2, 3)]
    assert not any(
        np.array_equal(a.satellite, c.satellite) and np.array_equal(a.drone, c.drone) for c in others
    )


def test_random_steps_draw_independently():
    """Each step makes its own draw: ImageCompression (p=0.5) and ColorJitter (p=0.5) must not
    always fire together, and over many seeds every step fires sometimes."""
    augment = PairAugment(img_size=16)
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    applied = [augment(image, image, seed=s).applied for s in range(80)]
    sat = [set(a["satellite"]) for a in applied]
    together = [("ImageCompression" in names) == ("ColorJitter" in names) for names in sat]
    assert 0.2 < sum(together) / len(together) < 0.8
    seen = set().union(*sat)
    assert {"ImageCompression", "ColorJitter", "RandomRotate90", "Resize", "Normalize"} <= seen
    assert seen & {"AdvancedBlur", "Sharpen"} and seen & {"GridDropout", "CoarseDropout"}
    assert all("RandomRotate90" not in a["drone"] for a in applied)


@pytest.fixture(scope="module")
def noisy_university(tmp_path_factory) -> Path:
    return make_university(tmp_path_factory.mktemp("u1652_noise"), noise=True)


def test_pair_dataset_items_and_epochs(noisy_university):
    split = load_train_pairs(noisy_university, "university")
    dataset = PairDataset(split.pairs, img_size=32, augment=True, seed=3, return_rot90=True)
    sat, drone, label, k = dataset[5]
    assert sat.shape == drone.shape == (3, 32, 32) and sat.dtype == torch.float32
    assert label == split.pairs[5].class_index and k in (0, 1, 2, 3)
    again = dataset[5]
    assert torch.equal(sat, again[0]) and torch.equal(drone, again[1])
    dataset.set_epoch(1)
    other = dataset[5]
    assert not (torch.equal(sat, other[0]) and torch.equal(drone, other[1]))
    assert len(PairDataset(split.pairs, 32, augment=False)[0]) == 3


def test_corrupt_drone_is_replaced_by_same_class_pair_and_counted(noisy_university):
    split = load_train_pairs(noisy_university, "university")
    dataset = PairDataset(split.pairs, img_size=32, augment=False, skip_bad_images=True)
    bad = next(i for i, p in enumerate(split.pairs) if p.drone_path.endswith("0002/image-04.jpeg"))
    first_of_class = next(
        i for i, p in enumerate(split.pairs) if p.class_index == split.pairs[bad].class_index
    )
    _, drone, label = dataset[bad]
    assert label == split.pairs[bad].class_index
    assert torch.equal(drone, dataset[first_of_class][1])  # wrapped around to the class's first pair
    assert dataset.unreadable_count == 1
    # the counter is shared with DataLoader worker processes
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    labels = torch.cat([batch[2] for batch in loader])
    assert labels.tolist() == split.pair_classes
    assert dataset.unreadable_count == 2


def test_class_without_any_readable_pair_is_one_line_error(tmp_path):
    sat = write_corrupt(tmp_path / "sat.jpg")
    drone = tmp_path / "drone.png"
    cv2.imwrite(str(drone), np.zeros((8, 8, 3), np.uint8))
    dataset = PairDataset([Pair(str(sat), str(drone), 0)], img_size=32, augment=False, skip_bad_images=True)
    with pytest.raises(MeanlocError, match="none of its 1 pairs is readable"):
        dataset[0]
    refusing = PairDataset([Pair(str(sat), str(drone), 0)], img_size=32, augment=False)
    with pytest.raises(MeanlocError, match=r"sat\.jpg: it is a truncated"):
        refusing[0]


def test_pose_aware_pairs_turn_together():
    """With north-up (rectified) drone views, RandomRotate90 turns both views by the same amount."""
    size = 32
    plain, joint = PairAugment(img_size=size), PairAugment(img_size=size, joint_rot90=True)
    ks = set()
    for seed in range(12):
        reference, together = plain(half_bright(), half_bright(), seed=seed), joint(half_bright(), half_bright(), seed=seed)
        k = together.satellite_rot90_k
        assert np.array_equal(together.satellite, reference.satellite)
        assert np.array_equal(together.drone, np.rot90(reference.drone, k, axes=(1, 2)))
        ks.add(k)
    assert len(ks) >= 3
