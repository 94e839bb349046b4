"""Kalman filter (gating, jump recovery), search window policy, position estimate, error stats."""

import numpy as np
import pytest

from meanloc.runtime.localize.estimate import EstimatorConfig, PositionEstimator
from meanloc.runtime.localize.kalman import ConstantVelocityKalman, KalmanConfig
from meanloc.runtime.localize.metrics import ErrorStats
from meanloc.runtime.localize.window import SearchWindowPolicy, WindowConfig

NOISE_M = 5.0
VELOCITY = np.array([8.0, -3.0])


def _truth(t: float) -> np.ndarray:
    return np.array([100.0, 50.0]) + VELOCITY * t


def test_filter_smooths_a_constant_velocity_track_and_rejects_outliers():
    rng = np.random.RandomState(0)
    kf = ConstantVelocityKalman(KalmanConfig(accel_std=0.5))
    outliers = {20, 35, 36}
    raw_err, filt_err, rejected = [], [], []
    for i in range(60):
        t = float(i)
        fix = _truth(t) + rng.normal(0.0, NOISE_M, 2)
        if i in outliers:
            fix = _truth(t) + np.array([400.0, -250.0])
        result = kf.update((fix[0], fix[1]), t, NOISE_M)
        if not result.accepted:
            rejected.append(i)
        if i >= 10 and i not in outliers:
            raw_err.append(np.hypot(*(fix - _truth(t))))
            filt_err.append(np.hypot(*(np.array(kf.position) - _truth(t))))
    assert rejected == sorted(outliers)
    assert np.sqrt(np.mean(np.square(filt_err))) < 0.8 * np.sqrt(np.mean(np.square(raw_err)))
    assert np.allclose(kf.velocity, VELOCITY, atol=1.5)


def test_filter_recovers_after_a_jump_by_reinitialising():
    rng = np.random.RandomState(1)
    config = KalmanConfig(accel_std=0.5, max_rejections=4)
    kf = ConstantVelocityKalman(config)
    jump = np.array([600.0, 300.0])
    reinitialised_at = None
    for i in range(50):
        t = float(i)
        truth = _truth(t) + (jump if i >= 30 else 0.0)
        result = kf.update(tuple(truth + rng.normal(0.0, NOISE_M, 2)), t, NOISE_M)
        if 30 <= i < 30 + config.reinit_consensus - 1:
            assert not result.accepted  # the first post-jump fixes look like outliers
        if result.reinitialised and i > 0:
            reinitialised_at = i
    assert reinitialised_at == 30 + config.reinit_consensus - 1
    assert np.hypot(*(np.array(kf.position) - (_truth(49.0) + jump))) < 3 * NOISE_M


def test_a_wrong_start_ends_when_most_later_fixes_agree_despite_outliers():
    """The cross-source case: the first fix is 400 m off and later fixes are right only most of the
    time. Consistent evidence among the rejected fixes must still overturn the wrong track."""
    rng = np.random.RandomState(3)
    kf = ConstantVelocityKalman(KalmanConfig(accel_std=0.5))
    outlier_frames = {2, 5, 8, 11, 14}  # every third fix lands somewhere else
    for i in range(30):
        t = float(i)
        fix = _truth(t) + rng.normal(0.0, NOISE_M, 2)
        if i == 0:
            fix = _truth(t) + np.array([400.0, 0.0])
        elif i in outlier_frames:
            angle = i * 2.4
            fix = _truth(t) + 500.0 * np.array([np.cos(angle), np.sin(angle)])
        kf.update((fix[0], fix[1]), t, NOISE_M)
    assert np.hypot(*(np.array(kf.position) - _truth(29.0))) < 3 * NOISE_M


def test_scattered_outliers_never_reinitialise_the_filter():
    """As many consecutive rejected fixes as trigger a re-init, but far from each other: kept out."""
    rng = np.random.RandomState(2)
    config = KalmanConfig(accel_std=0.5, max_rejections=4)
    kf = ConstantVelocityKalman(config)
    for i in range(50):
        t = float(i)
        fix = _truth(t) + rng.normal(0.0, NOISE_M, 2)
        if 30 <= i < 38:  # eight wrong fixes in a row, in every direction ~400 m away
            angle = i * 2.4
            fix = _truth(t) + 400.0 * np.array([np.cos(angle), np.sin(angle)])
        result = kf.update((fix[0], fix[1]), t, NOISE_M)
        assert not result.reinitialised or i == 0
        assert result.accepted == (not 30 <= i < 38)
    assert np.hypot(*(np.array(kf.position) - _truth(49.0))) < 3 * NOISE_M


def test_odometry_drives_the_prediction_and_its_jumps_are_ignored():
    """With the vehicle's displacement per frame the prediction follows a turn the constant-velocity
    model would overshoot; a displacement faster than max_speed_mps (a reset of the odometry source)
    falls back to the motion model."""
    config = KalmanConfig(odometry_std_mps=1.0, max_speed_mps=40.0)
    with_odometry, without = ConstantVelocityKalman(config), ConstantVelocityKalman(config)
    position = np.array([0.0, 0.0])
    for kf in (with_odometry, without):
        kf.reset((0.0, 0.0), 0.0, 5.0)
    for i in range(1, 8):  # east at 10 m/s, then north at 10 m/s
        step = np.array([10.0, 0.0]) if i < 4 else np.array([0.0, 10.0])
        position = position + step
        with_odometry.predict(float(i), (step[0], step[1]))
        without.predict(float(i))
        for kf in (with_odometry, without):
            kf.update((position[0], position[1]), float(i), 5.0)
    with_odometry.predict(8.0, (0.0, 10.0))
    without.predict(8.0)
    truth = position + np.array([0.0, 10.0])
    assert np.hypot(*(np.array(with_odometry.position) - truth)) < 1.0
    assert np.hypot(*(np.array(without.position) - truth)) > 2.0
    before = np.array(with_odometry.position)
    with_odometry.predict(9.0, (300.0, 0.0))  # 300 m in one second: not motion
    assert np.hypot(*(np.array(with_odometry.position) - before)) < 20.0


def test_window_grows_without_fixes_and_falls_back_to_global():
    policy = SearchWindowPolicy(WindowConfig(radius_m=200.0, drift_mps=10.0, max_radius_m=500.0, max_low_confidence=3))
    assert policy.choose(0.0, None) is None  # nothing to centre on
    assert policy.choose(0.0, (1.0, 2.0)).radius_m == pytest.approx(200.0)
    policy.observe(0.0, True)
    assert policy.choose(10.0, (0.0, 0.0)).radius_m == pytest.approx(300.0)
    assert policy.choose(31.0, (0.0, 0.0)) is None  # R would reach R_max
    policy.observe(12.0, True)
    for t in (13.0, 14.0, 15.0):
        assert policy.choose(t, (0.0, 0.0)) is not None
        policy.observe(t, False)
    assert policy.choose(16.0, (0.0, 0.0)) is None  # N unconfident frames in a row
    policy.observe(16.0, True)
    assert policy.choose(17.0, (0.0, 0.0)).radius_m == pytest.approx(210.0)


def test_weighted_estimate_interpolates_between_adjacent_tiles_only():
    xy = np.array([[0.0, 0.0], [50.0, 0.0], [1000.0, 0.0], [0.0, 50.0]])
    sides = np.full(4, 100.0)
    scores = np.array([0.90, 0.90, 0.89, 0.10], dtype=np.float32)
    indices = np.array([0, 1, 2, 3])
    weighted = PositionEstimator(xy, sides, EstimatorConfig(method="weighted", topk=3)).estimate(scores, indices, 0.01)
    top1 = PositionEstimator(xy, sides, EstimatorConfig(method="top1")).estimate(scores, indices, 0.01)
    assert top1.xy == (0.0, 0.0)
    # Tile 2 is far away (not adjacent): it must not pull the estimate; tile 3 has a tiny weight.
    assert weighted.xy[0] == pytest.approx(25.0, abs=0.5)
    assert 0.0 <= weighted.xy[1] < 1.0
    assert not weighted.confident  # margin 0.01 < min_margin
    sure = PositionEstimator(xy, sides, EstimatorConfig()).estimate(scores, indices, 0.2)
    assert sure.confident and sure.confidence == 1.0 and sure.std_m < weighted.std_m


def test_error_stats_match_numpy_within_the_bin_width():
    errors = np.random.RandomState(2).gamma(2.0, 20.0, size=5000)
    stats = ErrorStats(bin_m=0.25)
    for value in errors:
        stats.add(float(value))
    summary = stats.summary()
    assert summary["median_m"] == pytest.approx(np.median(errors), abs=0.25)
    assert summary["p90_m"] == pytest.approx(np.percentile(errors, 90), abs=0.25)
    assert summary["within_25m"] == pytest.approx(np.mean(errors <= 25.0))
    assert summary["within_50m"] == pytest.approx(np.mean(errors <= 50.0))
    assert ErrorStats().summary()["median_m"] is None


def test_a_fix_covariance_weights_each_axis_on_its_own():
    """A fix sure of x (1 m) and vague about y (100 m) moves the state along x only."""
    kf = ConstantVelocityKalman()
    kf.reset((0.0, 0.0), 0.0, 20.0)
    result = kf.update((30.0, 30.0), 0.0, np.diag([1.0, 100.0 ** 2]))
    assert result.accepted
    x, y = kf.position
    assert x == pytest.approx(30.0, abs=0.2) and abs(y) < 2.0
    assert kf.cov[0, 0] < 1.01 and kf.cov[1, 1] > 300.0


def test_a_tracking_filter_refuses_reinitialisation():
    kf = ConstantVelocityKalman(KalmanConfig(max_rejections=3, reinit_consensus=2))
    kf.reset((0.0, 0.0), 0.0, 2.0)
    for t in range(1, 6):
        assert not kf.update((500.0, 0.0), float(t), 2.0, may_reinitialise=False).accepted
    assert kf.position[0] < 1.0 and kf.rejected_xy == []
    assert kf.update((500.0, 0.0), 6.0, 2.0).accepted is False
    assert kf.update((500.0, 0.0), 7.0, 2.0).reinitialised  # consensus of 2 once allowed


def test_the_look_at_offset_covariance_matches_a_monte_carlo():
    from meanloc.runtime.geo.rectify import CameraAttitude
    from meanloc.runtime.localize.look_at import AttitudeUncertainty, look_at_offset, offset_covariance

    attitude = CameraAttitude(200.0, 40.0, 30.0, 70.0)
    sigma = AttitudeUncertainty(heading_deg=5.0, pitch_deg=1.0, altitude_m=8.0)
    rng = np.random.default_rng(0)
    samples = np.array([look_at_offset(attitude._replace(
        yaw_deg=30.0 + rng.normal(0, 5.0), pitch_deg=40.0 + rng.normal(0, 1.0), altitude_m=200.0 + rng.normal(0, 8.0)))
        for _ in range(20000)])
    predicted = offset_covariance(attitude, sigma)
    measured = np.cov(samples.T)
    assert np.allclose(np.linalg.eigvalsh(predicted), np.linalg.eigvalsh(measured), rtol=0.1)
    assert np.trace(offset_covariance(attitude, sigma, heading_measured=True)) < np.trace(predicted)
