"""Sorted, explicit listings of class-folder image trees (`<view>/<class id>/<image>`).

Both benchmarks store one folder per class. The reference loaders walk them with unsorted
`os.walk`, which makes the "first" satellite image, the gallery order and the tie order depend
on the filesystem (mean-model.md §10 pitfall 9). Everything here sorts explicitly.
"""

from dataclasses import dataclass, field
from pathlib import Path

from meanloc.errors import MeanlocError
from meanloc.runtime.images import is_image_name


@dataclass
class ViewListing:
    """The images of one view folder, grouped by class id (folder name), all lists sorted."""

    folder: Path
    classes: dict[str, list[Path]] = field(default_factory=dict)
    # Class folders that exist but hold no image (reported, never used).
    empty_classes: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(paths) for paths in self.classes.values())

    def restricted_to(self, class_ids: set[str]) -> "ViewListing":
        """The same listing keeping only `class_ids` (used for SUES-200 raw-release splits)."""
        kept = {cid: paths for cid, paths in self.classes.items() if cid in class_ids}
        return ViewListing(self.folder, kept, [c for c in self.empty_classes if c in class_ids])


def require_folder(folder: Path, what: str) -> Path:
    """One-line error unless `folder` is an existing directory."""
    if not folder.is_dir():
        raise MeanlocError(f"{what} folder not found: {folder}")
    return folder


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image suffix (case-insensitive)."""
    return path.is_file() and is_image_name(path)


def list_view(folder: Path, what: str) -> ViewListing:
    """List `folder/<class>/<image>` sorted by class name then file name.

    A missing folder, or one without any image, is a one-line MeanlocError: a dataset view that
    is silently empty would make every metric meaningless.
    """
    require_folder(folder, what)
    listing = ViewListing(folder)
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in class_dir.iterdir() if is_image_file(p))
        if images:
            listing.classes[class_dir.name] = images
        else:
            listing.empty_classes.append(class_dir.name)
    if not listing.classes:
        raise MeanlocError(f"{what} folder {folder} contains no images (expected <class id>/<image> files)")
    return listing
