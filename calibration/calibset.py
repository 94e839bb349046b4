"""The calibration set: which images INT8 ranges are computed from, and how they are fed.

Drawn either from a plain image folder (stratified over its sub-folders) or from a dataset split
in the University-1652 layout (drone and satellite views alternate, and within a view the
classes take turns), so a few hundred images cover both views and many places. The draw is
deterministic for a seed. Images go through `meanloc.runtime.preprocess.preprocess_batch`,
the same function the runtime uses, and a dataset's drone views are prepared as the model's
queries (`meanloc.runtime.query_view`), so the ranges describe what the deployed model will see.

Only whole batches are used: TensorRT's calibrator has a fixed batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.images import BadImages, ImageError, probe_image, read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.runtime.query_view import FRAMES_AS_CAPTURED, QueryView
from meanloc.training.data.listing import is_image_file, require_folder
from meanloc.training.data.query_images import read_query_image
from meanloc.training.data.university import university_eval_views, university_train_views

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CalibrationSet:
    paths: tuple[Path, ...]
    spec: PreprocessSpec
    batch_size: int
    source: str
    seed: int
    # Drone views among `paths`, prepared as the model's queries.
    query_paths: frozenset[Path] = frozenset()
    query_view: QueryView = FRAMES_AS_CAPTURED
    # Images of the draw passed over because they are bad (only with skip_bad_images).
    bad_images: BadImages = field(default_factory=BadImages, compare=False)

    @property
    def num_batches(self) -> int:
        return len(self.paths) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def batches(self) -> Iterator[np.ndarray]:
        """(batch, 3, S, S) float32 batches, preprocessed exactly as at run time."""
        for start in range(0, self.num_images, self.batch_size):
            chunk = self.paths[start : start + self.batch_size]
            yield preprocess_batch([self._read(path) for path in chunk], self.spec)

    def _read(self, path: Path) -> np.ndarray:
        if path in self.query_paths:
            return read_query_image(path, self.query_view, self.spec.size)
        return read_image(path)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_images": self.num_images,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "preprocess": self.spec.to_dict(),
            "query_view": self.query_view.to_dict(),
        }


def _round_robin(groups: Sequence[Sequence[Path]]) -> list[Path]:
    """Take one item from each group in turn until all are exhausted."""
    order: list[Path] = []
    longest = max((len(group) for group in groups), default=0)
    for index in range(longest):
        order.extend(group[index] for group in groups if index < len(group))
    return order


def _shuffled_strata(strata: dict[str, list[Path]], rng: np.random.Generator) -> list[Path]:
    """Shuffle inside each stratum and the strata order, then interleave them."""
    names = sorted(strata)
    groups = []
    for name in (names[i] for i in rng.permutation(len(names))):
        paths = sorted(strata[name])
        groups.append([paths[i] for i in rng.permutation(len(paths))])
    return _round_robin(groups)


def _vetted(ordered: list[Path], wanted: int, skip_bad_images: bool) -> tuple[list[Path], BadImages]:
    """The first `wanted` images of the draw that pass the image checks (header and end of file):
    a bad one is refused, or with `skip_bad_images` passed over and counted."""
    good: list[Path] = []
    bad = BadImages()
    for path in ordered:
        if len(good) >= wanted:
            break
        try:
            probe_image(path)
        except ImageError as exc:
            if not skip_bad_images:
                raise MeanlocError(f"{str(exc).rstrip('.')}; pass --skip-bad-images to calibrate without it") from None
            bad.add(exc)
            continue
        good.append(path)
    return good, bad


def _finish(
    ordered: list[Path], num_images: int, batch_size: int, spec: PreprocessSpec, source: str, seed: int,
    query_paths: frozenset[Path] = frozenset(), query_view: QueryView = FRAMES_AS_CAPTURED,
    skip_bad_images: bool = False,
) -> CalibrationSet:
    if batch_size < 1 or num_images < 1:
        raise MeanlocError(
            f"batch size and number of images must be >= 1 (got {batch_size} and {num_images})"
        )
    if not ordered:
        raise MeanlocError(f"no images found in {source}")
    ordered, bad = _vetted(ordered, num_images, skip_bad_images)
    if not ordered:
        raise MeanlocError(f"no usable images found in {source} ({bad.summary()})")
    if len(ordered) < batch_size:
        raise MeanlocError(
            f"only {len(ordered)} images in {source}, fewer than one calibration batch of {batch_size}"
        )
    usable = min(num_images, len(ordered)) // batch_size * batch_size
    if usable == 0:
        raise MeanlocError(f"--num-images {num_images} is fewer than one calibration batch of {batch_size}")
    return CalibrationSet(tuple(ordered[:usable]), spec, batch_size, source, seed, query_paths, query_view, bad)


def from_folder(
    folder: str | Path, spec: PreprocessSpec, num_images: int = 256, batch_size: int = 16, seed: int = 0,
    skip_bad_images: bool = False,
) -> CalibrationSet:
    """Images anywhere under `folder`, stratified by the sub-folder that holds them."""
    root = require_folder(Path(folder), "calibration image")
    strata: dict[str, list[Path]] = {}
    for path in root.rglob("*"):
        if is_image_file(path):
            strata.setdefault(str(path.parent.relative_to(root)), []).append(path)
    ordered = _shuffled_strata(strata, np.random.default_rng(seed))
    return _finish(ordered, num_images, batch_size, spec, f"image folder {root}", seed,
                   skip_bad_images=skip_bad_images)


def from_dataset(
    root: str | Path,
    spec: PreprocessSpec,
    split: str = "train",
    num_images: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    query_view: QueryView = FRAMES_AS_CAPTURED,
    skip_bad_images: bool = False,
) -> CalibrationSet:
    """Drone and satellite images of a University-1652-layout split, alternating views, classes in turn."""
    if split not in SPLITS:
        raise MeanlocError(f"unknown split '{split}' (valid: {', '.join(SPLITS)})")
    if split == "train":
        satellite, drone = university_train_views(root)
    else:
        drone, satellite = university_eval_views(root, "d2s", split)
    views = (satellite, drone)
    rng = np.random.default_rng(seed)
    per_view = [_shuffled_strata(view.classes, rng) for view in views]
    # Drone views first: they are the ones queried onboard, and also the majority.
    ordered = _round_robin(sorted(per_view, key=lambda paths: -len(paths)))
    folders = ", ".join(str(view.folder) for view in views)
    query_paths = frozenset(path for paths in drone.classes.values() for path in paths)
    return _finish(ordered, num_images, batch_size, spec, f"dataset split {split} ({folders})", seed,
                   query_paths, query_view, skip_bad_images)
