"""Tiny on-disk datasets in the real University-1652 and SUES-200 layouts, for the data and evaluation tests.

Images are constant grey squares whose grey level encodes a code, so a test backend can map an
image back to an embedding it chooses (see `code_of`), plus deliberately corrupt files.
"""

from pathlib import Path

import cv2
import numpy as np

from meanloc.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD

CORRUPT_BYTES = b"\xff\xd8\xff\xe0 this is not really a JPEG"


def write_image(path: Path, code: int = 0, size: int = 24, noise_seed: int | None = None) -> Path:
    """A constant image of grey level 10 + 20 * code (PNG unless the suffix says JPEG); with
    `noise_seed`, random texture instead (for augmentation tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise_seed is None:
        image = np.full((size, size, 3), 10 + 20 * code, dtype=np.uint8)
    else:
        image = np.random.default_rng(noise_seed).integers(0, 256, (size, size + 6, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(CORRUPT_BYTES)
    return path


def code_of(batch: np.ndarray) -> np.ndarray:
    """Invert `write_image`'s grey level from preprocessed (N, 3, S, S) float32 images."""
    value = (batch[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0
    return np.rint((value - 10) / 20).astype(int)


def make_university(root: Path, noise: bool = False) -> Path:
    """train: 0001-0004 in both views (3 drone images each, one corrupt in 0002), 0005 drone-only,
    0006 satellite-only, 0007 with a corrupt satellite only. test/val: see `make_university_test`."""
    train = root / "train"
    seed = 0
    for cid in ("0001", "0002", "0003", "0004", "0005", "0007"):
        for n in range(3):
            seed += 1
            write_image(train / "drone" / cid / f"image-{n + 1:02d}.jpeg", noise_seed=seed if noise else None)
    for cid in ("0001", "0002", "0003", "0004", "0006"):
        seed += 1
        write_image(train / "satellite" / cid / f"{cid}.jpg", noise_seed=seed if noise else None)
    write_corrupt(train / "drone" / "0002" / "image-04.jpeg")
    write_corrupt(train / "satellite" / "0007" / "0007.jpg")
    make_university_test(root / "test")
    make_university_test(root / "val", with_s2d=False)
    return root


# Codes: drone 0000 -> 0, drone 0001 -> 1, drone 0002 -> 2, sat 0000 -> 3, sat 0001 -> 4, sat 0002 -> 5.
DRONE_CODE = {"0000": 0, "0001": 1, "0002": 2}
SAT_CODE = {"0000": 3, "0001": 4, "0002": 5}


def make_university_test(base: Path, with_s2d: bool = True) -> None:
    """Query classes 0000 and 0001, distractor class 0002 (gallery only); one corrupt query drone image."""
    for cid in ("0000", "0001"):
        for n in range(2):
            write_image(base / "query_drone" / cid / f"image-{n + 1:02d}.png", DRONE_CODE[cid])
    write_corrupt(base / "query_drone" / "0001" / "image-03.jpeg")
    for cid in ("0000", "0001", "0002"):
        write_image(base / "gallery_satellite" / cid / f"{cid}.png", SAT_CODE[cid])
    if not with_s2d:
        return
    for cid in ("0000", "0001"):
        write_image(base / "query_satellite" / cid / f"{cid}.png", SAT_CODE[cid])
    for cid in ("0000", "0001", "0002"):
        for n in range(2):
            write_image(base / "gallery_drone" / cid / f"image-{n + 1:02d}.png", DRONE_CODE[cid])


def make_sues_raw(root: Path, locations: int = 5, altitudes: tuple[int, ...] = (150, 200)) -> Path:
    """Raw release: satellite-view/<id>/0.png, drone-view/<h>/<id>/<h>-<k>.jpg (2 frames)."""
    for index in range(1, locations + 1):
        cid = f"{index:04d}"
        write_image(root / "satellite-view" / cid / "0.png", index % 12)
        for altitude in altitudes:
            for frame in range(2):
                write_image(root / "drone-view" / str(altitude) / cid / f"{altitude}-{frame}.jpg", index % 12)
    return root


def make_sues_split(root: Path, altitude: int = 150) -> Path:
    """After split_datasets.py: train 0001-0003, test queries 0004-0005, galleries 0001-0005."""
    ids = [f"{i:04d}" for i in range(1, 6)]
    train, test = root / "Training" / str(altitude), root / "Testing" / str(altitude)
    for cid in ids[:3]:
        write_image(train / "satellite" / cid / "0.png")
        for frame in range(2):
            write_image(train / "drone" / cid / f"{frame}.jpg")
    for cid in ids[3:]:
        write_image(test / "query_satellite" / cid / "0.png")
        write_image(test / "query_drone" / cid / "0.jpg")
    for cid in ids:
        write_image(test / "gallery_satellite" / cid / "0.png")
        write_image(test / "gallery_drone" / cid / "0.jpg")
    return root
