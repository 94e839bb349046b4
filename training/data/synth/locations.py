"""Location grid and spatially disjoint west / middle / east splits (datasets-and-metrics.md §5.7).

Locations sit on a regular grid (default 50 m; denser training locations help most). The
columns are split into three bands, train (west), val (middle) and test (east), separated by
a buffer (the writer uses one tile side plus twice the drone-footprint reach), so no satellite
tile or drone footprint of one split overlaps a tile or footprint of another split. Every location also keeps `margin_m`
from the raster edge so its drone views fit without biasing yaw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meanloc.errors import MeanlocError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Location:
    index: int
    id: str
    split: str
    x: float
    y: float
    is_distractor: bool
    row: int  # grid row (north to south) and column (west to east, across all bands)
    col: int


@dataclass(frozen=True)
class GridPlan:
    """Column counts per band, rows, spacing and the gaps that keep the splits apart."""

    rows: int
    columns: tuple[int, int, int]  # train, val, test
    spacing_m: float
    buffer_m: float  # centre-to-centre gap between the last column of a band and the next band
    margin_m: float  # from the raster edge to the nearest location centre

    def extent_m(self) -> tuple[float, float]:
        """(width, height) of the area the plan needs, margins included."""
        width = (sum(self.columns) - 3) * self.spacing_m + 2 * self.buffer_m + 2 * self.margin_m
        height = (self.rows - 1) * self.spacing_m + 2 * self.margin_m
        return width, height


def plan_for_counts(n_train: int, n_val: int, n_test: int, rows: int, spacing_m: float, buffer_m: float,
                    margin_m: float) -> GridPlan:
    """Smallest band widths that give at least the requested number of locations per split."""
    if min(n_train, n_val, n_test, rows) < 1 or spacing_m <= 0:
        raise MeanlocError("need at least one location per split, one row and a positive spacing")
    columns = tuple(math.ceil(n / rows) for n in (n_train, n_val, n_test))
    return GridPlan(rows, columns, spacing_m, buffer_m, margin_m)


def plan_for_area(bounds: tuple[float, float, float, float], spacing_m: float, buffer_m: float, margin_m: float,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> GridPlan:
    """Fit the grid into a given area (a user's orthophoto), dividing columns by `fractions`."""
    min_x, min_y, max_x, max_y = bounds
    usable_w = (max_x - min_x) - 2 * margin_m - 2 * buffer_m
    usable_h = (max_y - min_y) - 2 * margin_m
    rows = math.floor(usable_h / spacing_m) + 1 if usable_h >= 0 else 0
    total_cols = math.floor(usable_w / spacing_m) + 3 if usable_w >= 0 else 0
    if rows < 1 or total_cols < 3:
        need = 2 * margin_m + 2 * buffer_m
        raise MeanlocError(
            f"orthophoto ({max_x - min_x:.0f} x {max_y - min_y:.0f} m) is too small: three spatially disjoint "
            f"splits need at least {need:.0f} m east-west and {2 * margin_m:.0f} m north-south "
            f"(footprint margin {margin_m:.0f} m, split buffer {buffer_m:.0f} m); lower the altitude or pitch range")
    cols = [max(1, round(f * total_cols)) for f in fractions]
    cols[0] = max(1, total_cols - cols[1] - cols[2])
    return GridPlan(rows, (cols[0], cols[1], cols[2]), spacing_m, buffer_m, margin_m)


def place_locations(plan: GridPlan, bounds: tuple[float, float, float, float], n_distractors: int,
                    rng: np.random.Generator, id_width: int = 4) -> list[Location]:
    """Grid centres per band, centred in `bounds`; ids zero-padded, ordered train, val, test
    and within a split west to east, north to south. `n_distractors` test locations become
    gallery-only classes."""
    min_x, min_y, max_x, max_y = bounds
    need_w, need_h = plan.extent_m()
    x_start = min_x + (max_x - min_x - need_w) / 2.0 + plan.margin_m
    y_top = max_y - (max_y - min_y - need_h) / 2.0 - plan.margin_m
    raw = []
    x = x_start
    first_col = 0
    for split, cols in zip(SPLITS, plan.columns):
        for c in range(cols):
            for r in range(plan.rows):
                raw.append((split, x + c * plan.spacing_m, y_top - r * plan.spacing_m, r, first_col + c))
        x += (cols - 1) * plan.spacing_m + plan.buffer_m
        first_col += cols
    n_test = sum(1 for item in raw if item[0] == "test")
    if n_distractors >= n_test:
        raise MeanlocError(f"{n_distractors} distractors leave no test queries among {n_test} test locations")
    test_idx = [i for i, item in enumerate(raw) if item[0] == "test"]
    distractors = set(rng.choice(test_idx, size=n_distractors, replace=False).tolist()) if n_distractors else set()
    width = max(id_width, len(str(len(raw) - 1)))
    return [Location(i, str(i).zfill(width), s, float(px), float(py), i in distractors, r, c)
            for i, (s, px, py, r, c) in enumerate(raw)]


def split_gap_m(locations: list[Location]) -> float:
    """Smallest east-west distance between location centres of different splits."""
    by_split = {s: [loc.x for loc in locations if loc.split == s] for s in SPLITS}
    gaps = []
    for a, b in (("train", "val"), ("val", "test"), ("train", "test")):
        if by_split[a] and by_split[b]:
            gaps.append(min(abs(xa - xb) for xa in (min(by_split[a]), max(by_split[a]))
                            for xb in (min(by_split[b]), max(by_split[b]))))
    return min(gaps) if gaps else math.inf
