"""SUES-200 reader (datasets-and-metrics.md §2), per flight altitude, for both of its layouts.

Raw release:
```
<root>/satellite-view/<id>/0.png
<root>/drone-view/<altitude>/<id>/*.jpg
```
After the benchmark's `split_datasets.py --coff 0.6`:
```
<root>/Training/<altitude>/{satellite,drone}/<id>/...
<root>/Testing/<altitude>/{query_drone,query_satellite,gallery_drone,gallery_satellite}/<id>/...
```
For the raw release the split is made here the same way, but deterministically: the first 60 %
of the *sorted* location ids train, the rest are test queries, and the galleries hold every
location (the benchmark script uses unsorted glob order; meanloc sorts and reports the split).
"""

from pathlib import Path

from meanloc.errors import MeanlocError

from .listing import ViewListing, list_view, require_folder

ALTITUDES = (150, 200, 250, 300)
TRAIN_FRACTION = 0.6  # split_datasets.py --coff 0.6
EVAL_FOLDERS = {"d2s": ("query_drone", "gallery_satellite"), "s2d": ("query_satellite", "gallery_drone")}


def check_altitude(altitude: int | str | None) -> int:
    """The altitude as an int, or a one-line error listing the valid ones."""
    valid = ", ".join(str(a) for a in ALTITUDES)
    if altitude is None:
        raise MeanlocError(f"SUES-200 is trained and evaluated per altitude: give one of {valid}")
    try:
        value = int(altitude)
    except (TypeError, ValueError):
        value = None
    if value not in ALTITUDES:
        raise MeanlocError(f"unknown SUES-200 altitude {altitude!r} (valid: {valid})")
    return value


def detect_layout(root: str | Path) -> str:
    """'split' (Training/ + Testing/), 'raw' (satellite-view/ + drone-view/), else a one-line error."""
    base = require_folder(Path(root), "SUES-200 dataset")
    if (base / "Training").is_dir() or (base / "Testing").is_dir():
        return "split"
    if (base / "satellite-view").is_dir() and (base / "drone-view").is_dir():
        return "raw"
    raise MeanlocError(
        f"{base} is not a SUES-200 folder: expected satellite-view/ and drone-view/ (raw release) "
        "or Training/ and Testing/ (after split_datasets.py)"
    )


def raw_train_ids(satellite: ViewListing) -> list[str]:
    """The training location ids of the raw release: the first 60 % of the sorted ids."""
    ids = sorted(satellite.classes)
    return ids[: int(len(ids) * TRAIN_FRACTION)]


def _raw_views(root: Path, altitude: int) -> tuple[ViewListing, ViewListing]:
    satellite = list_view(root / "satellite-view", "SUES-200 satellite-view")
    drone = list_view(root / "drone-view" / str(altitude), f"SUES-200 drone-view/{altitude}")
    return satellite, drone


def sues_train_views(root: str | Path, altitude: int | str | None) -> tuple[ViewListing, ViewListing]:
    """(satellite, drone) training listings for one altitude."""
    altitude = check_altitude(altitude)
    base = Path(root)
    if detect_layout(base) == "split":
        train = base / "Training" / str(altitude)
        return (
            list_view(train / "satellite", f"SUES-200 Training/{altitude}/satellite"),
            list_view(train / "drone", f"SUES-200 Training/{altitude}/drone"),
        )
    satellite, drone = _raw_views(base, altitude)
    train_ids = set(raw_train_ids(satellite))
    return satellite.restricted_to(train_ids), drone.restricted_to(train_ids)


def sues_eval_views(
    root: str | Path, direction: str, split: str, altitude: int | str | None
) -> tuple[ViewListing, ViewListing]:
    """(query, gallery) test listings for one altitude; SUES-200 has no validation split."""
    altitude = check_altitude(altitude)
    if split != "test":
        raise MeanlocError(
            f"SUES-200 has only a test split (got '{split}'); hold out training locations instead"
        )
    base = Path(root)
    query_name, gallery_name = EVAL_FOLDERS[direction]
    if detect_layout(base) == "split":
        test = base / "Testing" / str(altitude)
        return (
            list_view(test / query_name, f"SUES-200 Testing/{altitude}/{query_name}"),
            list_view(test / gallery_name, f"SUES-200 Testing/{altitude}/{gallery_name}"),
        )
    satellite, drone = _raw_views(base, altitude)
    test_ids = set(satellite.classes) - set(raw_train_ids(satellite))
    query, gallery = (drone, satellite) if direction == "d2s" else (satellite, drone)
    return query.restricted_to(test_ids), gallery
