"""Location grid and spatially disjoint train / val / test splits (datasets-and-metrics.md §5.7).

Locations sit on a regular grid (default 50 m; denser training locations help most).

- The synthetic world (`GridPlan`) is generated to fit its plan: three bands, train (west), val
  (middle) and test (east), separated by a buffer of one tile side plus twice the drone-footprint
  reach, so no satellite tile or drone footprint of one split overlaps one of another split, and
  every location keeps the footprint reach from the raster edge.
- A user's orthophoto (`AreaPlan`, `plan_user_area`) is what it is: often a square kilometre or an
  odd shape. Its candidate locations are the grid points whose tile square (plus the look-at
  jitter) lies on valid imagery; a layout assigns them to splits (bands along the longer axis, a
  checkerboard of blocks, or the user's `--test-area`), and the splits keep a clearance: the
  squares of any two locations of different splits (what a pose-aware model sees of each) are at
  least `clearance_m` apart. Views may then reach other splits' ground in their far field; the
  manifest reports how often. Only what cannot work is refused, naming the limit and its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from meanloc.errors import MeanlocError

SPLITS = ("train", "val", "test")
LAYOUTS = ("auto", "bands", "blocks")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test shares of the candidate locations


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

    @property
    def count(self) -> int:
        return self.rows * sum(self.columns)

    def place(self, bounds: tuple[float, float, float, float], n_distractors: int,
              rng: np.random.Generator) -> list[Location]:
        return place_locations(self, bounds, n_distractors, rng)

    def describe(self) -> dict:
        return {"layout": "bands", "split_bands": "train west, val middle, test east", "grid_rows": self.rows,
                "grid_columns": dict(zip(SPLITS, self.columns)), "spacing_m": self.spacing_m,
                "split_buffer_m": self.buffer_m, "margin_m": self.margin_m,
                "separation": "no satellite tile or drone footprint of one split overlaps any of another split"}


def plan_for_counts(n_train: int, n_val: int, n_test: int, rows: int, spacing_m: float, buffer_m: float,
                    margin_m: float) -> GridPlan:
    """Smallest band widths that give at least the requested number of locations per split."""
    if min(n_train, n_val, n_test, rows) < 1 or spacing_m <= 0:
        raise MeanlocError("need at least one location per split, one row and a positive spacing")
    columns = tuple(math.ceil(n / rows) for n in (n_train, n_val, n_test))
    return GridPlan(rows, columns, spacing_m, buffer_m, margin_m)


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
    """Smallest centre-to-centre distance (Chebyshev: squares are axis-aligned) between locations of
    different splits; for the synthetic world's bands, the east-west gap between them."""
    points = {split: np.array([[loc.x, loc.y] for loc in locations if loc.split == split]) for split in SPLITS}
    gaps = []
    for a, b in (("train", "val"), ("val", "test"), ("train", "test")):
        if len(points[a]) and len(points[b]):
            gaps.append(float(np.abs(points[a][:, None, :] - points[b][None, :, :]).max(axis=2).min()))
    return min(gaps) if gaps else math.inf


# -- a user's orthophoto ----------------------------------------------------------------------------


def inside_polygons(x: np.ndarray, y: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Even-odd rule: True where (x, y) lies inside any of the (N, 2) polygons (holes as extra rings)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    result = np.zeros(x.shape, dtype=bool)
    for ring in polygons:
        inside = np.zeros(x.shape, dtype=bool)
        xs, ys = ring[:, 0], ring[:, 1]
        for (x1, y1), (x2, y2) in zip(zip(xs, ys), zip(np.roll(xs, 1), np.roll(ys, 1))):
            crosses = (y1 > y) != (y2 > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                at = (x2 - x1) * (y - y1) / (y2 - y1) + x1
            inside ^= crosses & (x < at)
        result ^= inside
    return result


@dataclass(frozen=True)
class AreaPlan:
    """The locations chosen on a user's orthophoto, and the geometry that chose them."""

    candidates: tuple[tuple[str, float, float, int, int], ...]  # split, x, y, grid row, grid column
    layout: str
    tile_side_m: float
    spacing_m: float
    clearance_m: float
    min_gap_m: float  # centre-to-centre (Chebyshev) distance between locations of different splits
    margin_m: float  # half-side of the square around each location that must be valid imagery
    dropped_for_clearance: int

    @property
    def count(self) -> int:
        return len(self.candidates)

    def split_count(self, split: str) -> int:
        return sum(1 for c in self.candidates if c[0] == split)

    def place(self, bounds: tuple[float, float, float, float], n_distractors: int,
              rng: np.random.Generator) -> list[Location]:
        ordered = sorted(self.candidates, key=lambda c: (SPLITS.index(c[0]), c[1], -c[2]))
        test_idx = [i for i, c in enumerate(ordered) if c[0] == "test"]
        if n_distractors >= len(test_idx):
            raise MeanlocError(f"{n_distractors} distractors leave no test queries among {len(test_idx)} test locations")
        distractors = set(rng.choice(test_idx, size=n_distractors, replace=False).tolist()) if n_distractors else set()
        width = max(4, len(str(len(ordered) - 1)))
        return [Location(i, str(i).zfill(width), split, x, y, i in distractors, row, col)
                for i, (split, x, y, row, col) in enumerate(ordered)]

    def describe(self) -> dict:
        return {"layout": self.layout, "tile_side_m": self.tile_side_m, "spacing_m": self.spacing_m,
                "clearance_m": self.clearance_m, "min_centre_gap_m": self.min_gap_m, "margin_m": self.margin_m,
                "locations": {split: self.split_count(split) for split in SPLITS},
                "dropped_for_clearance": self.dropped_for_clearance,
                "separation": f"the {self.tile_side_m:g} m squares (plus look-at jitter) of locations of different "
                              f"splits are at least {self.clearance_m:g} m apart; drone footprints may reach further "
                              "(see footprint_overlap)"}


def _candidate_grid(bounds: tuple[float, float, float, float], spacing_m: float, margin_m: float,
                    valid: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, ...]:
    """Grid points (centred in `bounds`) whose square of half-side `margin_m` is on valid imagery."""
    min_x, min_y, max_x, max_y = bounds
    width, height = max_x - min_x - 2 * margin_m, max_y - min_y - 2 * margin_m
    if width < 0 or height < 0:
        return (np.zeros(0),) * 4
    cols, rows = int(width // spacing_m) + 1, int(height // spacing_m) + 1
    x0 = min_x + margin_m + (width - (cols - 1) * spacing_m) / 2.0
    y0 = max_y - margin_m - (height - (rows - 1) * spacing_m) / 2.0
    col, row = np.meshgrid(np.arange(cols), np.arange(rows))
    x, y = x0 + col.ravel() * spacing_m, y0 - row.ravel() * spacing_m
    probe = np.linspace(-margin_m, margin_m, 5)
    ok = np.ones(x.shape, dtype=bool)
    for dx in probe:
        for dy in probe:
            ok &= valid(x + dx, y + dy)
    return x[ok], y[ok], row.ravel()[ok], col.ravel()[ok]


def _assign_bands(u: np.ndarray, gap: float, fractions: tuple[float, float, float]) -> np.ndarray | None:
    """Train, val, test bands along `u` (increasing), `gap` apart; None if a band stays empty."""
    split = np.full(u.shape, "", dtype=object)
    order = np.sort(np.unique(u))
    if len(order) < 3:
        return None
    test_start = order[min(len(order) - 1, int(np.floor((1.0 - fractions[2]) * len(order))))]
    split[u >= test_start] = "test"
    rest = order[order <= test_start - gap]
    if len(rest) < 2:
        return None
    share = fractions[1] / (fractions[0] + fractions[1])
    val_start = rest[min(len(rest) - 1, int(np.floor((1.0 - share) * len(rest))))]
    split[(u >= val_start) & (u <= test_start - gap)] = "val"
    split[u <= val_start - gap] = "train"
    return split if all((split == name).any() for name in SPLITS) else None


def _assign_blocks(x: np.ndarray, y: np.ndarray, block_m: float) -> np.ndarray:
    """A checkerboard of square blocks: in every run of 10 blocks 2 test, 1 val, 7 train."""
    bx = np.floor((x - x.min()) / block_m).astype(int)
    by = np.floor((y.max() - y) / block_m).astype(int)
    code = (bx * 3 + by * 7) % 10
    return np.where(code < 2, "test", np.where(code == 5, "val", "train")).astype(object)


def _enforce_clearance(x: np.ndarray, y: np.ndarray, split: np.ndarray, gap: float) -> tuple[np.ndarray, int]:
    """Drop locations closer than `gap` (Chebyshev, centre to centre) to one of a split that ranks
    higher (test, then val, then train keeps its locations)."""
    keep = split != ""
    dropped = 0
    for weaker, stronger in (("val", ("test",)), ("train", ("test", "val"))):
        strong = np.isin(split, stronger) & keep
        if not strong.any():
            continue
        weak = np.nonzero((split == weaker) & keep)[0]
        for index in weak:
            near = np.maximum(np.abs(x[strong] - x[index]), np.abs(y[strong] - y[index])) < gap
            if near.any():
                keep[index] = False
                dropped += 1
    return keep, dropped


def plan_user_area(bounds: tuple[float, float, float, float], valid: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   tile_side_m: float, spacing_m: float, clearance_m: float, jitter_m: float, margin_m: float,
                   layout: str = "auto", test_polygons: list[np.ndarray] | None = None,
                   fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> AreaPlan:
    """Choose locations and splits on a user's orthophoto; refuse only what cannot work.

    `valid(x, y)` says which ground points lie on valid imagery; `margin_m` is the half-side of the
    square around a location that must (the tile plus the look-at jitter, or the whole drone
    footprint when views must be entirely valid)."""
    if layout not in LAYOUTS:
        raise MeanlocError(f"unknown split layout '{layout}' (choose {', '.join(LAYOUTS)})")
    if spacing_m <= 0 or tile_side_m <= 0 or clearance_m < 0:
        raise MeanlocError("location spacing and tile side must be positive and the clearance not negative")
    min_x, min_y, max_x, max_y = bounds
    size = f"{max_x - min_x:.0f} x {max_y - min_y:.0f} m"
    x, y, row, col = _candidate_grid(bounds, spacing_m, margin_m, valid)
    if not len(x):
        raise MeanlocError(
            f"the orthophoto ({size}) holds no location: each needs a {2 * margin_m:.0f} m square of valid imagery "
            f"(the {tile_side_m:g} m tile plus {margin_m - tile_side_m / 2:.0f} m of look-at jitter or drone footprint "
            "on each side); lower --tile-side-m (or --altitude when views must be entirely valid)")
    gap = tile_side_m + 2.0 * jitter_m + clearance_m
    gap_text = f"{gap:.0f} m (tile {tile_side_m:g} m + clearance {clearance_m:g} m + 2 x {jitter_m:g} m look-at jitter)"
    chosen = layout
    if test_polygons is not None:
        chosen = "test-area"
        split = np.full(x.shape, "", dtype=object)
        in_test = inside_polygons(x, y, test_polygons)
        if not in_test.any():
            raise MeanlocError(f"--test-area holds none of the {len(x)} candidate locations: a test location's whole "
                               f"{2 * margin_m:.0f} m square must be on valid imagery, at the {spacing_m:g} m grid "
                               "spacing; enlarge the area or lower --spacing-m or --tile-side-m")
        split[in_test] = "test"
        test_x, test_y = x[in_test], y[in_test]
        distance = np.array([np.min(np.maximum(np.abs(test_x - a), np.abs(test_y - b))) for a, b in zip(x, y)])
        pool = np.nonzero(~in_test & (distance >= gap))[0]
        if len(pool) < 2:
            raise MeanlocError(f"outside --test-area only {len(pool)} candidate locations keep the {gap_text} from it; "
                               "training and validation need more: shrink the test area or lower --clearance-m")
        share = fractions[1] / (fractions[0] + fractions[1])
        far = pool[np.argsort(-distance[pool], kind="stable")][: max(1, round(share * len(pool)))]
        split[far] = "val"
        split[np.setdiff1d(pool, far)] = "train"
    else:
        along_x = (max_x - min_x) >= (max_y - min_y)
        extent = (x.max() - x.min()) if along_x else (y.max() - y.min())
        bands_reason = (f"three banded splits need at least 3 grid positions and 2 gaps of {gap_text} = "
                        f"{3 * spacing_m + 2 * gap:.0f} m along the longer axis, where the {len(x)} candidate "
                        f"locations span {extent:.0f} m")
        split = None
        if layout in ("auto", "bands"):
            split = _assign_bands(x if along_x else -y, gap, fractions)
            chosen = "bands west-east" if along_x else "bands north-south"
            if split is None and layout == "bands":
                raise MeanlocError(f"the orthophoto ({size}) is too small for three banded splits: {bands_reason}; "
                                   "lower --clearance-m or --tile-side-m, use --split-layout blocks, or give --test-area")
        if split is None:
            split = _assign_blocks(x, y, max(3 * tile_side_m, gap))
            chosen = "blocks"
            keep, _ = _enforce_clearance(x, y, split, gap)
            counts = {name: int(((split == name) & keep).sum()) for name in SPLITS}
            if min(counts.values()) == 0:
                bands = f"too small for three banded splits ({bands_reason}) and " if layout == "auto" else ""
                raise MeanlocError(
                    f"the orthophoto ({size}) is {bands}too small for a checkerboard of blocks: once locations of "
                    f"different splits keep {gap_text} apart, the blocks leave {counts}; lower --clearance-m or "
                    "--tile-side-m, or give --test-area")
    keep, dropped = _enforce_clearance(x, y, split, gap)
    counts = {name: int(((split == name) & keep).sum()) for name in SPLITS}
    if min(counts.values()) == 0:  # bands and blocks are checked above; a test area can still starve a split
        missing = [name for name, count in counts.items() if count == 0]
        raise MeanlocError(
            f"the {chosen} layout leaves no {' and no '.join(missing)} location on the orthophoto ({size}) once "
            f"locations of different splits keep {gap_text} apart (counts {counts}); lower --clearance-m or "
            "--tile-side-m, or shrink --test-area")
    candidates = tuple((str(s), float(a), float(b), int(r), int(c))
                       for s, a, b, r, c, k in zip(split, x, y, row, col, keep) if k)
    return AreaPlan(candidates, chosen, tile_side_m, spacing_m, clearance_m, gap, margin_m, dropped)
