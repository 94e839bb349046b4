"""Sensor realism: noisy reported attitude on truly rendered frames, telemetry interpolated to the
frame's time, a body-fixed camera's roll, and height above ground from a DEM."""

import math
import types

import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import (
    CameraIntrinsics,
    Pose,
    camera_attitude_from_body,
    rotation_world_to_camera,
)
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.geo.rectify import CameraAttitude, rectify_to_ground
from meanloc.runtime.geo.terrain import Terrain
from meanloc.runtime.localize.synthetic import (
    SENSOR_PRESETS,
    SyntheticFlightOptions,
    SyntheticFlightSource,
    sensor_preset,
)
from meanloc.runtime.localize.telemetry import AttitudeHistory, TelemetryState
from meanloc.runtime.localize.terrain_height import DemHeightSource
from meanloc.runtime.sim.render import render_view
from meanloc.runtime.sim.terrain import synthetic_terrain


@pytest.fixture(scope="module")
def ortho_path(tmp_path_factory):
    import cv2

    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(20, 235, (80, 80, 3)).astype(np.uint8), (1600, 1600), interpolation=cv2.INTER_CUBIC)
    ortho = Orthophoto(image, np.array([[2.0, 0, 500_000.0], [0, -2.0, 5_200_000.0], [0, 0, 1]]), "EPSG:32632")
    path = tmp_path_factory.mktemp("sensor") / "ortho.tif"
    ortho.save_geotiff(path)
    return path


def _frames(path, **options):
    base = {"frames": 60, "altitude_m": 200.0, "pitch_deg": 40.0, "pattern": "lawnmower", "seed": 5,
            "appearance": False, "frame_size": (160, 120), "leg_m": 400.0}
    base.update(options)
    return list(SyntheticFlightSource(str(path), SyntheticFlightOptions(**base)))


def test_presets_are_the_issues_numbers():
    good, cheap = SENSOR_PRESETS["good-gimbal"], SENSOR_PRESETS["cheap-imu"]
    assert (good.heading_sigma_deg, good.pitch_sigma_deg, good.roll_sigma_deg, good.height_sigma_m) == (2, 0.5, 0.5, 2)
    assert (cheap.heading_sigma_deg, cheap.heading_bias_deg, cheap.pitch_sigma_deg, cheap.height_sigma_m) == (8, 5, 2, 10)
    assert SENSOR_PRESETS["ideal"].ideal
    with pytest.raises(MeanlocError, match="unknown sensor noise preset 'perfect'"):
        sensor_preset("perfect")


def test_frames_are_rendered_with_the_true_pose_but_report_the_noisy_one(ortho_path):
    ideal = _frames(ortho_path)
    noisy = _frames(ortho_path, sensor=SENSOR_PRESETS["cheap-imu"])
    for a, b in zip(ideal, noisy):
        assert np.array_equal(a.image, b.image) and a.truth_lonlat == b.truth_lonlat  # same truth
    heading_error = np.array([(b.heading_deg - a.heading_deg + 180) % 360 - 180 for a, b in zip(ideal, noisy)])
    pitch_error = np.array([b.pitch_deg - a.pitch_deg for a, b in zip(ideal, noisy)])
    height_error = np.array([b.altitude_m - a.altitude_m for a, b in zip(ideal, noisy)])
    roll = np.array([b.roll_deg for b in noisy])
    # Ideal sensors report exactly the rendered pose.
    assert all(f.pitch_deg == 40.0 and f.altitude_m == 200.0 and f.roll_deg == 0.0 for f in ideal)
    # Errors of the preset's size (60 correlated samples: loose bounds), heading biased by ~5 deg.
    assert 2.0 < np.std(heading_error) < 16.0 and abs(np.mean(heading_error)) > 1.0
    assert 0.3 < np.std(pitch_error) < 4.0 and 0.3 < np.std(roll) < 4.0
    assert 2.0 < np.std(height_error) < 20.0


def test_attitude_history_interpolates_to_the_frame_time():
    history = AttitudeHistory(max_gap_s=0.5, max_hold_s=0.2)
    history.add(0.0, 350.0, 40.0, 0.0)
    history.add(0.1, 10.0, 42.0, 2.0)  # heading crosses north
    history.add(0.05, 0.0, 0.0, 0.0)  # late: dropped
    heading, pitch, roll = history.at(0.05)
    assert heading == pytest.approx(0.0, abs=1e-9) or heading == pytest.approx(360.0)
    assert (pitch, roll) == pytest.approx((41.0, 1.0))
    assert history.at(0.25)[0] == pytest.approx(10.0)  # held within 0.2 s
    assert history.at(0.31) is None and history.at(-0.1) is None
    history.add(1.0, 20.0, 40.0, 0.0)
    assert history.at(0.5) is None  # a 0.9 s gap is not interpolated


def test_telemetry_stamps_the_attitude_at_capture_time_not_the_latest():
    now = {"t": 0.0}
    state = TelemetryState("body", mount_pitch_deg=40.0, clock=lambda: now["t"], latency_s=0.15)
    for step in range(11):  # 10 Hz, the vehicle turning at 100 deg/s
        now["t"] = step * 0.1
        state.update(types.SimpleNamespace(get_type=lambda: "ATTITUDE", yaw=math.radians(10.0 * step),
                                           pitch=0.0, roll=0.0))
    camera = state.camera()  # read at t = 1.0, exposed at 0.85
    assert camera.heading_deg == pytest.approx(85.0) and camera.pitch_deg == pytest.approx(40.0)


def test_a_body_fixed_camera_rolls_with_the_bank_and_rectification_undoes_it():
    heading, pitch, roll = camera_attitude_from_body(10.0, 5.0, 30.0, 40.0)
    # The same camera axes as composing the vehicle rotation with the mount tilt.
    axes = rotation_world_to_camera(Pose((0.0, 0.0), 100.0, pitch, heading, roll))
    tau, r, p, y = math.radians(40), *(math.radians(v) for v in (10.0, 5.0, 30.0))
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ned = rz @ ry @ rx
    forward, right = ned @ [math.sin(tau), 0, math.cos(tau)], ned @ [0, 1, 0]
    assert axes[2] == pytest.approx([forward[1], forward[0], -forward[2]], abs=1e-9)
    assert axes[0] == pytest.approx([right[1], right[0], -right[2]], abs=1e-9)
    assert roll != pytest.approx(0.0, abs=1.0)  # a bank rolls the image
    assert camera_attitude_from_body(0.0, 10.0, 0.0, 40.0) == pytest.approx((0.0, 50.0, 0.0), abs=1e-9)


def test_rectification_models_roll():
    import cv2

    rng = np.random.default_rng(2)
    image = cv2.resize(rng.integers(20, 235, (40, 40, 3)).astype(np.uint8), (800, 800), interpolation=cv2.INTER_CUBIC)
    ortho = Orthophoto(image, np.array([[1.0, 0, 0.0], [0, -1.0, 800.0], [0, 0, 1]]), "EPSG:32632")
    camera = CameraIntrinsics(320, 240, 70.0)
    frame = render_view(ortho, camera, Pose((400.0, 400.0), 150.0, 30.0, 0.0, 6.0)).image_bgr
    truth = ortho.crop_north_up((400.0, 400.0), 100.0, 64)[0].astype(float)
    with_roll = rectify_to_ground(frame, CameraAttitude(150.0, 30.0, 0.0, 70.0, 6.0), 100.0, 64).astype(float)
    without = rectify_to_ground(frame, CameraAttitude(150.0, 30.0, 0.0, 70.0, 0.0), 100.0, 64).astype(float)
    assert np.abs(with_roll - truth).mean() < 0.4 * np.abs(without - truth).mean()


def test_dem_gives_height_above_the_look_at_ground(ortho_path, tmp_path):
    ortho = Orthophoto.from_geotiff(ortho_path)
    plane = Terrain(np.array([[100.0, 110.0], [90.0, 100.0]]), np.array([[10.0, 0, 0], [0, -10.0, 20.0], [0, 0, 1]]),
                    "EPSG:32632")
    assert plane.height_at(10.0, 10.0) == pytest.approx(100.0)  # bilinear between pixel centres
    assert np.isnan(plane.height_at(-50.0, 10.0))
    dem = tmp_path / "dem.tif"
    synthetic_terrain(ortho.bounds_world(), ortho.crs, 60.0, seed=3).save_geotiff(dem)
    terrain = Terrain.from_geotiff(dem)
    hilly = _frames(ortho_path, terrain_dem=str(dem), prior_drift_mps=0.5)
    reported = np.array([f.altitude_m for f in hilly])  # height above take-off: wrong by the relief
    corrected = np.array([_corrected(terrain, f) for f in hilly])
    assert np.abs(reported - 200.0).max() > 10.0
    assert np.abs(corrected - 200.0).max() < 0.25 * np.abs(reported - 200.0).max()
    with pytest.raises(MeanlocError, match="DEM not found"):
        Terrain.from_geotiff(tmp_path / "missing.tif")


def _corrected(terrain, frame):
    class Source:
        description, live, stats = "test", False, None

    return DemHeightSource(Source(), terrain).correct(frame).altitude_m


def test_a_dem_and_an_orthophoto_in_one_custom_crs_name_it_alike(tmp_path):
    """A CRS without an EPSG code (here a local transverse Mercator) must compare equal between
    the DEM and the orthophoto read from it, or `--dem` would refuse a matching pair."""
    import rasterio
    from rasterio.transform import from_origin

    crs = "+proj=tmerc +lat_0=47.3 +lon_0=8.61 +k=1 +x_0=600000 +y_0=200000 +ellps=bessel +units=m +no_defs"
    transform = from_origin(600000.0, 201000.0, 2.0, 2.0)
    for name, count, dtype in (("ortho.tif", 3, "uint8"), ("dem.tif", 1, "float32")):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", height=64, width=64, count=count, dtype=dtype,
                           crs=crs, transform=transform) as dst:
            dst.write(np.full((count, 64, 64), 100, dtype=dtype))
    ortho = Orthophoto.from_geotiff(tmp_path / "ortho.tif")
    assert Terrain.from_geotiff(tmp_path / "dem.tif").crs == ortho.crs
