"""Orthophoto georeferencing: GDAL corner convention, rotation, corners, masks, bad input."""

import warnings

import cv2
import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.transform import Affine

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.orthophoto import GeoreferenceWarning, Orthophoto, utm_epsg_for

GSD = 2.0
X0, Y0 = 500_000.0, 5_200_000.0


def _write_tif(path, rgb, transform, crs="EPSG:32632", nodata=None):
    profile = {"driver": "GTiff", "width": rgb.shape[1], "height": rgb.shape[0], "count": 3, "dtype": "uint8",
               "crs": crs, "transform": transform}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(rgb, 2, 0))


def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(20, 235, (h // 4, w // 4, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_NEAREST)
    return img


def test_pixel_centres_follow_the_gdal_corner_convention(tmp_path):
    rgb = np.full((40, 30, 3), 10, np.uint8)
    rgb[20, 10] = 250  # one bright pixel at column 10, row 20
    path = tmp_path / "o.tif"
    _write_tif(path, rgb, Affine(GSD, 0, X0, 0, -GSD, Y0))
    ortho = Orthophoto.from_geotiff(path)
    with rasterio.open(path) as ds:
        ref_x, ref_y = ds.xy(20, 10)  # rasterio: centre of (row 20, col 10)
    x, y = ortho.pixel_to_world(10.5, 20.5)
    assert (float(x), float(y)) == pytest.approx((ref_x, ref_y), abs=1e-9)
    col, row = ortho.world_to_pixel(ref_x, ref_y)
    assert (float(col), float(row)) == pytest.approx((10.5, 20.5), abs=1e-9)
    # A tile whose pixel grid coincides with the source grid must reproduce the pixel exactly:
    # a half-pixel error would smear the bright pixel over two tile pixels.
    tile, valid = ortho.crop_north_up((ref_x, ref_y), side_m=11 * GSD, out_px=11)
    assert valid == 1.0
    assert np.unravel_index(np.argmax(tile[:, :, 0]), (11, 11)) == (5, 5)
    assert tile[5, 5, 0] == 250 and tile[5, 4, 0] == 10 and tile[4, 5, 0] == 10


def test_lonlat_round_trip_and_utm_zone(tmp_path):
    path = tmp_path / "o.tif"
    _write_tif(path, _textured(64, 64), Affine(GSD, 0, X0, 0, -GSD, Y0))
    ortho = Orthophoto.from_geotiff(path)
    lon, lat = ortho.world_to_lonlat(X0 + 10, Y0 - 20)
    ref = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(X0 + 10, Y0 - 20)
    assert (float(lon), float(lat)) == pytest.approx(ref, abs=1e-9)
    x, y = ortho.lonlat_to_world(lon, lat)
    assert (float(x), float(y)) == pytest.approx((X0 + 10, Y0 - 20), abs=1e-6)
    assert utm_epsg_for(9.0, 47.0) == 32632 and utm_epsg_for(-70.6, -33.4) == 32719
    assert ortho.bounds_world() == pytest.approx((X0, Y0 - 64 * GSD, X0 + 64 * GSD, Y0))


def test_rotated_geotransform_gives_the_same_north_up_tile(tmp_path):
    rgb = _textured(48, 64, seed=3)
    north = tmp_path / "north.tif"
    _write_tif(north, rgb, Affine(GSD, 0, X0, 0, -GSD, Y0))
    # The same ground stored rotated 90 deg clockwise: new (col c', row r') = old (col r', row 48 - c'),
    # so the column axis points north and the row axis east.
    rotated_rgb = np.ascontiguousarray(np.rot90(rgb, k=-1))
    rotated = tmp_path / "rotated.tif"
    _write_tif(rotated, rotated_rgb, Affine(0, GSD, X0, GSD, 0, Y0 - 48 * GSD))
    a, b = Orthophoto.from_geotiff(north), Orthophoto.from_geotiff(rotated)
    assert a.is_north_up and not b.is_north_up
    assert abs(b.rotation_deg) == pytest.approx(90.0)
    centre = (X0 + 30 * GSD, Y0 - 20 * GSD)
    tile_a, _ = a.crop_north_up(centre, 20 * GSD, 20)
    tile_b, _ = b.crop_north_up(centre, 20 * GSD, 20)
    assert np.abs(tile_a.astype(int) - tile_b.astype(int)).max() <= 1


def test_image_with_corners_recovers_the_affine_and_checks_the_fourth(tmp_path):
    h, w = 50, 80
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), _textured(h, w))
    to_ll = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    xs = np.array([X0, X0 + w * GSD, X0 + w * GSD, X0])
    ys = np.array([Y0, Y0, Y0 - h * GSD, Y0 - h * GSD])
    lon, lat = to_ll.transform(xs, ys)
    corners = list(zip(lat, lon))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeoreferenceWarning)
        ortho = Orthophoto.from_image_and_corners(path, corners)
    assert ortho.crs == "EPSG:32632"
    assert ortho.gsd == pytest.approx(GSD, rel=1e-6)
    x, y = ortho.pixel_to_world(w, h)
    assert (float(x), float(y)) == pytest.approx((X0 + w * GSD, Y0 - h * GSD), abs=1e-3)
    # Bottom-right off by 3 px: usable but warned.
    bad_lon, bad_lat = to_ll.transform(X0 + (w + 3) * GSD, Y0 - h * GSD)
    with pytest.warns(GeoreferenceWarning, match="bottom-right"):
        Orthophoto.from_image_and_corners(path, [*corners[:2], (bad_lat, bad_lon), corners[3]])
    # Off by far more than an affine can explain: refused.
    far_lon, far_lat = to_ll.transform(X0 + 3 * w * GSD, Y0 - h * GSD)
    with pytest.raises(MeanlocError, match="orthorectify"):
        Orthophoto.from_image_and_corners(path, [*corners[:2], (far_lat, far_lon), corners[3]])
    with pytest.raises(MeanlocError, match="4 corners"):
        Orthophoto.from_image_and_corners(path, corners[:3])


def test_geographic_geotiff_is_reexpressed_in_utm(tmp_path):
    path = tmp_path / "wgs84.tif"
    step = 2e-5  # degrees, ~1.5-2.2 m
    _write_tif(path, _textured(40, 40), Affine(step, 0, 9.0, 0, -step, 47.0), crs="EPSG:4326")
    ortho = Orthophoto.from_geotiff(path)
    assert ortho.crs == "EPSG:32632"
    lon, lat = ortho.world_to_lonlat(*ortho.pixel_to_world(0, 0))
    assert (float(lon), float(lat)) == pytest.approx((9.0, 47.0), abs=1e-7)


def test_nodata_becomes_the_validity_mask_and_survives_saving(tmp_path):
    rgb = _textured(32, 32)
    rgb[:, :8] = 0
    path = tmp_path / "nodata.tif"
    _write_tif(path, rgb, Affine(GSD, 0, X0, 0, -GSD, Y0), nodata=0)
    ortho = Orthophoto.from_geotiff(path)
    assert not ortho.valid[:, :8].any() and ortho.valid[:, 8:].all()
    _, valid = ortho.crop_north_up(ortho.pixel_to_world(8, 16), 16 * GSD, 16)
    assert valid == pytest.approx(0.5, abs=0.07)
    saved = tmp_path / "saved.tif"
    ortho.save_geotiff(saved)
    again = Orthophoto.from_geotiff(saved)
    assert np.array_equal(again.image, ortho.image)
    assert np.array_equal(again.valid, ortho.valid)
    assert np.allclose(again.transform, ortho.transform) and again.crs == ortho.crs


def test_bad_rasters_give_one_line_errors(tmp_path):
    with pytest.raises(MeanlocError, match="not found"):
        Orthophoto.from_geotiff(tmp_path / "missing.tif")
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(MeanlocError, match="cannot read"):
        Orthophoto.from_geotiff(corrupt)
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), _textured(16, 16))
    with pytest.raises(MeanlocError, match="corner"):
        Orthophoto.from_geotiff(plain)
