"""Training pairs and evaluation splits, independent of which benchmark they come from.

`load_train_pairs` turns (satellite, drone) listings into MEAN's pairs (mean-model.md §6.2):
each class's first readable satellite image (sorted) paired with every drone image of the class.
The class index is the position in the sorted list of class ids present in both views.

`load_eval_split` gives query and gallery paths with integer labels for one direction.

Bad data is skipped and counted, never fatal, except a missing or empty folder (one-line
MeanlocError):
- a class present in one view only is skipped and listed in `one_view_classes`;
- satellite images are decoded here (one per class, so cheap) and an unreadable one is skipped
  and listed in `unreadable`; drone images are far too many to decode up front (37,854 on
  University-1652), so `PairDataset` detects those when it reads them (see pairs.py).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.images import ImageError, read_image

from .listing import ViewListing
from .sues200 import check_altitude, sues_eval_views, sues_train_views
from .university import university_eval_views, university_train_views

log = logging.getLogger(__name__)

DIRECTIONS = {"d2s": "drone -> satellite", "s2d": "satellite -> drone"}
# dataset name -> display name; 'synthetic' is meanloc's generator output (University-1652 layout).
DATASETS = {
    "university": "University-1652",
    "synthetic": "synthetic (University-1652 layout)",
    "sues200": "SUES-200",
}


class Pair(NamedTuple):
    """One training pair: a class's satellite image, one of its drone images, the class index."""

    sat_path: str
    drone_path: str
    class_index: int


@dataclass
class TrainSplit:
    """MEAN training pairs of one dataset (and altitude) plus what was skipped and why."""

    dataset: str
    root: str
    altitude: int | None
    pairs: list[Pair]
    class_ids: list[str]
    # {"satellite_only": [...], "drone_only": [...]}: classes skipped for lacking a view.
    one_view_classes: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def pair_classes(self) -> list[int]:
        """Class index of every pair, in pair order (what `ClassUniqueBatchSampler` takes)."""
        return [pair.class_index for pair in self.pairs]

    def summary(self) -> dict[str, Any]:
        """Counts for logs and reports (classes, pairs, what was skipped)."""
        return {
            "dataset": self.dataset,
            "root": self.root,
            "altitude": self.altitude,
            "classes": self.num_classes,
            "pairs": len(self.pairs),
            "skipped_one_view_classes": {view: len(ids) for view, ids in self.one_view_classes.items()},
            "skipped_unreadable_satellite_images": len(self.unreadable),
        }


@dataclass
class EvalSplit:
    """Query and gallery images of one retrieval direction, with integer labels.

    Labels index `class_ids` (the sorted union of query and gallery class ids), so that equal
    labels mean the same class folder; they are never -1 here (the metrics decide what is junk).
    """

    dataset: str
    root: str
    split: str
    direction: str
    altitude: int | None
    query_paths: list[str]
    query_labels: np.ndarray
    gallery_paths: list[str]
    gallery_labels: np.ndarray
    class_ids: list[str]

    def summary(self) -> dict[str, Any]:
        """Counts for the report: queries, gallery size on disk, distractor classes, ..."""
        query_classes = set(self.query_labels.tolist())
        gallery_classes = set(self.gallery_labels.tolist())
        return {
            "queries_on_disk": len(self.query_paths),
            "query_classes": len(query_classes),
            "gallery_on_disk": len(self.gallery_paths),
            "gallery_classes": len(gallery_classes),
            "distractor_classes": len(gallery_classes - query_classes),
            "query_classes_without_gallery_match": len(query_classes - gallery_classes),
        }


def check_dataset(dataset: str) -> str:
    """The dataset name, or a one-line error listing the valid ones."""
    if dataset not in DATASETS:
        raise MeanlocError(f"unknown dataset '{dataset}' (valid: {', '.join(DATASETS)})")
    return dataset


def check_direction(direction: str) -> str:
    """The direction ('d2s' or 's2d'), or a one-line error."""
    if direction not in DIRECTIONS:
        raise MeanlocError(f"unknown direction '{direction}' (valid: {', '.join(DIRECTIONS)})")
    return direction


def _altitude_for(dataset: str, altitude: int | str | None) -> int | None:
    if dataset != "sues200":
        if altitude is not None:
            raise MeanlocError(f"an altitude applies to SUES-200 only, not to {DATASETS[dataset]}")
        return None
    return check_altitude(altitude)


def default_image_check(path: Path) -> bool:
    """True if the image passes meanloc's image reader (`meanloc.runtime.images`)."""
    try:
        read_image(path)
    except ImageError:
        return False
    return True


def load_train_pairs(
    root: str | Path,
    dataset: str = "university",
    altitude: int | str | None = None,
    image_check: Callable[[Path], bool] = default_image_check,
) -> TrainSplit:
    """MEAN training pairs of a University-1652-layout or SUES-200 (one altitude) dataset."""
    check_dataset(dataset)
    altitude = _altitude_for(dataset, altitude)
    if dataset == "sues200":
        satellite, drone = sues_train_views(root, altitude)
    else:
        satellite, drone = university_train_views(root)
    return _pairs_from_views(satellite, drone, dataset, str(root), altitude, image_check)


def _pairs_from_views(
    satellite: ViewListing,
    drone: ViewListing,
    dataset: str,
    root: str,
    altitude: int | None,
    image_check: Callable[[Path], bool],
) -> TrainSplit:
    sat_ids, drone_ids = set(satellite.classes), set(drone.classes)
    unreadable: list[str] = []
    chosen_sat: dict[str, Path] = {}
    for class_id in sorted(sat_ids & drone_ids):
        for path in satellite.classes[class_id]:
            if image_check(path):
                chosen_sat[class_id] = path
                break
            unreadable.append(str(path))
    class_ids = sorted(chosen_sat)
    if not class_ids:
        raise MeanlocError(
            f"{DATASETS[dataset]} at {root}: no class has both a readable satellite image and drone images"
        )
    pairs = [
        Pair(str(chosen_sat[class_id]), str(drone_path), index)
        for index, class_id in enumerate(class_ids)
        for drone_path in drone.classes[class_id]
    ]
    split = TrainSplit(
        dataset=dataset,
        root=root,
        altitude=altitude,
        pairs=pairs,
        class_ids=class_ids,
        one_view_classes={
            "satellite_only": sorted(sat_ids - drone_ids),
            "drone_only": sorted(drone_ids - sat_ids),
        },
        unreadable=unreadable,
    )
    for view, ids in split.one_view_classes.items():
        if ids:
            log.warning(
                "%s: %d class(es) skipped, %s (first: %s)", root, len(ids), view.replace("_", " "), ids[0]
            )
    if unreadable:
        log.warning(
            "%s: %d unreadable satellite image(s) skipped (first: %s)", root, len(unreadable), unreadable[0]
        )
    return split


def load_eval_split(
    root: str | Path,
    dataset: str = "university",
    direction: str = "d2s",
    split: str = "test",
    altitude: int | str | None = None,
) -> EvalSplit:
    """Query/gallery paths and labels of one direction ('d2s' or 's2d') of a test or val split."""
    check_dataset(dataset)
    check_direction(direction)
    altitude = _altitude_for(dataset, altitude)
    if dataset == "sues200":
        query, gallery = sues_eval_views(root, direction, split, altitude)
    else:
        query, gallery = university_eval_views(root, direction, split)
    if not query.classes:
        raise MeanlocError(f"{DATASETS[dataset]} {split} {direction}: no query images in {query.folder}")
    class_ids = sorted(set(query.classes) | set(gallery.classes))
    label_of = {class_id: index for index, class_id in enumerate(class_ids)}

    def flatten(listing: ViewListing) -> tuple[list[str], np.ndarray]:
        paths, labels = [], []
        for class_id, images in listing.classes.items():  # already sorted by class id
            paths.extend(str(p) for p in images)
            labels.extend([label_of[class_id]] * len(images))
        return paths, np.asarray(labels, dtype=np.int64)

    query_paths, query_labels = flatten(query)
    gallery_paths, gallery_labels = flatten(gallery)
    return EvalSplit(
        dataset=dataset,
        root=str(root),
        split=split,
        direction=direction,
        altitude=altitude,
        query_paths=query_paths,
        query_labels=query_labels,
        gallery_paths=gallery_paths,
        gallery_labels=gallery_labels,
        class_ids=class_ids,
    )
