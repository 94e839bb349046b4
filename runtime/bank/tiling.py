"""Where bank tiles come from: a north-up grid cut from an orthophoto, or image files listed in a
CSV/JSON with their georeferencing.

A tile source is a deterministic list of candidate tiles; `load(i)` returns the i-th tile's BGR
image and metadata row, or None when it is skipped (too little valid data). Planning is cheap,
so a resumed build recomputes the same list and skips finished shards.

Tile list format for `FileTileSource` (CSV with a header, or JSON: a list of objects or
{"tiles": [...]}), paths relative to the tiles folder:
  id, path, center_lat, center_lon, tl_lat, tl_lon, tr_lat, tr_lon, br_lat, br_lon, bl_lat, bl_lon[, gsd]
with corners clockwise from top-left. Python 3.8 compatible (pyproj/cv2/rasterio imported lazily).
"""

import csv
import functools
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

from ..artifacts import sha256_file
from .frame import LocalFrame
from .tiles import CORNER_COLUMNS, CORNER_NAMES

TileRow = Dict[str, Any]
LIST_REQUIRED = ("id", "path", "center_lat", "center_lon", *CORNER_COLUMNS)


class OrthophotoTileSource:
    """North-up square tiles of side `tile_m * scale` on a grid of stride `side * (1 - overlap)`,
    centred in the orthophoto's extent; row 0 is the northernmost row."""

    def __init__(
        self,
        ortho: Any,
        tile_m: float,
        overlap: float = 0.5,
        scales: Sequence[float] = (1.0,),
        tile_px: int = 384,
        min_valid: float = 0.5,
    ) -> None:
        if not tile_m > 0:
            raise MeanlocError("--tile-m must be > 0, got {}".format(tile_m))
        if not 0.0 <= overlap < 1.0:
            raise MeanlocError("--overlap must be in [0, 1), got {}".format(overlap))
        if not scales or any(not s > 0 for s in scales):
            raise MeanlocError("--scales must be positive numbers, got {}".format(list(scales)))
        if not 0.0 <= min_valid <= 1.0:
            raise MeanlocError("--min-valid must be in [0, 1], got {}".format(min_valid))
        self.ortho = ortho
        self.params = {
            "type": "orthophoto",
            "source_id": Path(str(ortho.source)).name or "orthophoto",
            "source_sha256": str(ortho.source_sha256),
            "crs": ortho.crs,
            "tile_m": float(tile_m),
            "overlap": float(overlap),
            "scales": [float(s) for s in scales],
            "tile_px": int(tile_px),
            "min_valid": float(min_valid),
        }
        self._candidates = self._plan()

    def _plan(self) -> List[Tuple[float, int, int, float, float]]:
        min_x, min_y, max_x, max_y = self.ortho.bounds_world()
        plan = []
        for scale in self.params["scales"]:
            side = self.params["tile_m"] * scale
            stride = side * (1.0 - self.params["overlap"])
            xs = _grid_centres(min_x, max_x, side, stride)
            ys = _grid_centres(min_y, max_y, side, stride)[::-1]  # north first
            plan.extend((scale, r, c, x, y) for r, y in enumerate(ys) for c, x in enumerate(xs))
        return plan

    def __len__(self) -> int:
        return len(self._candidates)

    def describe(self) -> Dict[str, Any]:
        return dict(self.params, candidates=len(self))

    def load(self, index: int) -> Optional[Tuple[np.ndarray, TileRow]]:
        scale, row, col, cx, cy = self._candidates[index]
        side = self.params["tile_m"] * scale
        image, valid_fraction = self.ortho.crop_north_up((cx, cy), side, self.params["tile_px"])
        if valid_fraction < self.params["min_valid"]:
            return None
        half = side / 2.0
        xs = np.array([cx, cx - half, cx + half, cx + half, cx - half])
        ys = np.array([cy, cy + half, cy + half, cy - half, cy - half])
        lon, lat = self.ortho.world_to_lonlat(xs, ys)
        tile = {
            "name": "s{:g}_r{:04d}_c{:04d}".format(scale, row, col),
            "scale": scale,
            "side_m": side,
            "grid_row": row,
            "grid_col": col,
            "center_e": cx,
            "center_n": cy,
            "crs": self.ortho.crs,
            "gsd": float(self.ortho.gsd),
            "north_up": 1,
            "valid_fraction": valid_fraction,
            "source_id": self.params["source_id"],
            "source_sha256": self.params["source_sha256"],
            "path": "",
        }
        _set_geo(tile, lat, lon)
        return image, tile


def _grid_centres(lo: float, hi: float, side: float, stride: float) -> List[float]:
    extent = hi - lo
    if extent < side:
        return []
    count = math.floor((extent - side) / stride + 1e-9) + 1
    # Centre the grid so the unused margin is split evenly between both edges.
    first = lo + side / 2.0 + (extent - side - (count - 1) * stride) / 2.0
    return [first + i * stride for i in range(count)]


def _set_geo(tile: TileRow, lat: np.ndarray, lon: np.ndarray) -> None:
    """lat/lon arrays: centre, then corners TL, TR, BR, BL."""
    tile["center_lat"], tile["center_lon"] = float(lat[0]), float(lon[0])
    for i, corner in enumerate(CORNER_NAMES):
        tile[corner + "_lat"], tile[corner + "_lon"] = float(lat[i + 1]), float(lon[i + 1])


class FileTileSource:
    """Tile images from a folder, georeferenced by a CSV or JSON list (format in the module doc).

    A bad tile image (damaged, truncated, too large or small, not an image) is refused, by the
    up-front probe of every file or when it is decoded; with `skip_bad_images` it is skipped like a
    tile without valid data and counted in `bad_images`."""

    def __init__(self, tiles_dir: Path, list_path: Path, skip_bad_images: bool = False) -> None:
        from ..images import BadImages, ImageError, probe_image

        self.tiles_dir = Path(tiles_dir)
        self.list_path = Path(list_path)
        self.skip_bad_images = skip_bad_images
        self.bad_images = BadImages()
        if not self.tiles_dir.is_dir():
            raise MeanlocError("tiles folder not found: {}".format(self.tiles_dir))
        self.entries = _read_tile_list(self.list_path)
        missing = [e["path"] for e in self.entries if not (self.tiles_dir / e["path"]).is_file()]
        if missing:
            raise MeanlocError(
                "{} tile file(s) listed in {} are missing, e.g. {}".format(
                    len(missing), self.list_path, self.tiles_dir / missing[0]
                )
            )
        if not skip_bad_images:  # minutes of embedding must not end at a truncated tile
            for entry in self.entries:
                try:
                    probe_image(self.tiles_dir / entry["path"])
                except ImageError as exc:
                    raise MeanlocError("{}; pass --skip-bad-images to build without such tiles".format(
                        str(exc).rstrip("."))) from None
        self.params = {
            "type": "tiles",
            "list": self.list_path.name,
            "list_sha256": sha256_file(self.list_path),
        }

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> Dict[str, Any]:
        return dict(self.params, candidates=len(self))

    def load(self, index: int) -> Optional[Tuple[np.ndarray, TileRow]]:
        from ..images import ImageError, read_image

        entry = self.entries[index]
        path = self.tiles_dir / entry["path"]
        try:
            image = read_image(path)
        except ImageError as exc:
            if not self.skip_bad_images:
                raise MeanlocError("{}; pass --skip-bad-images to build without such tiles".format(
                    str(exc).rstrip("."))) from None
            self.bad_images.add(exc)
            return None
        lat = np.array([entry["center_lat"]] + [entry[c + "_lat"] for c in CORNER_NAMES])
        lon = np.array([entry["center_lon"]] + [entry[c + "_lon"] for c in CORNER_NAMES])
        tile = {
            "name": entry["id"],
            "scale": 1.0,
            "side_m": _side_from_corners(lat[1:], lon[1:]),
            "grid_row": -1,
            "grid_col": -1,
            "gsd": entry["gsd"],
            "north_up": int(_is_north_up(lat[1:], lon[1:])),
            "valid_fraction": 1.0,
            "source_id": entry["path"],
            "source_sha256": sha256_file(path),
            "path": entry["path"],
        }
        tile["crs"], tile["center_e"], tile["center_n"] = _utm(float(lat[0]), float(lon[0]))
        _set_geo(tile, lat, lon)
        return image, tile


def _side_from_corners(lat: np.ndarray, lon: np.ndarray) -> float:
    frame = LocalFrame(float(lat.mean()), float(lon.mean()))
    x, y = frame.to_xy(lat, lon)
    edges = np.hypot(np.diff(np.append(x, x[0])), np.diff(np.append(y, y[0])))
    return float(edges.mean())


def _is_north_up(lat: np.ndarray, lon: np.ndarray, tolerance_deg: float = 1.0) -> bool:
    frame = LocalFrame(float(lat.mean()), float(lon.mean()))
    x, y = frame.to_xy(lat, lon)
    top_edge_angle = math.degrees(math.atan2(y[1] - y[0], x[1] - x[0]))  # TL -> TR points east
    return abs(top_edge_angle) < tolerance_deg


def _utm(lat: float, lon: float) -> Tuple[str, float, float]:
    """The tile centre in the UTM zone that contains it (the E/N of file tiles)."""
    from ..geo.orthophoto import utm_epsg_for

    crs = "EPSG:{}".format(utm_epsg_for(lon, lat))
    east, north = _from_wgs84(crs).transform(lon, lat)
    return crs, float(east), float(north)


@functools.lru_cache(maxsize=8)
def _from_wgs84(crs: str) -> Any:
    # Building a pyproj transformer costs milliseconds; tiles of one area share a zone.
    try:
        import pyproj
    except ImportError:
        raise MissingDependencyError("building a bank from tile files needs pyproj: pip install pyproj") from None
    return pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def _read_tile_list(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise MeanlocError("tile list not found: {}".format(path))
    try:
        if path.suffix.lower() == ".json":
            payload = json.loads(path.read_text(encoding="utf-8"))
            records = payload.get("tiles") if isinstance(payload, dict) else payload
            if not isinstance(records, list):
                raise MeanlocError('{} must hold a list of tiles or {{"tiles": [...]}}'.format(path))
        else:
            with open(str(path), newline="", encoding="utf-8") as handle:
                records = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise MeanlocError("cannot read tile list {}: {}".format(path, exc)) from None
    if not records:
        raise MeanlocError("tile list {} is empty".format(path))
    return [_parse_entry(record, path, i) for i, record in enumerate(records)]


def _parse_entry(record: Any, path: Path, index: int) -> Dict[str, Any]:
    where = "{} entry {}".format(path, index + 1)
    if not isinstance(record, dict):
        raise MeanlocError("{} is not an object".format(where))
    missing = [c for c in LIST_REQUIRED if record.get(c) in (None, "")]
    if missing:
        raise MeanlocError(
            "{} lacks {} (needed columns: {})".format(where, ", ".join(missing), ", ".join(LIST_REQUIRED))
        )
    entry = {"id": str(record["id"]), "path": str(record["path"])}
    try:
        for column in ("center_lat", "center_lon", *CORNER_COLUMNS):
            entry[column] = float(record[column])
        gsd = record.get("gsd")
        entry["gsd"] = float(gsd) if gsd not in (None, "") else float("nan")
    except (TypeError, ValueError) as exc:
        raise MeanlocError("{} has a non-numeric coordinate: {}".format(where, exc)) from None
    lats = [entry[c] for c in entry if c.endswith("_lat")]
    lons = [entry[c] for c in entry if c.endswith("_lon")]
    if any(not -90 <= v <= 90 for v in lats) or any(not -180 <= v <= 180 for v in lons):
        raise MeanlocError("{} has a latitude/longitude out of range".format(where))
    return entry
