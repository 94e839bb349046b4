"""A georeferenced orthophoto in a metric CRS: image, validity mask and pixel <-> metre affine.

Conventions (datasets-and-metrics.md §5.1):
- `transform` is the 3x3 form of the GDAL geotransform: it maps pixel coordinates in the
  **corner convention** (col, row), where (0, 0) is the outer top-left corner of the top-left
  pixel, to projected metres (x east, y north). The centre of pixel (c, r) is therefore at
  `transform @ (c + 0.5, r + 0.5, 1)`. OpenCV indexes pixel centres at integers, so every
  OpenCV warp shifts by half a pixel on both sides (see `_corner_to_index`).
- Geometry is always done in metres. A geographic (EPSG:4326) input is re-expressed in the UTM
  zone of its centre by fitting the affine through its projected corners.
- Rotated geotransforms (b, d != 0) are supported: all mappings go through the full affine.
- `valid` marks pixels with real data (no-data value, alpha band or mask of the source).

Python 3.8 compatible and torch-free (onboard code cuts bank tiles with it).
"""

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

# Corners are always listed clockwise from the top-left: TL, TR, BR, BL.
CORNER_NAMES = ("top_left", "top_right", "bottom_right", "bottom_left")


class GeoreferenceWarning(UserWarning):
    """The georeferencing is usable but suspicious (corner residual, not north-up)."""


def require_module(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError("{} is not installed; run `pip install meanloc[{}]`".format(module, extra)) from None


def require_cv2() -> Any:
    return require_module("cv2", "runtime")


def crs_text(crs: Any) -> str:
    """How a rasterio CRS is named throughout meanloc (so two rasters' CRSs compare as strings)."""
    epsg = crs.to_epsg()
    return "EPSG:{}".format(epsg) if epsg else crs.to_wkt()


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing (lon, lat): 326xx north, 327xx south."""
    zone = math.floor((lon + 180.0) / 6.0) + 1
    zone = min(max(zone, 1), 60)
    return (32600 if lat >= 0 else 32700) + zone


def _transformer(src: str, dst: str) -> Any:
    pyproj = require_module("pyproj", "runtime")
    try:
        return pyproj.Transformer.from_crs(src, dst, always_xy=True)
    except pyproj.exceptions.CRSError as exc:
        raise MeanlocError("cannot use CRS {} -> {}: {}".format(src, dst, exc)) from None


def lonlat_to_crs(lon: Any, lat: Any, crs: str) -> Tuple[np.ndarray, np.ndarray]:
    """WGS84 (lon, lat) -> (x, y) in `crs`."""
    x, y = _transformer("EPSG:4326", crs).transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    return np.asarray(x), np.asarray(y)


def affine_from_points(pixels: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Exact 3x3 affine mapping three pixel points (corner convention) to three world points."""
    src = np.hstack([np.asarray(pixels, dtype=np.float64), np.ones((3, 1))])
    try:
        rows = np.linalg.solve(src, np.asarray(world, dtype=np.float64))  # (3, 2)
    except np.linalg.LinAlgError:
        raise MeanlocError("the corner coordinates are degenerate (collinear or repeated)") from None
    affine = np.eye(3)
    affine[:2, :] = rows.T
    return affine


def index_mapping(corner_matrix: np.ndarray) -> np.ndarray:
    """Turn a dst -> src map in corner-convention pixels into one on OpenCV's pixel indices.

    OpenCV puts pixel centres at integers; the corner convention puts them at +0.5, so the
    destination index is shifted in by half a pixel and the source result shifted back.
    """
    shift_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    shift_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    return shift_out @ corner_matrix @ shift_in


def warp(source: np.ndarray, out_to_src: np.ndarray, out_size: Tuple[int, int], interpolation: int) -> np.ndarray:
    """Inverse-map warp: output pixel p (corner coords) samples the source at `out_to_src @ p`.

    Outside the source is 0. Affine maps use warpAffine, projective ones warpPerspective.
    """
    cv2 = require_cv2()
    # Normalise first: a nadir homography has no perspective terms but its scale sits in [2, 2].
    mapping = index_mapping(out_to_src)
    mapping = mapping / mapping[2, 2]
    flags = interpolation | cv2.WARP_INVERSE_MAP
    if mapping[2, 0] == 0 and mapping[2, 1] == 0:
        return cv2.warpAffine(source, mapping[:2], out_size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpPerspective(source, mapping, out_size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def area_resample(source: np.ndarray, out_to_src: np.ndarray, out_size: Tuple[int, int]) -> np.ndarray:
    """Anti-aliased affine warp: render at k times the size (k = ceil of source pixels per output
    pixel) with bilinear sampling, then reduce with area averaging, so downsampling never aliases.
    """
    cv2 = require_cv2()
    width, height = out_size
    scale = math.sqrt(abs(float(np.linalg.det(out_to_src[:2, :2]))))
    factor = max(1, math.ceil(scale - 1e-6))
    up = np.diag([1.0 / factor, 1.0 / factor, 1.0])
    big = warp(source, out_to_src @ up, (width * factor, height * factor), cv2.INTER_LINEAR)
    if factor == 1:
        return big
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


class Orthophoto:
    """An orthophoto in a projected (metric) CRS.

    Attributes: `image` (H, W, 3) BGR uint8; `valid` (H, W) bool; `transform` 3x3 pixel (corner
    convention) -> metres; `crs` e.g. "EPSG:32632"; `gsd` metres per pixel; `source` a free
    description (path, generator) and `source_sha256` (hash of the input file, if any).
    """

    def __init__(self, image: np.ndarray, transform: np.ndarray, crs: str, valid: Optional[np.ndarray] = None,
                 source: str = "", source_sha256: str = "") -> None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise MeanlocError("orthophoto image must be (H, W, 3) uint8, got {} {}".format(image.shape, image.dtype))
        transform = np.asarray(transform, dtype=np.float64)
        if transform.shape != (3, 3) or not np.allclose(transform[2], [0.0, 0.0, 1.0]):
            raise MeanlocError("orthophoto transform must be a 3x3 affine matrix")
        if abs(float(np.linalg.det(transform[:2, :2]))) < 1e-12:
            raise MeanlocError("orthophoto geotransform is degenerate (zero pixel area)")
        if valid is None:
            valid = np.ones(image.shape[:2], dtype=bool)
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != image.shape[:2]:
            raise MeanlocError("validity mask shape {} != image shape {}".format(valid.shape, image.shape[:2]))
        self.image = image
        self.valid = valid
        self.transform = transform
        self.inverse = np.linalg.inv(transform)
        self.crs = str(crs)
        self.source = source
        self.source_sha256 = source_sha256
        self._to_lonlat = None  # type: Any
        self._from_lonlat = None  # type: Any
        self._pyramid = None  # type: Optional[list]
        self.corner_residual_px = 0.0
        self.metadata = {}  # type: Dict[str, Any]  # free-form provenance (e.g. generator parameters)

    # -- basic properties -------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def gsd(self) -> float:
        """Ground sampling distance in metres per pixel (geometric mean of the two axes)."""
        return math.sqrt(abs(float(np.linalg.det(self.transform[:2, :2]))))

    @property
    def rotation_deg(self) -> float:
        """Angle of the pixel column axis from east (0 for north-up rasters)."""
        return math.degrees(math.atan2(self.transform[1, 0], self.transform[0, 0]))

    @property
    def is_north_up(self) -> bool:
        a, b, d, e = self.transform[0, 0], self.transform[0, 1], self.transform[1, 0], self.transform[1, 1]
        return abs(b) < 1e-9 * abs(a) and abs(d) < 1e-9 * abs(a) and a > 0 and e < 0

    def describe(self) -> Dict[str, Any]:
        lon, lat = self.world_to_lonlat(*self.center_world())
        return {
            "width_px": self.width, "height_px": self.height, "crs": self.crs, "gsd_m": self.gsd,
            "transform": self.transform.tolist(), "north_up": self.is_north_up,
            "center_lonlat": [float(lon), float(lat)], "valid_fraction": float(self.valid.mean()),
            "bounds_world": list(self.bounds_world()), "bounds_lonlat": self.bounds_lonlat(),
            "size_m": [self.width * self.gsd, self.height * self.gsd],
            "source": self.source, "source_sha256": self.source_sha256,
        }

    def bounds_lonlat(self) -> List[float]:
        """[lon_min, lat_min, lon_max, lat_max] of the raster's four outer corners (WGS84)."""
        x, y = self.pixel_to_world([0, self.width, self.width, 0], [0, 0, self.height, self.height])
        lon, lat = self.world_to_lonlat(x, y)
        return [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]

    # -- coordinate conversions -------------------------------------------------------------
    def pixel_to_world(self, cols: Any, rows: Any) -> Tuple[np.ndarray, np.ndarray]:
        """Corner-convention pixel coordinates -> metres (pixel centres are at c + 0.5)."""
        cols = np.asarray(cols, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.float64)
        t = self.transform
        return t[0, 0] * cols + t[0, 1] * rows + t[0, 2], t[1, 0] * cols + t[1, 1] * rows + t[1, 2]

    def world_to_pixel(self, x: Any, y: Any) -> Tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        t = self.inverse
        return t[0, 0] * x + t[0, 1] * y + t[0, 2], t[1, 0] * x + t[1, 1] * y + t[1, 2]

    def world_to_lonlat(self, x: Any, y: Any) -> Tuple[np.ndarray, np.ndarray]:
        if self._to_lonlat is None:
            self._to_lonlat = _transformer(self.crs, "EPSG:4326")
        lon, lat = self._to_lonlat.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        return np.asarray(lon), np.asarray(lat)

    def lonlat_to_world(self, lon: Any, lat: Any) -> Tuple[np.ndarray, np.ndarray]:
        if self._from_lonlat is None:
            self._from_lonlat = _transformer("EPSG:4326", self.crs)
        x, y = self._from_lonlat.transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        return np.asarray(x), np.asarray(y)

    def bounds_world(self) -> Tuple[float, float, float, float]:
        """(min_x, min_y, max_x, max_y) of the raster's outer corners in metres."""
        x, y = self.pixel_to_world([0, self.width, self.width, 0], [0, 0, self.height, self.height])
        return float(x.min()), float(y.min()), float(x.max()), float(y.max())

    def center_world(self) -> Tuple[float, float]:
        x, y = self.pixel_to_world(self.width / 2.0, self.height / 2.0)
        return float(x), float(y)

    def contains_world(self, x: Any, y: Any, margin_px: float = 0.0) -> np.ndarray:
        """True where (x, y) lies inside the raster and on a valid pixel."""
        cols, rows = self.world_to_pixel(x, y)
        inside = (cols >= margin_px) & (rows >= margin_px) & (cols < self.width - margin_px) & (
            rows < self.height - margin_px)
        ci = np.clip(np.floor(cols).astype(np.int64), 0, self.width - 1)
        ri = np.clip(np.floor(rows).astype(np.int64), 0, self.height - 1)
        return inside & self.valid[ri, ci]

    # -- resampling -------------------------------------------------------------------------
    def pyramid(self, max_levels: int = 8) -> list:
        """Gaussian pyramid of the image (level 0 = the image); built once, used against aliasing."""
        if self._pyramid is None:
            cv2 = require_cv2()
            levels = [self.image]
            while len(levels) < max_levels and min(levels[-1].shape[:2]) >= 32:
                levels.append(cv2.pyrDown(levels[-1]))
            self._pyramid = levels
        return self._pyramid

    def crop_north_up(self, center_xy: Sequence[float], side_m: float, out_px: int) -> Tuple[np.ndarray, float]:
        """Cut a north-up square tile of `side_m` metres centred on `center_xy`, `out_px` wide.

        Area interpolation (supersample then INTER_AREA) so the tile is not aliased. Returns the
        BGR tile and the fraction of its pixels that fall on valid source data.
        """
        if side_m <= 0 or out_px <= 0:
            raise MeanlocError("tile side and size must be positive")
        cx, cy = float(center_xy[0]), float(center_xy[1])
        step = side_m / float(out_px)
        # tile pixel (corner convention) -> metres: x grows east, rows grow south.
        tile_to_world = np.array([[step, 0.0, cx - side_m / 2.0], [0.0, -step, cy + side_m / 2.0], [0.0, 0.0, 1.0]])
        tile_to_src = self.inverse @ tile_to_world
        tile = area_resample(self.image, tile_to_src, (out_px, out_px))
        valid = self.warp_valid(tile_to_src, (out_px, out_px))
        return tile, float(valid.mean())

    def warp_valid(self, out_to_src: np.ndarray, out_size: Tuple[int, int]) -> np.ndarray:
        """Nearest-neighbour warp of the validity mask; outside the raster is invalid."""
        return warp(self.valid.view(np.uint8), out_to_src, out_size, require_cv2().INTER_NEAREST).astype(bool)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_geotiff(cls, path: Any) -> "Orthophoto":
        """Read a GeoTIFF (or any raster GDAL reads) with its geotransform, CRS and mask."""
        rasterio = require_module("rasterio", "geo")
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        path = Path(path)
        if not path.is_file():
            raise MeanlocError("orthophoto not found: {}".format(path))
        try:
            with warnings.catch_warnings():
                # A plain image has no geotransform: we say so below, in one line.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(str(path)) as ds:
                    if ds.crs is None:
                        raise MeanlocError("{} has no CRS; give the corner coordinates instead (--corners)".format(path))
                    if ds.transform.is_identity:
                        raise MeanlocError("{} has no geotransform; give the corner coordinates instead".format(path))
                    data = ds.read()
                    mask = ds.dataset_mask() > 0
                    color_interp = [ci.name for ci in ds.colorinterp]
                    transform = np.array([*list(ds.transform)[:6], 0.0, 0.0, 1.0]).reshape(3, 3)
                    crs = ds.crs
        except RasterioIOError as exc:
            raise MeanlocError("cannot read orthophoto {}: {}".format(path, str(exc).splitlines()[0])) from None
        image = _bands_to_bgr(data, color_interp, mask, str(path))
        from meanloc.runtime.artifacts import sha256_file

        digest = sha256_file(path)
        if crs.is_geographic:
            # Degrees are anisotropic: re-express in the UTM zone of the centre via the corners.
            height, width = image.shape[:2]
            px = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
            lon = transform[0, 0] * px[:, 0] + transform[0, 1] * px[:, 1] + transform[0, 2]
            lat = transform[1, 0] * px[:, 0] + transform[1, 1] * px[:, 1] + transform[1, 2]
            if crs.to_epsg() != 4326:
                lon, lat = _transformer(crs.to_string(), "EPSG:4326").transform(lon, lat)
            return cls._from_corners(image, mask, list(zip(lat, lon)), str(path), digest)
        if not crs.is_projected:
            raise MeanlocError("{} has a CRS that is neither geographic nor projected: {}".format(path, crs))
        return cls(image, transform, crs_text(crs), mask, source=str(path), source_sha256=digest)

    @classmethod
    def from_image_and_corners(cls, path: Any, corners_latlon: Sequence[Sequence[float]]) -> "Orthophoto":
        """An ordinary image plus the (lat, lon) of its outer corners TL, TR, BR, BL.

        Projects the corners to the UTM zone of their centre, fits the affine through three of
        them and checks the fourth (warning above ~1 px, error when the image is clearly not an
        orthophoto). Alpha (PNG) marks validity; otherwise pure-black pixels are no-data.
        """
        from meanloc.runtime.images import read_image

        cv2 = require_cv2()
        path = Path(path)
        if not path.is_file():
            raise MeanlocError("orthophoto image not found: {}".format(path))
        raw = read_image(path, unchanged=True)
        if raw.dtype != np.uint8:
            raw = _stretch_to_uint8(raw, np.ones(raw.shape[:2], dtype=bool))
        if raw.ndim == 2:
            raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
        if raw.shape[2] == 4:
            mask = raw[:, :, 3] > 0
            image = np.ascontiguousarray(raw[:, :, :3])
        else:
            image = np.ascontiguousarray(raw[:, :, :3])
            mask = image.max(axis=2) > 0
        from meanloc.runtime.artifacts import sha256_file

        return cls._from_corners(image, mask, corners_latlon, str(path), sha256_file(path))

    @classmethod
    def _from_corners(cls, image: np.ndarray, mask: np.ndarray, corners_latlon: Sequence[Sequence[float]],
                      source: str, digest: str) -> "Orthophoto":
        corners = np.asarray(corners_latlon, dtype=np.float64)
        if corners.shape != (4, 2) or not np.all(np.isfinite(corners)):
            raise MeanlocError("need 4 corners as (lat, lon): top-left, top-right, bottom-right, bottom-left")
        lat, lon = corners[:, 0], corners[:, 1]
        if np.any(np.abs(lat) > 84) or np.any(np.abs(lon) > 180):
            raise MeanlocError("corner coordinates out of range (lat within +-84, lon within +-180): {}".format(
                corners.tolist()))
        epsg = utm_epsg_for(float(lon.mean()), float(lat.mean()))
        x, y = _transformer("EPSG:4326", "EPSG:{}".format(epsg)).transform(lon, lat)
        height, width = image.shape[:2]
        px = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
        world = np.stack([x, y], axis=1)
        affine = affine_from_points(px[[0, 1, 3]], world[[0, 1, 3]])
        if np.linalg.det(affine[:2, :2]) >= 0:
            raise MeanlocError("corners are mirrored: list them top-left, top-right, bottom-right, bottom-left")
        predicted = affine @ np.array([width, height, 1.0])
        residual_px = float(np.hypot(*(predicted[:2] - world[2]))) / math.sqrt(abs(np.linalg.det(affine[:2, :2])))
        if residual_px > max(10.0, 0.02 * math.hypot(width, height)):
            raise MeanlocError("the 4 corners are not an affine image of the raster (bottom-right off by {:.0f} px): "
                               "orthorectify it first".format(residual_px))
        if residual_px > 1.0:
            warnings.warn("bottom-right corner is {:.1f} px from the affine fit of the other three".format(residual_px),
                          GeoreferenceWarning, stacklevel=3)
        ortho = cls(image, affine, "EPSG:{}".format(epsg), mask, source=source, source_sha256=digest)
        if abs(ortho.rotation_deg) > 0.5:
            warnings.warn("orthophoto is not north-up (rotated {:.1f} deg); tiles are cut north-up anyway".format(
                ortho.rotation_deg), GeoreferenceWarning, stacklevel=3)
        ortho.corner_residual_px = residual_px
        return ortho

    # -- writing ----------------------------------------------------------------------------
    def save_geotiff(self, path: Any, compress: str = "deflate", jpeg_quality: int = 92) -> None:
        """Write an RGB GeoTIFF with the geotransform, CRS and an internal validity mask (atomic).

        `compress="deflate"` is lossless; "jpeg" is ~4x smaller and lossy (`jpeg_quality`)."""
        rasterio = require_module("rasterio", "geo")
        from rasterio.transform import Affine

        from meanloc.runtime.artifacts import atomic_path

        t = self.transform
        profile = {
            "driver": "GTiff", "width": self.width, "height": self.height, "count": 3, "dtype": "uint8",
            "crs": self.crs, "transform": Affine(t[0, 0], t[0, 1], t[0, 2], t[1, 0], t[1, 1], t[1, 2]),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": compress, "photometric": "RGB",
        }
        if compress.lower() == "jpeg":
            profile["jpeg_quality"] = jpeg_quality
        with atomic_path(path) as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
                str(tmp), "w", **profile) as ds:
            ds.write(np.moveaxis(self.image[:, :, ::-1], 2, 0))
            if not self.valid.all():
                ds.write_mask(self.valid.astype(np.uint8) * 255)


def _stretch_to_uint8(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear 0.5-99.5 percentile stretch of non-8-bit imagery (uint16 satellite products)."""
    values = data[mask] if data.ndim == 2 else data[mask].reshape(-1)
    if values.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    lo, hi = np.percentile(values, [0.5, 99.5])
    scaled = (data.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-9))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _bands_to_bgr(data: np.ndarray, color_interp: Sequence[str], mask: np.ndarray, source: str) -> np.ndarray:
    """Raster bands (C, H, W) -> BGR uint8, picking R, G, B by colour interpretation when given."""
    count = data.shape[0]
    if count == 0:
        raise MeanlocError("{} has no bands".format(source))
    if count in (1, 2):
        bands = [data[0]] * 3
    else:
        names = list(color_interp)
        try:
            bands = [data[names.index(n)] for n in ("red", "green", "blue")]
        except ValueError:
            bands = [data[0], data[1], data[2]]
    rgb = np.stack(bands, axis=2)
    if rgb.dtype != np.uint8:
        rgb = _stretch_to_uint8(rgb, mask)
    return np.ascontiguousarray(rgb[:, :, ::-1])
