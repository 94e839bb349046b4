"""Appearance changes (§5.6), flight schedules and the noisy prior (§5.5)."""

import math

import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import CameraIntrinsics
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.sim import appearance
from meanloc.runtime.sim.appearance import apply_appearance
from meanloc.runtime.sim.flight import plan_flight, render_flight, simulate_prior

INTR = CameraIntrinsics(64, 48, 70.0)


def _ortho(size_px=1500, gsd=2.0):
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (size_px, size_px, 3), dtype=np.uint8)
    transform = np.array([[gsd, 0, 600_000.0], [0, -gsd, 5_100_000.0], [0, 0, 1.0]])
    return Orthophoto(image, transform, "EPSG:32633")


def test_appearance_is_seeded_recorded_and_within_the_spec_ranges():
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    valid = np.ones((48, 64), bool)
    valid[:, :5] = False
    a, params_a = apply_appearance(image, np.random.default_rng(7), valid)
    b, params_b = apply_appearance(image, np.random.default_rng(7), valid)
    c, _ = apply_appearance(image, np.random.default_rng(8), valid)
    assert np.array_equal(a, b) and params_a == params_b
    assert not np.array_equal(a, c)
    assert not a[:, :5].any()  # invalid pixels stay black
    assert appearance.GAMMA_RANGE[0] <= params_a["gamma"] <= appearance.GAMMA_RANGE[1]
    assert appearance.JPEG_QUALITY[0] <= params_a["jpeg_quality"] <= appearance.JPEG_QUALITY[1]
    assert appearance.HAZE_TRANSMISSION[0] <= params_a["haze_transmission"] <= 1.0
    assert all(abs(g - 1) <= appearance.CHANNEL_GAIN for g in params_a["channel_gain_bgr"])
    assert params_a["blur"]["type"] in ("motion", "gaussian")


def test_straight_flight_flies_at_speed_with_heading_along_track():
    ortho = _ortho()
    plan = plan_flight(ortho, n_frames=20, speed_mps=10.0, altitude_m=150.0, pitch_deg=35.0, seed=3,
                       intrinsics=INTR)
    assert len(plan) == 20 and [f.index for f in plan] == list(range(20))
    vehicle = np.array([f.vehicle_xy for f in plan])
    steps = np.linalg.norm(np.diff(vehicle, axis=0), axis=1)
    assert steps == pytest.approx(np.full(19, 10.0), abs=1e-6)
    headings = {round(f.heading_deg, 6) for f in plan}
    assert len(headings) == 1
    for frame in plan:
        psi = math.radians(frame.heading_deg)
        ahead = 150.0 * math.tan(math.radians(35.0))
        assert frame.pose.yaw_deg == frame.heading_deg and frame.pose.pitch_deg == 35.0
        assert frame.pose.target_xy[0] == pytest.approx(frame.vehicle_xy[0] + ahead * math.sin(psi))
        assert frame.pose.target_xy[1] == pytest.approx(frame.vehicle_xy[1] + ahead * math.cos(psi))
        lon, lat = ortho.world_to_lonlat(*frame.pose.target_xy)
        assert frame.target_lonlat == pytest.approx((float(lon), float(lat)))


def test_lawnmower_turns_back_and_frames_render():
    ortho = _ortho()
    plan = plan_flight(ortho, n_frames=40, speed_mps=12.0, altitude_m=120.0, pitch_deg=30.0, seed=1,
                       pattern="lawnmower", intrinsics=INTR, leg_m=200.0, spacing_m=60.0)
    headings = np.array([f.heading_deg for f in plan])
    turns = np.abs((np.diff(headings) + 180) % 360 - 180)
    assert (turns > 45).sum() >= 2  # at least one leg end (two turns of 90 deg)
    frames = list(render_flight(ortho, plan[:3], INTR, seed=2))
    assert [f.index for f, _ in frames] == [0, 1, 2]
    assert all(img.shape == (48, 64, 3) for _, img in frames)


def test_flight_that_cannot_fit_names_the_failing_constraint_with_its_numbers():
    # 400 x 400 m: a 490 m straight track plus 168 m of look-ahead does not fit in any direction.
    with pytest.raises(MeanlocError, match=r"orthophoto \(400 x 400 m\) is shorter than the track: .*490 m of track"
                                           r".* runs 168 m ahead .* needs 336 x 826 m"):
        plan_flight(_ortho(size_px=200), n_frames=50, speed_mps=10.0, altitude_m=200.0, pitch_deg=40.0,
                    intrinsics=INTR, attempts=20)
    # The track fits in 600 m, but at 40 deg pitch the footprint is 654 m wide: it leaves the raster.
    with pytest.raises(MeanlocError, match=r"footprint leaves the raster .* whole footprint \(reaching 457 m"):
        plan_flight(_ortho(size_px=300), n_frames=5, speed_mps=10.0, altitude_m=200.0, pitch_deg=40.0,
                    intrinsics=INTR, attempts=20)
    with pytest.raises(MeanlocError, match=r"sees too far: pitch 60.0 deg .* corner ray [\d.]+ deg from nadir \(limit 80"):
        plan_flight(_ortho(), n_frames=5, pitch_deg=60.0, intrinsics=INTR)
    ortho = _ortho()
    x0, y0, _, _ = ortho.bounds_world()
    with pytest.raises(MeanlocError, match=r"flight area \(100 x 100 m\) is shorter than the track"):
        plan_flight(ortho, n_frames=30, intrinsics=INTR, area=(x0 + 1000, y0 + 1000, x0 + 1100, y0 + 1100), attempts=20)
    with pytest.raises(MeanlocError, match="pattern"):
        plan_flight(_ortho(), n_frames=5, pattern="spiral", intrinsics=INTR)


def test_a_pose_aware_flight_needs_only_its_query_squares_on_the_raster():
    small = _ortho(size_px=300)  # 600 m: the 654 m wide oblique footprint leaves it, the 100 m squares do not
    plan = plan_flight(small, n_frames=5, speed_mps=10.0, altitude_m=200.0, pitch_deg=40.0, intrinsics=INTR,
                       query_side_m=100.0, attempts=50)
    for frame in plan:
        x, y = frame.pose.target_xy
        corners = np.array([[x - 50, y - 50], [x + 50, y + 50], [x - 50, y + 50], [x + 50, y - 50]])
        assert small.contains_world(corners[:, 0], corners[:, 1]).all()


def test_lawnmower_legs_fit_a_square_kilometre_and_the_lens_is_honoured():
    ortho = _ortho(size_px=500)  # 1000 x 1000 m
    narrow = CameraIntrinsics(64, 48, 40.0)
    plan = plan_flight(ortho, n_frames=100, speed_mps=10.0, altitude_m=150.0, pitch_deg=0.0, pattern="lawnmower",
                       intrinsics=narrow, seed=2)
    vehicle = np.array([f.vehicle_xy for f in plan])
    assert np.ptp(vehicle, axis=0).max() < 1000 - 2 * 150 * math.tan(math.radians(20)) + 1e-6
    frames = list(render_flight(ortho, plan[:2], narrow, seed=0))
    assert frames[0][1].shape == (48, 64, 3)
    times = np.array([0.0, 0.5, 1.0])
    _, heading, look_at = plan.pose_at(times)
    assert heading[0] == pytest.approx(plan[0].heading_deg) and look_at[2] == pytest.approx(plan[1].pose.target_xy)


def test_prior_drifts_and_jumps():
    ortho = _ortho()
    plan = plan_flight(ortho, n_frames=60, speed_mps=10.0, altitude_m=150.0, pitch_deg=35.0, seed=4,
                       intrinsics=INTR)
    calm = simulate_prior(plan, drift_mps=2.0, jump_every=0, seed=5)
    assert not any(f.jumped for f in calm)
    for fix, frame in zip(calm, plan):
        assert fix.error_m <= 2.0 * frame.t + 1e-9  # never more than drift x time
        err = np.subtract(fix.target_xy, frame.pose.target_xy)
        assert np.hypot(*err) == pytest.approx(fix.error_m)
    assert calm[-1].error_m > 20.0  # and it does drift
    jumpy = simulate_prior(plan, drift_mps=0.0, jump_every=5, jump_m=150.0, seed=5)
    jumps = [i for i, f in enumerate(jumpy) if f.jumped]
    assert jumps and jumpy[jumps[0]].error_m == pytest.approx(150.0)
    assert simulate_prior(plan, seed=9) == simulate_prior(plan, seed=9)


def test_flight_area_keeps_every_look_at_point_inside():
    ortho = _ortho()
    min_x, min_y, _, max_y = ortho.bounds_world()
    area = (min_x + 100.0, min_y + 100.0, min_x + 700.0, max_y - 100.0)  # a band, like a held-out split
    plan = plan_flight(ortho, n_frames=30, speed_mps=10.0, altitude_m=150.0, pitch_deg=20.0, seed=2,
                       intrinsics=INTR, area=area)
    targets = np.array([frame.pose.target_xy for frame in plan])
    assert np.all((targets[:, 0] >= area[0]) & (targets[:, 0] <= area[2]))
    assert np.all((targets[:, 1] >= area[1]) & (targets[:, 1] <= area[3]))
    with pytest.raises(MeanlocError, match="flight area"):
        plan_flight(ortho, n_frames=30, speed_mps=10.0, altitude_m=150.0, pitch_deg=20.0, seed=2,
                    intrinsics=INTR, area=(min_x + 100.0, min_y + 100.0, min_x + 150.0, min_y + 150.0))
