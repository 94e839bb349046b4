"""University-1652 layout reader (datasets-and-metrics.md §1), also used for meanloc's synthetic
datasets, which the generator writes in the same layout plus a `val/` split.

```
<root>/train/satellite/<id>/<id>.jpg     <root>/train/drone/<id>/image-XX.jpeg
<root>/test/query_drone/<id>/...         <root>/test/gallery_satellite/<id>/...
<root>/test/query_satellite/<id>/...     <root>/test/gallery_drone/<id>/...
<root>/val/query_drone/<id>/...          <root>/val/gallery_satellite/<id>/...   (synthetic only)
```
"""

from pathlib import Path

from meanloc.errors import MeanlocError

from .listing import ViewListing, list_view, require_folder

EVAL_SPLITS = ("test", "val")
# direction -> (query folder, gallery folder) inside test/ or val/
EVAL_FOLDERS = {"d2s": ("query_drone", "gallery_satellite"), "s2d": ("query_satellite", "gallery_drone")}


def _root(root: str | Path) -> Path:
    return require_folder(Path(root), "University-1652 dataset")


def university_train_views(root: str | Path) -> tuple[ViewListing, ViewListing]:
    """(satellite, drone) listings of `<root>/train`."""
    train = _root(root) / "train"
    return (
        list_view(train / "satellite", "University-1652 train/satellite"),
        list_view(train / "drone", "University-1652 train/drone"),
    )


def university_eval_views(root: str | Path, direction: str, split: str) -> tuple[ViewListing, ViewListing]:
    """(query, gallery) listings of `<root>/<split>` for direction 'd2s' or 's2d'."""
    if split not in EVAL_SPLITS:
        raise MeanlocError(f"unknown University-1652 split '{split}' (valid: {', '.join(EVAL_SPLITS)})")
    query_name, gallery_name = EVAL_FOLDERS[direction]
    base = _root(root) / split
    return (
        list_view(base / query_name, f"University-1652 {split}/{query_name}"),
        list_view(base / gallery_name, f"University-1652 {split}/{gallery_name}"),
    )
