"""Terrain heights (a DEM) for height above ground, read from a GeoTIFF (the simulator synthesises one).

Onboard, the barometer gives the vehicle's altitude above mean sea level (or above its take-off
point), but a pose-aware query needs the camera's height above the ground it looks at. With a DEM
that is `altitude AMSL - terrain height under the look-at point` (`meanloc localize --dem`).
Without one, the height above home is wrong by the terrain's relief between home and the look-at
point. The synthetic world's rendering stays flat (datasets-and-metrics.md §5.8): terrain here only
changes which height the sensors report, not what the camera sees.

Python 3.8 compatible and torch-free; reading a GeoTIFF needs rasterio (the `geo` extra).
"""

from pathlib import Path
from typing import Any

import numpy as np

from meanloc.errors import MeanlocError

from .orthophoto import crs_text, require_module


class Terrain:
    """Heights in metres on a north-up grid in a metric CRS; bilinear lookup in that CRS."""

    def __init__(self, heights: np.ndarray, transform: np.ndarray, crs: str, source: str = "") -> None:
        heights = np.asarray(heights, dtype=np.float64)
        if heights.ndim != 2 or min(heights.shape) < 2:
            raise MeanlocError("a DEM needs a 2-D grid of at least 2 x 2 heights, got shape {}".format(heights.shape))
        transform = np.asarray(transform, dtype=np.float64)
        if abs(transform[0, 1]) > 1e-9 or abs(transform[1, 0]) > 1e-9:
            raise MeanlocError("DEM {} is rotated; warp it north-up first (e.g. gdalwarp)".format(source or ""))
        self.heights = heights
        self.transform = transform
        self.inverse = np.linalg.inv(transform)
        self.crs = crs
        self.source = source

    def height_at(self, x: Any, y: Any) -> np.ndarray:
        """Bilinear height at world points (metres in `crs`); NaN outside the grid or on no-data."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        cols = self.inverse[0, 0] * x + self.inverse[0, 1] * y + self.inverse[0, 2] - 0.5  # pixel-centre indices
        rows = self.inverse[1, 0] * x + self.inverse[1, 1] * y + self.inverse[1, 2] - 0.5
        h, w = self.heights.shape
        inside = (cols >= 0) & (rows >= 0) & (cols <= w - 1) & (rows <= h - 1)
        c0 = np.clip(np.floor(cols).astype(np.int64), 0, w - 2)
        r0 = np.clip(np.floor(rows).astype(np.int64), 0, h - 2)
        fc = np.clip(cols - c0, 0.0, 1.0)
        fr = np.clip(rows - r0, 0.0, 1.0)
        z = self.heights
        top = z[r0, c0] * (1 - fc) + z[r0, c0 + 1] * fc
        bottom = z[r0 + 1, c0] * (1 - fc) + z[r0 + 1, c0 + 1] * fc
        value = top * (1 - fr) + bottom * fr
        return np.where(inside, value, np.nan)

    @classmethod
    def from_geotiff(cls, path: Any) -> "Terrain":
        rasterio = require_module("rasterio", "geo")
        path = Path(path)
        if not path.is_file():
            raise MeanlocError("DEM not found: {}".format(path))
        try:
            with rasterio.open(str(path)) as src:
                heights = src.read(1, masked=True).astype(np.float64).filled(np.nan)
                t = src.transform
                crs = src.crs
        except rasterio.errors.RasterioError as exc:
            raise MeanlocError("cannot read DEM {}: {}".format(path, exc)) from None
        if crs is None:
            raise MeanlocError("DEM {} has no CRS".format(path))
        if crs.is_geographic:
            raise MeanlocError("DEM {} is in geographic degrees ({}); reproject it to the orthophoto's metric CRS "
                               "(e.g. gdalwarp -t_srs EPSG:326xx)".format(path, crs.to_string()))
        transform = np.array([[t.a, t.b, t.c], [t.d, t.e, t.f], [0.0, 0.0, 1.0]])
        return cls(heights, transform, crs_text(crs), str(path))

    def save_geotiff(self, path: Any) -> None:
        rasterio = require_module("rasterio", "geo")
        from rasterio.transform import Affine

        t = self.transform
        with rasterio.open(str(path), "w", driver="GTiff", height=self.heights.shape[0], width=self.heights.shape[1],
                           count=1, dtype="float32", crs=self.crs, nodata=float("nan"),
                           transform=Affine(t[0, 0], t[0, 1], t[0, 2], t[1, 0], t[1, 1], t[1, 2])) as dst:
            dst.write(self.heights.astype(np.float32), 1)
