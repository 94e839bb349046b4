"""The procedural georeferenced world: determinism, georeferencing, variety, second date."""

import cv2
import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.training.data.synth.world import WorldSpec, build_layout, generate_world, generate_world_pair

SPEC = WorldSpec(seed=5, width_m=2400.0, height_m=2000.0, gsd_m=2.0, origin_lonlat=(8.40, 47.45))


@pytest.fixture(scope="module")
def pair():
    return generate_world_pair(SPEC, workers=2)


def _edges(tile):
    grey = cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_world_is_deterministic_and_seed_dependent(pair):
    date1, _ = pair
    again = generate_world(SPEC.seed, SPEC.width_m, SPEC.height_m, SPEC.gsd_m, SPEC.origin_lonlat)
    assert np.array_equal(again.image, date1.image)
    other = generate_world(SPEC.seed + 1, SPEC.width_m, SPEC.height_m, SPEC.gsd_m, SPEC.origin_lonlat)
    assert np.abs(other.image.astype(int) - date1.image.astype(int)).mean() > 20


def test_world_is_georeferenced_at_the_declared_origin_and_gsd(pair, tmp_path):
    date1, date2 = pair
    assert date1.crs == "EPSG:32632" and date1.gsd == pytest.approx(2.0)
    assert date1.image.shape == (1000, 1200, 3)
    lon, lat = date1.world_to_lonlat(*date1.pixel_to_world(0, 0))
    assert (float(lon), float(lat)) == pytest.approx((8.40, 47.45), abs=2e-5)  # origin snapped to whole metres
    assert np.array_equal(date1.transform, date2.transform)
    path = tmp_path / "world.tif"
    date1.save_geotiff(path)
    reread = Orthophoto.from_geotiff(path)
    assert np.array_equal(reread.image, date1.image) and np.allclose(reread.transform, date1.transform)


def test_world_contains_every_land_cover_and_tiles_differ(pair):
    stats = build_layout(SPEC).stats
    assert stats["buildings"] > 200 and stats["trees"] > 200 and stats["parcels"] > 50
    for key in ("urban_fraction", "water_fraction", "forest_fraction", "road_fraction"):
        assert 0.01 < stats[key] < 0.7, key
    date1, _ = pair
    x0, y0, _, _ = date1.bounds_world()
    centres = [(x0 + 300 + 200 * i, y0 + 300 + 200 * j) for i in range(8) for j in range(6)]
    tiles = [date1.crop_north_up(c, 200.0, 64)[0] for c in centres]
    edges = [_edges(t) for t in tiles]
    # Neighbouring tiles are not alike: no two of these 48 tiles correlate strongly.
    worst = max(_corr(edges[a], edges[b]) for a in range(len(edges)) for b in range(a + 1, len(edges)))
    assert worst < 0.5


def test_second_date_is_co_registered_but_looks_different(pair):
    date1, date2 = pair
    x0, y0, _, _ = date1.bounds_world()
    same, other = [], []
    for k in range(6):
        c = (x0 + 400 + 300 * k, y0 + 1000)
        c_other = (x0 + 400 + 300 * ((k + 3) % 6), y0 + 700)
        a = _edges(date1.crop_north_up(c, 200.0, 100)[0])
        same.append(_corr(a, _edges(date2.crop_north_up(c, 200.0, 100)[0])))
        other.append(_corr(a, _edges(date2.crop_north_up(c_other, 200.0, 100)[0])))
    # The same place on both dates matches far better (the photographic date 2 is a hard pair:
    # measured 0.24-0.46 against <= 0.04 for other places).
    assert min(same) > max(other) + 0.15 and min(same) > 4 * max(*other, 0.01)
    assert np.abs(date1.image.astype(int) - date2.image.astype(int)).mean() > 10


def test_second_date_is_photographic_and_deterministic():
    import dataclasses

    from meanloc.training.data.synth.world import DATE1, DATE2, render_layout

    layout = build_layout(SPEC)
    assert DATE2.photographic and not DATE1.photographic
    photographic = render_layout(layout, DATE2)
    painted = render_layout(layout, dataclasses.replace(DATE2, photographic=False))
    assert np.array_equal(photographic, render_layout(layout, DATE2))
    # Texture, phenology, crowns, soft shadows, cars, seams, sensor and JPEG change most pixels.
    assert np.abs(photographic.astype(int) - painted.astype(int)).mean() > 10
    assert (np.abs(photographic.astype(int) - painted.astype(int)).max(axis=2) > 8).mean() > 0.5


def test_bad_world_specs_are_refused():
    with pytest.raises(MeanlocError, match="positive"):
        build_layout(WorldSpec(width_m=-1))
    with pytest.raises(MeanlocError, match="too large"):
        build_layout(WorldSpec(width_m=100_000, height_m=100_000, gsd_m=0.5))
