"""The bank's local-feature layer: georeferenced orthophoto features with a spatial index.

Files (in the bank folder, listed with their sha256 in the bank manifest's `files`):
  features/keypoints.npy    (N, 4) float32: x, y in the bank's local ENU frame (metres), size (m),
                            detector response
  features/descriptors.npy  (N, D) uint8
  features/cells.npy        (nx * ny + 1,) int64: CSR offsets; features of grid cell
                            (row, col) = rows cells[row * nx + col] .. cells[row * nx + col + 1]
and the manifest's `local_features` entry (`LayerMeta`): how the features were extracted, the
grid, the count and the orthophotos they come from. Everything is memory-mapped, so a flight
reads only the cells of its search region, whatever the size of the bank.
Python 3.8 compatible, numpy only.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError

from ..features.extract import FeatureSpec

FEATURES_DIR = "features"
KEYPOINTS_FILE = FEATURES_DIR + "/keypoints.npy"
DESCRIPTORS_FILE = FEATURES_DIR + "/descriptors.npy"
CELLS_FILE = FEATURES_DIR + "/cells.npy"
LAYER_FILES = (KEYPOINTS_FILE, DESCRIPTORS_FILE, CELLS_FILE)
MANIFEST_KEY = "local_features"
LAYER_FORMAT = 1
KEYPOINT_COLUMNS = 4  # x, y, size, response


@dataclass(frozen=True)
class Grid:
    """Square cells of `cell_m` in the bank's local frame; column 0 starts at x0, row 0 at y0
    (the southern edge), so cell (row, col) spans x0 + col*cell .. and y0 + row*cell .."""

    x0: float
    y0: float
    cell_m: float
    nx: int
    ny: int

    @property
    def cells(self) -> int:
        return self.nx * self.ny

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Flat cell index of each point (points outside the grid are clipped to its edge)."""
        col = np.clip(np.floor((xy[:, 0] - self.x0) / self.cell_m).astype(np.int64), 0, self.nx - 1)
        row = np.clip(np.floor((xy[:, 1] - self.y0) / self.cell_m).astype(np.int64), 0, self.ny - 1)
        return row * self.nx + col

    def to_dict(self) -> Dict[str, Any]:
        return {"x0": self.x0, "y0": self.y0, "cell_m": self.cell_m, "nx": self.nx, "ny": self.ny}

    @classmethod
    def covering(cls, min_xy: Sequence[float], max_xy: Sequence[float], cell_m: float) -> "Grid":
        x0 = float(np.floor(min_xy[0] / cell_m) * cell_m)
        y0 = float(np.floor(min_xy[1] / cell_m) * cell_m)
        nx = max(1, int(np.ceil((max_xy[0] - x0) / cell_m)))
        ny = max(1, int(np.ceil((max_xy[1] - y0) / cell_m)))
        return cls(x0, y0, float(cell_m), nx, ny)


@dataclass(frozen=True)
class LayerMeta:
    """The manifest's description of a feature layer."""

    spec: FeatureSpec
    gsd_m: float  # metres per pixel the features were extracted at (queries are rendered at it too)
    per_cell: int  # at most this many features were kept per cell (the strongest)
    grid: Grid
    count: int
    descriptor_size: int
    sources: Tuple[Tuple[str, str], ...]  # (id, sha256) of the orthophotos the features come from

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": LAYER_FORMAT, "spec": self.spec.to_dict(), "gsd_m": self.gsd_m, "per_cell": self.per_cell,
            "grid": self.grid.to_dict(), "count": self.count, "descriptor_size": self.descriptor_size,
            "descriptor_dtype": "uint8", "sources": [{"id": i, "sha256": s} for i, s in self.sources],
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str) -> "LayerMeta":
        payload = manifest[MANIFEST_KEY]
        try:
            if int(payload["format"]) != LAYER_FORMAT:
                raise ArtifactMismatchError("{}: local feature layer format {} is not {}; rebuild it with this "
                                            "meanloc".format(where, payload["format"], LAYER_FORMAT))
            grid = payload["grid"]
            meta = cls(
                FeatureSpec.from_dict(payload["spec"]), float(payload["gsd_m"]), int(payload["per_cell"]),
                Grid(float(grid["x0"]), float(grid["y0"]), float(grid["cell_m"]), int(grid["nx"]), int(grid["ny"])),
                int(payload["count"]), int(payload["descriptor_size"]),
                tuple((str(s["id"]), str(s["sha256"])) for s in payload["sources"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MeanlocError("{}: invalid local feature layer entry ({})".format(where, exc)) from None
        if meta.gsd_m <= 0 or meta.grid.cell_m <= 0 or meta.grid.nx < 1 or meta.grid.ny < 1 or meta.count < 0:
            raise MeanlocError("{}: invalid local feature layer entry (non-positive sizes)".format(where))
        return meta


class RegionFeatures(NamedTuple):
    """Features gathered for one search region: float64 local-frame positions, sizes in metres."""

    xy: np.ndarray
    size_m: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.xy.shape[0])


class FeatureLayer:
    def __init__(self, meta: LayerMeta, keypoints: np.ndarray, descriptors: np.ndarray, cells: np.ndarray) -> None:
        self.meta = meta
        self.keypoints = keypoints
        self.descriptors = descriptors
        self.cells = cells

    @classmethod
    def open(cls, bank_dir: Path, manifest: Mapping[str, Any]) -> "FeatureLayer":
        """Memory-map the layer and check it against the manifest (one-line errors)."""
        bank_dir = Path(bank_dir)
        where = str(bank_dir / "manifest.json")
        meta = LayerMeta.from_manifest(manifest, where)
        bank_sources = {(str(s["id"]), str(s["sha256"])) for s in manifest.get("sources", [])}
        foreign = [name for name, sha in meta.sources if (name, sha) not in bank_sources]
        if foreign:
            raise ArtifactMismatchError("{}: the local feature layer comes from {}, which is not an orthophoto of "
                                        "this bank; rebuild it with `meanloc bank features`".format(
                                            bank_dir, ", ".join(foreign)))
        keypoints = _load(bank_dir / KEYPOINTS_FILE, np.float32, (meta.count, KEYPOINT_COLUMNS))
        descriptors = _load(bank_dir / DESCRIPTORS_FILE, np.uint8, (meta.count, meta.descriptor_size))
        cells = np.array(_load(bank_dir / CELLS_FILE, np.int64, (meta.grid.cells + 1,)))
        if cells[0] != 0 or cells[-1] != meta.count or np.any(np.diff(cells) < 0):
            raise MeanlocError("{} is not a valid cell index of {} features (damaged file?)".format(
                bank_dir / CELLS_FILE, meta.count))
        return cls(meta, keypoints, descriptors, cells)

    def area_km2(self) -> float:
        return float(np.count_nonzero(np.diff(self.cells))) * (self.meta.grid.cell_m / 1000.0) ** 2

    def gather(self, circles: Sequence[Tuple[float, float, float]]) -> RegionFeatures:
        """Every feature in the cells that touch any of the circles (x, y, radius) in local metres.
        Only those cells' rows are read from the memory map."""
        grid = self.meta.grid
        wanted = []  # flat cell indices touched by each circle
        for x, y, radius in circles:
            col0 = max(0, int(np.floor((x - radius - grid.x0) / grid.cell_m)))
            col1 = min(grid.nx - 1, int(np.floor((x + radius - grid.x0) / grid.cell_m)))
            row0 = max(0, int(np.floor((y - radius - grid.y0) / grid.cell_m)))
            row1 = min(grid.ny - 1, int(np.floor((y + radius - grid.y0) / grid.cell_m)))
            if col0 > col1 or row0 > row1:
                continue
            cols = np.arange(col0, col1 + 1)
            rows = np.arange(row0, row1 + 1)
            # Distance from the circle's centre to the nearest point of each cell.
            dx = np.maximum(0.0, np.maximum(grid.x0 + cols * grid.cell_m - x, x - (grid.x0 + (cols + 1) * grid.cell_m)))
            dy = np.maximum(0.0, np.maximum(grid.y0 + rows * grid.cell_m - y, y - (grid.y0 + (rows + 1) * grid.cell_m)))
            inside = dy[:, None] ** 2 + dx[None, :] ** 2 <= radius * radius
            wanted.append((rows[:, None] * grid.nx + cols[None, :])[inside])
        cells = np.unique(np.concatenate(wanted)) if wanted else np.zeros(0, dtype=np.int64)
        spans = _contiguous_spans(cells, self.cells)
        if not spans:
            return RegionFeatures(np.zeros((0, 2)), np.zeros(0), np.zeros((0, self.meta.descriptor_size), np.uint8))
        keypoints = np.concatenate([self.keypoints[a:b] for a, b in spans])
        descriptors = np.concatenate([self.descriptors[a:b] for a, b in spans])
        return RegionFeatures(keypoints[:, :2].astype(np.float64), keypoints[:, 2].astype(np.float64), descriptors)

    def describe(self) -> Dict[str, Any]:
        nbytes = sum(int(a.nbytes) for a in (self.keypoints, self.descriptors, self.cells))
        area = self.area_km2()
        return {"kind": self.meta.spec.kind, "count": self.meta.count, "gsd_m": self.meta.gsd_m,
                "cell_m": self.meta.grid.cell_m, "per_cell": self.meta.per_cell, "bytes": nbytes,
                "area_km2": round(area, 3), "bytes_per_km2": round(nbytes / area) if area > 0 else None}


def _contiguous_spans(cells_wanted: np.ndarray, offsets: np.ndarray) -> List[Tuple[int, int]]:
    """Row ranges of the wanted cells, adjacent cells merged into one read."""
    spans: List[Tuple[int, int]] = []
    for cell in cells_wanted:
        start, stop = int(offsets[cell]), int(offsets[cell + 1])
        if start == stop:
            continue
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], stop)
        else:
            spans.append((start, stop))
    return spans


def _load(path: Path, dtype: Any, shape: Tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise MeanlocError("local feature file missing: {} (rebuild with `meanloc bank features`)".format(path)) from None
    except (OSError, ValueError) as exc:
        raise MeanlocError("cannot read local feature file {}: {}".format(path, exc)) from None
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise ArtifactMismatchError("{} holds {} {} but the bank manifest says {} {}".format(
            path, array.shape, array.dtype, shape, np.dtype(dtype)))
    return array


def has_layer(manifest: Mapping[str, Any]) -> bool:
    return MANIFEST_KEY in manifest


def verify_layer(bank_dir: Path, manifest: Mapping[str, Any], block_rows: int = 1 << 20) -> List[str]:
    """Problems of the bank's feature layer beyond its file hashes (`bank verify`): it opens,
    its positions are finite and every feature sits in the cell the index files it under."""
    try:
        layer = FeatureLayer.open(Path(bank_dir), manifest)
    except MeanlocError as exc:
        return [str(exc)]
    grid = layer.meta.grid
    expected_cells = np.repeat(np.arange(grid.cells), np.diff(layer.cells))
    for start in range(0, layer.meta.count, block_rows):
        block = np.asarray(layer.keypoints[start:start + block_rows])
        if not np.all(np.isfinite(block)):
            return ["local feature keypoints {}.. contain NaN/inf".format(start)]
        if np.any(grid.cell_of(block[:, :2]) != expected_cells[start:start + len(block)]):
            return ["local features {}.. lie outside the cells their index gives (damaged cell index?)".format(start)]
    return []
