"""Procedural, seeded, georeferenced orthophoto ("synthetic world") of any size.

The world is built in two stages so that two co-registered acquisition dates can share one
geography:

1. `build_layout(spec)` draws the geometry from `spec.seed`: urban density, districts with
   their own street orientation, a jittered network of major and minor roads, building
   footprints (with heights), field parcels with crop stripes, forests, lakes, a river,
   hedgerow and street trees.
2. `render_layout(layout, style)` paints it for one date: palette/season, sun azimuth and
   elevation (shadows), building changes (demolished, new, re-roofed), vegetation colour and
   multi-scale non-repetitive noise.

`generate_world` returns date 1; `generate_world_pair` returns (date 1, date 2) for the
cross-source setting of §5.6 (drone views from one date, satellite tiles from the other).

Limits (§5.8): this is flat, painted geometry. Its purpose is to test plumbing and geometry
and give a controlled benchmark; numbers on it are an optimistic proxy, not real-world accuracy.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.orthophoto import Orthophoto, lonlat_to_crs, utm_epsg_for

from . import photographic as photo

GENERATOR_VERSION = "synth-world-2"  # 2: date 2 is photographic (photographic.py)
DEFAULT_ORIGIN_LONLAT = (8.40, 47.45)  # north-west corner; UTM zone 32N
MAX_PIXELS = 400_000_000

# Palettes (BGR). Field crops per season: date 1 is early summer, date 2 late summer/autumn.
CROPS_DATE1 = [(60, 140, 90), (50, 120, 70), (90, 170, 150), (80, 150, 185), (70, 105, 130), (55, 160, 120),
               (95, 125, 110), (40, 110, 95)]
CROPS_DATE2 = [(70, 150, 190), (60, 100, 140), (75, 135, 120), (90, 120, 150), (50, 95, 120), (80, 165, 200),
               (65, 115, 105), (85, 140, 170)]
ROOFS = [(60, 80, 170), (70, 95, 150), (85, 85, 90), (120, 120, 125), (185, 185, 190), (90, 110, 130),
         (110, 130, 95), (140, 125, 115), (45, 55, 110), (160, 150, 140)]


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    width_m: float = 2000.0
    height_m: float = 2000.0
    gsd_m: float = 0.8
    origin_lonlat: tuple[float, float] = DEFAULT_ORIGIN_LONLAT  # WGS84 (lon, lat) of the north-west corner
    urban_fraction: float = 0.4

    def validate(self) -> None:
        if self.width_m <= 0 or self.height_m <= 0 or self.gsd_m <= 0:
            raise MeanlocError("world width, height and GSD must be positive")
        if not 0.0 <= self.urban_fraction <= 1.0:
            raise MeanlocError("urban_fraction must be within 0..1")
        pixels = (self.width_m / self.gsd_m) * (self.height_m / self.gsd_m)
        if pixels > MAX_PIXELS:
            raise MeanlocError(f"world of {pixels / 1e6:.0f} Mpx is too large (max {MAX_PIXELS / 1e6:.0f}); "
                               "raise the GSD or shrink the area")
        lon, lat = self.origin_lonlat
        if not (-180 <= lon <= 180 and -80 <= lat <= 84):
            raise MeanlocError(f"origin lon/lat out of UTM range: {self.origin_lonlat}")


@dataclass(frozen=True)
class DateStyle:
    """How one acquisition date looks."""

    name: str = "date1"
    seed: int = 1
    sun_azimuth_deg: float = 135.0  # direction the sun shines FROM, clockwise from north
    sun_elevation_deg: float = 45.0
    autumn: float = 0.0  # 0 = green vegetation, 1 = yellow/brown
    demolished_fraction: float = 0.0
    reroofed_fraction: float = 0.0
    new_building_fraction: float = 0.0
    # The photographic finish (photographic.py): surface texture, field phenology, crowns, soft
    # shadows, cars, mosaic seamlines, a softer sensor, ~1 m co-registration error and JPEG.
    photographic: bool = False
    jpeg_quality: int = 70


DATE1 = DateStyle()
DATE2 = DateStyle(name="date2", seed=2, sun_azimuth_deg=215.0, sun_elevation_deg=32.0, autumn=0.7,
                  demolished_fraction=0.05, reroofed_fraction=0.12, new_building_fraction=0.06, photographic=True)


@dataclass
class Buildings:
    cx: np.ndarray
    cy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    angle: np.ndarray  # radians, long axis from the column axis
    height: np.ndarray  # metres
    gable: np.ndarray  # bool
    roof: np.ndarray  # palette index
    candidate: np.ndarray  # bool: only built on dates with new buildings

    def __len__(self) -> int:
        return len(self.cx)


@dataclass
class Layout:
    spec: WorldSpec
    shape: tuple[int, int]
    roads: np.ndarray  # uint8: 0 none, 1 minor, 2 major, 3 track
    water: np.ndarray  # bool
    urban: np.ndarray  # bool
    forest: np.ndarray  # bool
    parcels: np.ndarray  # int32 label per pixel (coarse, upsampled)
    crop: np.ndarray  # per parcel: crop palette index
    stripe_angle: np.ndarray
    stripe_period: np.ndarray  # px
    buildings: Buildings
    trees: np.ndarray  # (N, 3) col, row, radius px
    stats: dict = field(default_factory=dict)


def _noise(shape: tuple[int, int], cell_px: float, rng: np.random.Generator, octaves: int = 1) -> np.ndarray:
    """Smooth fractal value noise, roughly in [-1, 1]: random grids with cells of `cell_px`,
    `cell_px`/2, ... summed on the finest grid, then one cubic upsampling to `shape`
    (a single full-resolution pass, whatever the number of octaves)."""
    h, w = shape
    fine_cell = cell_px / 2 ** (octaves - 1)
    gh, gw = int(h / fine_cell) + 4, int(w / fine_cell) + 4
    total = np.zeros((gh, gw), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        factor = 2 ** (octaves - 1 - octave)  # fine cells per cell of this octave
        coarse = rng.standard_normal((gh // factor + 3, gw // factor + 3)).astype(np.float32)
        up = cv2.resize(coarse, (coarse.shape[1] * factor, coarse.shape[0] * factor), interpolation=cv2.INTER_CUBIC)
        total += amp * up[:gh, :gw]
        norm += amp
        amp *= 0.5
    total /= norm
    # Output pixel centre (i + 0.5) / fine_cell in grid units, shifted by one cell of margin.
    m = np.array([[1.0 / fine_cell, 0.0, 1.0 + 0.5 / fine_cell - 0.5], [0.0, 1.0 / fine_cell, 1.0 + 0.5 / fine_cell - 0.5]])
    return cv2.warpAffine(total, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _voronoi_labels(shape: tuple[int, int], spacing_px: float, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cell labels of jittered seeds, computed at `shape` (use a coarse shape)."""
    h, w = shape
    ny, nx = max(1, int(h / spacing_px) + 2), max(1, int(w / spacing_px) + 2)
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    ys = ((gy + rng.uniform(0.1, 0.9, gy.shape)) * spacing_px - spacing_px).ravel()
    xs = ((gx + rng.uniform(0.1, 0.9, gx.shape)) * spacing_px - spacing_px).ravel()
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    seeds = np.full(shape, 255, dtype=np.uint8)
    seeds[ys[keep].astype(int), xs[keep].astype(int)] = 0
    if not keep.any():
        seeds[h // 2, w // 2] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP)
    return labels.astype(np.int32)


def _organic(mask: np.ndarray, edge: np.ndarray, sigma_px: float, strength: float) -> np.ndarray:
    """Turn a blocky upsampled mask into one with smooth, irregular boundaries."""
    soft = cv2.GaussianBlur(mask.view(np.uint8).astype(np.float32), (0, 0), sigma_px)
    near_edge = soft * (1.0 - soft) * 4.0  # 1 on the boundary, 0 well inside or outside
    return soft + strength * edge * near_edge > 0.5


def _upsample_nearest(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _wiggly_line(start: np.ndarray, direction: np.ndarray, length: float, rng: np.random.Generator,
                 amplitude: float, step: float) -> np.ndarray:
    """Polyline along `direction` with a smooth random lateral wiggle (jittered network)."""
    n = max(2, int(length / step) + 1)
    s = np.linspace(0.0, length, n)
    normal = np.array([-direction[1], direction[0]])
    offset = np.zeros(n)
    for _ in range(3):
        wavelength = rng.uniform(0.2, 1.0) * max(length, 1.0)
        offset += amplitude * rng.uniform(0.2, 1.0) * np.sin(2 * math.pi * s / wavelength + rng.uniform(0, 2 * math.pi))
    return start[None, :] + s[:, None] * direction[None, :] + offset[:, None] * normal[None, :]


def _grid_lines(rng: np.random.Generator, box: tuple[float, float, float, float], angle: float, spacing: float,
                amplitude: float, step: float) -> list[np.ndarray]:
    """Two families of jittered parallel wiggly lines covering `box` (x0, y0, x1, y1) px at `angle`."""
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    radius = math.hypot(x1 - x0, y1 - y0) / 2.0 + spacing
    lines = []
    for family in (0.0, math.pi / 2.0):
        a = angle + family + rng.normal(0.0, 0.03)
        direction = np.array([math.cos(a), math.sin(a)])
        normal = np.array([-direction[1], direction[0]])
        offset = -radius + rng.uniform(0.0, spacing)
        while offset < radius:
            start = centre + offset * normal - radius * direction
            lines.append(_wiggly_line(start, direction, 2 * radius, rng, amplitude, step))
            offset += spacing * rng.uniform(0.6, 1.4)
    return lines


def _draw_lines(mask: np.ndarray, lines: list[np.ndarray], value: int, thickness: int) -> None:
    if lines:
        cv2.polylines(mask, [np.round(line).astype(np.int32) for line in lines], False, value, thickness,
                      lineType=cv2.LINE_8)


def build_layout(spec: WorldSpec) -> Layout:
    """Draw the geography (everything that both dates share) from `spec.seed`."""
    spec.validate()
    rng = np.random.default_rng([spec.seed, 1652])
    px = 1.0 / spec.gsd_m  # pixels per metre
    h, w = round(spec.height_m * px), round(spec.width_m * px)
    if h < 16 or w < 16:
        raise MeanlocError("world is smaller than 16 x 16 pixels")
    coarse_f = max(1, round(4.0 * px))  # 4 m cells for the land-use maps
    ch, cw = -(-h // coarse_f), -(-w // coarse_f)

    density = _noise((ch, cw), 1200.0 / 4.0, rng, octaves=3)
    urban_c = density > np.quantile(density, 1.0 - spec.urban_fraction)
    lake = _noise((ch, cw), 500.0 / 4.0, rng, octaves=2)
    water_c = lake > np.quantile(lake, 0.96)
    forest_n = _noise((ch, cw), 350.0 / 4.0, rng, octaves=3)
    forest_c = (forest_n > np.quantile(forest_n, 0.78)) & ~urban_c & ~water_c

    # River: one meandering band across the world (drawn coarse, it is wide).
    river = np.zeros((ch, cw), dtype=np.uint8)
    vertical = rng.uniform() < 0.5
    length = (ch if vertical else cw)
    start = np.array([rng.uniform(0.2, 0.8) * cw, 0.0]) if vertical else np.array([0.0, rng.uniform(0.2, 0.8) * ch])
    direction = np.array([0.0, 1.0]) if vertical else np.array([1.0, 0.0])
    river_line = _wiggly_line(start, direction, float(length), rng, amplitude=60.0, step=4.0)
    _draw_lines(river, [river_line], 1, max(2, round(rng.uniform(20, 40) / 4.0)))
    water_c |= river > 0
    urban_c &= ~water_c

    shape = (h, w)
    urban = _upsample_nearest(urban_c.view(np.uint8), shape).astype(bool)
    water = _upsample_nearest(water_c.view(np.uint8), shape).astype(bool)
    forest = _upsample_nearest(forest_c.view(np.uint8), shape).astype(bool)
    # Organic edges: perturb the coarse masks' boundaries with a smooth field.
    edge = _noise(shape, 12.0 * px, rng)
    water = _organic(water, edge, 6.0 * px, 0.25)
    urban = _organic(urban, edge, 6.0 * px, 0.25) & ~water
    forest = _organic(forest, edge, 5.0 * px, 0.3) & ~water

    # Roads: a jittered major grid over the whole world; minor streets per district orientation.
    roads = np.zeros(shape, dtype=np.uint8)
    major = _grid_lines(rng, (0, 0, w, h), rng.uniform(-0.3, 0.3), 450.0 * px, 40.0 * px, 20.0 * px)
    districts_c = _voronoi_labels((ch, cw), 700.0 / 4.0, rng)
    districts = _upsample_nearest(districts_c, shape)
    minor = np.zeros(shape, dtype=np.uint8)
    district_angle = {}
    for label in np.unique(districts_c):
        rows, cols = np.nonzero(districts_c == label)
        r0, r1 = rows.min() * coarse_f, min(h, (rows.max() + 1) * coarse_f)
        c0, c1 = cols.min() * coarse_f, min(w, (cols.max() + 1) * coarse_f)
        angle = rng.uniform(0, math.pi / 2) if rng.uniform() < 0.6 else rng.normal(0, 0.05)
        district_angle[int(label)] = angle
        crop = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
        lines = _grid_lines(rng, (0, 0, c1 - c0, r1 - r0), angle, rng.uniform(90, 150) * px, 6.0 * px, 10.0 * px)
        _draw_lines(crop, lines, 1, max(1, round(rng.uniform(5, 8) * px)))
        inside = districts[r0:r1, c0:c1] == label
        minor[r0:r1, c0:c1][inside] = crop[inside]
    roads[(minor > 0) & urban] = 1
    # Rural dirt tracks along some field edges: a sparse jittered grid in a random orientation.
    tracks = np.zeros(shape, dtype=np.uint8)
    _draw_lines(tracks, _grid_lines(rng, (0, 0, w, h), rng.uniform(0, math.pi), 320.0 * px, 25.0 * px, 15.0 * px),
                1, max(1, round(3.5 * px)))
    roads[(tracks > 0) & ~urban] = 3
    major_mask = np.zeros(shape, dtype=np.uint8)
    _draw_lines(major_mask, major, 1, max(2, round(11.0 * px)))
    roads[major_mask > 0] = 2
    roads[water & (roads != 2)] = 0  # major roads bridge the river

    # Field parcels (everywhere; visible where nothing else is).
    # Parcels are computed at full resolution so their straight boundaries have no staircase.
    parcels = _voronoi_labels(shape, 130.0 * px, rng)
    n_parcels = int(parcels.max()) + 1
    crop_idx = rng.integers(0, len(CROPS_DATE1), n_parcels)
    stripe_angle = rng.uniform(0, math.pi, n_parcels)
    stripe_period = rng.uniform(3.0, 12.0, n_parcels) * px

    buildings = _place_buildings(rng, shape, px, urban, roads, water, districts, district_angle, density,
                                 coarse_f)
    trees = _place_trees(rng, shape, px, urban, roads, water, forest, parcels[::coarse_f, ::coarse_f], coarse_f)
    stats = {"urban_fraction": float(urban.mean()), "water_fraction": float(water.mean()),
             "forest_fraction": float(forest.mean()), "road_fraction": float((roads > 0).mean()),
             "buildings": int((~buildings.candidate).sum()), "trees": len(trees), "parcels": n_parcels}
    return Layout(spec, shape, roads, water, urban, forest, parcels, crop_idx, stripe_angle, stripe_period,
                  buildings, trees, stats)


def _place_buildings(rng: np.random.Generator, shape: tuple[int, int], px: float, urban: np.ndarray,
                     roads: np.ndarray, water: np.ndarray, districts: np.ndarray, district_angle: dict,
                     density: np.ndarray, coarse_f: int) -> Buildings:
    """Rectangular footprints on a jittered lattice in urban areas, aligned with the district
    streets, kept off roads, water and each other. Denser, taller and larger where density is high."""
    h, w = shape
    spacing = 11.0 * px
    n = int((h / spacing) * (w / spacing))
    cy = rng.uniform(0, h, n)
    cx = rng.uniform(0, w, n)
    ri, ci = cy.astype(int), cx.astype(int)
    keep = urban[ri, ci] & (roads[ri, ci] == 0) & ~water[ri, ci]
    cx, cy, ri, ci = cx[keep], cy[keep], ri[keep], ci[keep]
    local = density[np.minimum(ri // coarse_f, density.shape[0] - 1), np.minimum(ci // coarse_f, density.shape[1] - 1)]
    big = rng.uniform(size=len(cx)) < np.clip(0.08 + 0.3 * local, 0.03, 0.4)  # industrial / blocks
    length = np.where(big, rng.uniform(30, 70, len(cx)), rng.uniform(10, 24, len(cx))) * px
    width = np.where(big, rng.uniform(18, 40, len(cx)), rng.uniform(7, 13, len(cx))) * px
    angle = np.array([district_angle.get(int(d), 0.0) for d in districts[ri, ci]])
    angle = angle + rng.choice([0.0, math.pi / 2], len(cx)) + rng.normal(0, 0.04, len(cx))
    height = np.where(big, rng.uniform(8, 30, len(cx)), rng.uniform(5, 12, len(cx)))
    gable = ~big & (rng.uniform(size=len(cx)) < 0.75)
    roof = rng.integers(0, len(ROOFS), len(cx))
    candidate = rng.uniform(size=len(cx)) < 0.08  # only appear on dates with new construction

    # Static checks, vectorised: the footprint (with a 2 m gap) must lie in town, off roads
    # and water, and inside the raster; probed at its corners, edge midpoints and centre.
    gap = 2.0 * px
    rects = _rects(cx, cy, length + gap, width + gap, angle)  # (N, 4, 2)
    probes = np.concatenate([rects, (rects + np.roll(rects, 1, axis=1)) / 2.0,
                             np.stack([cx, cy], axis=1)[:, None, :]], axis=1)
    pc, pr = probes[..., 0].astype(int), probes[..., 1].astype(int)
    inside = (pr.min(1) >= 0) & (pc.min(1) >= 0) & (pr.max(1) < h) & (pc.max(1) < w)
    pr, pc = np.clip(pr, 0, h - 1), np.clip(pc, 0, w - 1)
    free = urban[pr, pc].all(1) & (roads[pr, pc] == 0).all(1) & ~water[pr, pc].any(1)
    ok = np.nonzero(inside & free)[0]
    # Greedy non-overlap in random order against an occupancy mask of accepted footprints.
    occupied = np.zeros(shape, dtype=np.uint8)
    accepted = np.zeros(len(cx), dtype=bool)
    polys = np.round(rects).astype(np.int32)
    for i in rng.permutation(ok):
        if occupied[pr[i], pc[i]].any():
            continue
        cv2.fillConvexPoly(occupied, polys[i], 1)
        accepted[i] = True
    a = accepted
    return Buildings(cx[a], cy[a], length[a], width[a], angle[a], height[a], gable[a], roof[a], candidate[a])


def _rects(cx: np.ndarray, cy: np.ndarray, length: np.ndarray, width: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Corners (N, 4, 2) of rotated rectangles, in order around the rectangle."""
    c, s = np.cos(angle), np.sin(angle)
    u = np.stack([c, s], axis=1) * (length / 2.0)[:, None]
    v = np.stack([-s, c], axis=1) * (width / 2.0)[:, None]
    centre = np.stack([cx, cy], axis=1)
    return np.stack([centre - u - v, centre + u - v, centre + u + v, centre - u + v], axis=1)


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u = np.array([c, s]) * length / 2.0
    v = np.array([-s, c]) * width / 2.0
    centre = np.array([cx, cy])
    return np.array([centre - u - v, centre + u - v, centre + u + v, centre - u + v])


def _place_trees(rng: np.random.Generator, shape: tuple[int, int], px: float, urban: np.ndarray,
                 roads: np.ndarray, water: np.ndarray, forest: np.ndarray, parcels_c: np.ndarray,
                 coarse_f: int) -> np.ndarray:
    """Street/garden trees in towns and hedgerow trees along field boundaries."""
    h, w = shape
    n_urban = int(h * w / (60.0 * px) ** 2 * 2)
    ty, tx = rng.uniform(0, h, n_urban), rng.uniform(0, w, n_urban)
    ri, ci = ty.astype(int), tx.astype(int)
    ok = urban[ri, ci] & (roads[ri, ci] == 0) & ~water[ri, ci]
    urban_trees = np.stack([tx[ok], ty[ok]], axis=1)
    # Field boundaries on the coarse parcel map: pixels whose right/lower neighbour differs.
    edge = np.zeros(parcels_c.shape, dtype=bool)
    edge[:, :-1] |= parcels_c[:, :-1] != parcels_c[:, 1:]
    edge[:-1, :] |= parcels_c[:-1, :] != parcels_c[1:, :]
    er, ec = np.nonzero(edge)
    pick = rng.uniform(size=len(er)) < 0.25
    hy = (er[pick] + rng.uniform(0, 1, pick.sum())) * coarse_f
    hx = (ec[pick] + rng.uniform(0, 1, pick.sum())) * coarse_f
    inside = (hy < h) & (hx < w)
    hy, hx = hy[inside], hx[inside]
    ok = ~urban[hy.astype(int), hx.astype(int)] & ~water[hy.astype(int), hx.astype(int)] & ~forest[
        hy.astype(int), hx.astype(int)] & (roads[hy.astype(int), hx.astype(int)] == 0)
    hedge = np.stack([hx[ok], hy[ok]], axis=1)
    pts = np.vstack([urban_trees, hedge])
    radius = rng.uniform(2.0, 5.0, len(pts)) * px
    return np.column_stack([pts, radius]).astype(np.float32)


def _palette_array(colours: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(colours, dtype=np.float32)


def _vegetation(autumn: float) -> tuple[np.ndarray, np.ndarray]:
    """(forest canopy, tree crown) BGR for a season: green -> yellow/brown with `autumn`."""
    green, brown = np.array([45, 90, 50], np.float32), np.array([40, 95, 120], np.float32)
    crown_green, crown_brown = np.array([50, 110, 65], np.float32), np.array([45, 120, 150], np.float32)
    return green + autumn * (brown - green), crown_green + autumn * (crown_brown - crown_green)


def render_layout(layout: Layout, style: DateStyle = DATE1) -> np.ndarray:
    """Paint `layout` as seen on one date; returns (H, W, 3) BGR uint8."""
    rng = np.random.default_rng([layout.spec.seed, style.seed, 7])
    photo_rng = np.random.default_rng([layout.spec.seed, style.seed, 8])  # own stream: date 1 is unchanged
    h, w = layout.shape
    px = 1.0 / layout.spec.gsd_m
    crops = _palette_array(CROPS_DATE1 if style.name == "date1" else CROPS_DATE2)
    # Fields: parcel colour * crop-row stripes * per-parcel brightness (the base everywhere).
    labels = layout.parcels
    freq = (2.0 * math.pi / layout.stripe_period).astype(np.float32)
    fx = (np.cos(layout.stripe_angle) * freq).astype(np.float32)[labels]
    fx *= np.arange(w, dtype=np.float32)[None, :]
    fy = (np.sin(layout.stripe_angle) * freq).astype(np.float32)[labels]
    fy *= np.arange(h, dtype=np.float32)[:, None]
    fx += fy
    del fy
    stripes = np.sin(fx, out=fx)
    stripes *= 0.09
    stripes += 1.0
    stripes *= rng.uniform(0.85, 1.15, len(layout.crop)).astype(np.float32)[labels]
    crop_idx = layout.crop if style.name == "date1" else rng.permutation(layout.crop)
    img = crops[crop_idx][labels]
    img *= stripes[:, :, None]
    del stripes
    if style.photographic:
        open_land = ~(layout.urban | layout.forest | layout.water)
        photo.finish_fields(img, labels, layout.stripe_angle, style.autumn, open_land, px, photo_rng)
        del open_land

    # Towns: gardens and paved yards mixed by a fine noise field (computed on town pixels only).
    urban = layout.urban
    mix = _noise((h, w), 25.0 * px, rng, octaves=2)[urban]
    garden = np.array([60, 115, 80], np.float32) * (1 - 0.5 * style.autumn) + np.array(
        [70, 120, 135], np.float32) * 0.5 * style.autumn
    paved = np.array([125, 128, 132], np.float32)
    img[urban] = np.where((mix > 0.0)[:, None], garden, paved) * (1.0 + 0.08 * mix)[:, None]
    del mix
    if style.photographic:
        photo.add_surface_texture(img, urban, 1.0 * px, 0.12, photo_rng)

    canopy, crown = _vegetation(style.autumn)
    blobs = _noise((h, w), 5.0 * px, rng, octaves=2)[layout.forest]
    img[layout.forest] = canopy * (1.0 + 0.35 * blobs)[:, None]
    del blobs
    if style.photographic:
        photo.finish_canopy(img, layout.forest, style.autumn, px, photo_rng)

    water_col = np.array([85, 70, 35] if style.name == "date1" else [95, 85, 55], np.float32)
    ripple = _noise((h, w), 40.0 * px, rng)[layout.water]
    img[layout.water] = water_col * (1.0 + 0.1 * ripple)[:, None]
    del ripple

    road_cols = np.array([[0, 0, 0], [105, 105, 108], [85, 85, 88], [110, 140, 160]], np.float32)
    on_road = layout.roads > 0
    img[on_road] = road_cols[layout.roads[on_road]]
    if style.photographic:
        photo.add_surface_texture(img, on_road, 0.5 * px, 0.08, photo_rng)
        photo.park_cars(img, layout.roads, px, photo_rng)

    sun = math.radians(style.sun_azimuth_deg)
    # Shadows fall away from the sun: image direction (col, row) of "away" = (-sin, +cos).
    away = np.array([-math.sin(sun), math.cos(sun)])
    shadow_len = 1.0 / math.tan(math.radians(style.sun_elevation_deg))
    shadow = np.zeros((h, w), dtype=np.uint8)
    b = layout.buildings
    present = _buildings_present(b, style, rng)
    for i in np.nonzero(present)[0]:
        corners = _rect(b.cx[i], b.cy[i], b.length[i], b.width[i], b.angle[i])
        offset = away * b.height[i] * shadow_len * px
        hull = cv2.convexHull(np.round(np.vstack([corners, corners + offset])).astype(np.int32))
        cv2.fillConvexPoly(shadow, hull, 1)
    trees = layout.trees
    for x, y, r in trees:
        cx, cy = x + away[0] * r * 1.6 * shadow_len, y + away[1] * r * 1.6 * shadow_len
        cv2.circle(shadow, (int(cx), int(cy)), int(r), 1, -1)
    if style.photographic:
        photo.soft_shadow(img, shadow, px, style.sun_elevation_deg)
    else:
        img[shadow.view(bool)] *= 0.5
    del shadow

    roofs = _palette_array(ROOFS)
    reroof = rng.uniform(size=len(b)) < style.reroofed_fraction
    roof_idx = np.where(reroof, rng.integers(0, len(ROOFS), len(b)), b.roof)
    jitter = rng.uniform(0.85, 1.15, (len(b), 3))
    lit = np.array([math.sin(sun), -math.cos(sun)])  # towards the sun in image coordinates
    roof_mask = np.zeros((h, w), dtype=np.uint8) if style.photographic else None
    for i in np.nonzero(present)[0]:
        colour = roofs[roof_idx[i]] * jitter[i]
        corners = _rect(b.cx[i], b.cy[i], b.length[i], b.width[i], b.angle[i])
        if roof_mask is not None:
            cv2.fillConvexPoly(roof_mask, np.round(corners).astype(np.int32), 1)
        if b.gable[i]:
            # Two roof planes split along the ridge; the one facing the sun is brighter.
            mid_a, mid_b = (corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2
            half1 = np.array([corners[0], corners[1], mid_b, mid_a])
            half2 = np.array([mid_a, mid_b, corners[2], corners[3]])
            facing = float(np.dot((corners[0] + corners[1]) / 2 - (corners[2] + corners[3]) / 2, lit)) > 0
            for poly, bright in ((half1, facing), (half2, not facing)):
                cv2.fillConvexPoly(img, np.round(poly).astype(np.int32), tuple(float(v) for v in colour * (
                    1.15 if bright else 0.75)))
        else:
            cv2.fillConvexPoly(img, np.round(corners).astype(np.int32), tuple(float(v) * 0.8 for v in colour))
            inner = _rect(b.cx[i], b.cy[i], max(1.0, b.length[i] - 2 * px), max(1.0, b.width[i] - 2 * px), b.angle[i])
            cv2.fillConvexPoly(img, np.round(inner).astype(np.int32), tuple(float(v) for v in colour))
    if roof_mask is not None:
        photo.add_surface_texture(img, roof_mask.view(bool), 0.6 * px, 0.10, photo_rng)
        del roof_mask
    crown_shades = crown[None, :] * rng.uniform(0.7, 1.25, (len(trees), 1))
    if style.photographic:
        crown_shades = photo.tree_colours(len(trees), style.autumn, photo_rng)
    for (x, y, r), colour in zip(trees, crown_shades):
        cv2.circle(img, (int(x), int(y)), int(r), tuple(float(v) for v in colour), -1)
        hx, hy = x + lit[0] * r * 0.35, y + lit[1] * r * 0.35
        cv2.circle(img, (int(hx), int(hy)), max(1, int(r * 0.45)), tuple(float(v) * 1.2 for v in colour), -1)

    # Non-repetitive multi-scale brightness and colour variation, then fine grain.
    lum = _noise((h, w), 220.0 * px, rng, octaves=4)
    lum *= 0.10
    lum += 1.0
    img *= lum[:, :, None]
    del lum
    tint = _noise((h, w), 400.0 * px, rng, octaves=1)
    tint *= 0.05
    img[:, :, 0] *= 1.0 + tint
    img[:, :, 2] *= 1.0 - tint
    del tint
    if style.photographic:
        photo.mosaic_seams(img, px, photo_rng)
    out = np.empty((h, w, 3), dtype=np.uint8)
    np.clip(img, 1, 255, out=img)
    out[...] = img
    grain = rng.integers(-3, 4, (h, w, 1), dtype=np.int8)
    out = _add_grain(out, grain)
    if style.photographic:
        out = photo.sensor_and_file(out, px, photo_rng, style.jpeg_quality)
    return out


def _add_grain(image: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Fine sensor grain: +-3 DN per pixel, saturating."""
    boosted = cv2.add(image, np.repeat(np.maximum(grain, 0).astype(np.uint8), 3, axis=2))
    return cv2.subtract(boosted, np.repeat(np.maximum(-grain, 0).astype(np.uint8), 3, axis=2))


def _buildings_present(b: Buildings, style: DateStyle, rng: np.random.Generator) -> np.ndarray:
    """Which footprints exist on this date: candidates only appear with new construction."""
    demolished = rng.uniform(size=len(b)) < style.demolished_fraction
    built = rng.uniform(size=len(b)) < (style.new_building_fraction / 0.08 if len(b) else 0.0)
    return np.where(b.candidate, built, ~demolished)


def _georeference(spec: WorldSpec) -> tuple[np.ndarray, str]:
    lon, lat = spec.origin_lonlat
    epsg = utm_epsg_for(lon, lat)
    x0, y0 = lonlat_to_crs(lon, lat, f"EPSG:{epsg}")
    x0, y0 = round(float(x0)), round(float(y0))  # whole metres: a declared, reproducible origin
    transform = np.array([[spec.gsd_m, 0.0, x0], [0.0, -spec.gsd_m, y0], [0.0, 0.0, 1.0]])
    return transform, f"EPSG:{epsg}"


def world_from_layout(layout: Layout, style: DateStyle = DATE1, image: np.ndarray | None = None) -> Orthophoto:
    """The georeferenced orthophoto of `layout` on one date (`image` if already rendered)."""
    transform, crs = _georeference(layout.spec)
    spec = layout.spec
    source = f"{GENERATOR_VERSION} seed={spec.seed} {style.name} {spec.width_m:g}x{spec.height_m:g} m gsd={spec.gsd_m:g}"
    ortho = Orthophoto(render_layout(layout, style) if image is None else image, transform, crs, source=source)
    ortho.metadata = {"version": GENERATOR_VERSION, "spec": asdict(spec), "style": asdict(style),
                      "stats": layout.stats}
    return ortho


def generate_world(seed: int = 0, width_m: float = 2000.0, height_m: float = 2000.0, gsd_m: float = 0.8,
                   origin_lonlat: tuple[float, float] = DEFAULT_ORIGIN_LONLAT, date: int = 1) -> Orthophoto:
    """The synthetic orthophoto of one date (1 or 2); same seed => same geography and pixels."""
    layout = build_layout(WorldSpec(seed, width_m, height_m, gsd_m, tuple(origin_lonlat)))
    return world_from_layout(layout, DATE1 if date == 1 else DATE2)


def generate_world_pair(spec: WorldSpec, workers: int = 2) -> tuple[Orthophoto, Orthophoto]:
    """Two co-registered dates of one world: (date 1, date 2), sharing one layout.

    With `workers` >= 2 the two dates are painted in two threads (the big numpy and OpenCV
    operations release the GIL; threads avoid forking a process that holds OpenCV's pool)."""
    layout = build_layout(spec)
    styles = (DATE1, DATE2)
    if workers >= 2:
        with ThreadPoolExecutor(2) as pool:
            images = list(pool.map(lambda style: render_layout(layout, style), styles))
    else:
        images = [render_layout(layout, style) for style in styles]
    return world_from_layout(layout, DATE1, images[0]), world_from_layout(layout, DATE2, images[1])
