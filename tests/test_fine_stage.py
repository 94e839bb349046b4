"""The fine stage with real OpenCV features on a two-date synthetic town: metre-level fixes from
the rectified patch, the heading error measured, featureless ground refused, the fit's statistics."""

import math

import numpy as np
import pytest
from fine_support import build_feature_bank, oblique_frame, write_world_pair

from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.fine.fit import fit_similarity, floor_covariance
from meanloc.runtime.fine.matching import vote_translation
from meanloc.runtime.fine.stage import Candidate, FineStage, RefineConfig, rerank
from meanloc.runtime.geo.orthophoto import Orthophoto


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    folder = tmp_path_factory.mktemp("town")
    date1, date2 = write_world_pair(folder)
    bank = SatelliteBank.open(build_feature_bank(date1, folder / "bank"))
    drone = Orthophoto.from_geotiff(date2)
    return {"bank": bank, "drone": drone, "date1": date1, "stage": FineStage(bank.features, RefineConfig())}


def look_at_points(drone: Orthophoto, count: int, seed: int = 0):
    """Look-at points well inside the town (the oblique footprint must stay on the raster)."""
    rng = np.random.default_rng(seed)
    min_x, min_y, max_x, max_y = drone.bounds_world()
    margin = 450.0
    return [(float(rng.uniform(min_x + margin, max_x - margin)), float(rng.uniform(min_y + margin, max_y - margin)))
            for _ in range(count)]


def test_a_second_date_frame_is_located_to_metres_from_a_wrong_prior(town):
    errors, verified = [], 0
    for index, xy in enumerate(look_at_points(town["drone"], 10)):
        image, attitude, truth = oblique_frame(town["drone"], town["bank"], xy, yaw_deg=36.0 * index, seed=index)
        # The prior is 120 m off: the region is searched, not assumed.
        prior = Candidate(truth[0] + 90.0, truth[1] - 80.0, 250.0, "prior")
        result = town["stage"].refine(image, attitude, attitude.yaw_deg, [prior])
        if result.verified:
            verified += 1
            errors.append(math.hypot(result.look_at[0] - truth[0], result.look_at[1] - truth[1]))
            assert result.inliers >= RefineConfig().min_inliers
            assert set(result.timings) == {"detect", "match", "fit"}
    # The second date is photographic (other season, sun, texture, ~1 m misregistration, JPEG):
    # fixes are sparse on fields and forest, but the ones that verify are right.
    assert verified >= 3
    assert np.median(errors) < 3.0 and max(errors) < 10.0


def verifying_frame(town, heading: float):
    """A frame over ground the stage verifies with its exact attitude (the town has fields too)."""
    for xy in look_at_points(town["drone"], 10, seed=5):
        image, attitude, truth = oblique_frame(town["drone"], town["bank"], xy, yaw_deg=heading)
        if town["stage"].refine(image, attitude, heading, [Candidate(truth[0], truth[1], 100.0, "prior")]).verified:
            return image, attitude, truth
    raise AssertionError("no frame of the town verifies")


def test_the_fit_measures_the_heading_error_and_still_finds_the_look_at_point(town):
    image, attitude, truth = verifying_frame(town, 200.0)
    for error in (-7.0, 6.0):
        reported = attitude._replace(yaw_deg=attitude.yaw_deg + error)
        result = town["stage"].refine(image, reported, reported.yaw_deg, [Candidate(truth[0], truth[1], 100.0, "prior")])
        assert result.verified, result.reason
        assert result.rotation_deg == pytest.approx(error, abs=1.5)  # reported minus true heading
        assert math.hypot(result.look_at[0] - truth[0], result.look_at[1] - truth[1]) < 5.0


def test_featureless_ground_gives_no_geometric_fix(town, tmp_path):
    """Water and uniform fields: the frame must not verify anywhere in its region."""
    drone = town["drone"]
    flat = Orthophoto(np.full_like(drone.image, (140, 110, 60)), drone.transform, drone.crs)  # lake blue
    rng = np.random.default_rng(1)
    field = np.clip(np.full(drone.image.shape, (70, 150, 110), np.float32) + rng.normal(0, 4, drone.image.shape), 0,
                    255).astype(np.uint8)
    for ground in (flat, Orthophoto(field, drone.transform, drone.crs)):
        for index, xy in enumerate(look_at_points(drone, 3, seed=7)):
            image, attitude, truth = oblique_frame(ground, town["bank"], xy, yaw_deg=90.0 * index, seed=index)
            result = town["stage"].refine(image, attitude, attitude.yaw_deg,
                                          [Candidate(truth[0], truth[1], 300.0, "prior")])
            assert not result.verified and result.reason


def test_a_frame_without_heading_is_not_refined(town):
    xy = look_at_points(town["drone"], 1)[0]
    image, _, truth = oblique_frame(town["drone"], town["bank"], xy, yaw_deg=0.0)
    result = town["stage"].refine(image, None, None, [Candidate(truth[0], truth[1], 100.0, "prior")])
    assert not result.verified and "heading" in result.reason


def test_a_nadir_frame_with_heading_only_is_located_by_a_homography(town):
    """No altitude or FOV: the north-up frame and a homography to the ground. The frames come from
    the bank's own date (with camera effects): this checks the model and its geometry; across
    seasons the rectified patch (above) is what works."""
    hits = 0
    same_date = Orthophoto.from_geotiff(town["date1"])
    for index, xy in enumerate(look_at_points(same_date, 6, seed=11)):
        image, attitude, truth = oblique_frame(same_date, town["bank"], xy, yaw_deg=45.0 * index, altitude_m=250.0,
                                               pitch_deg=0.0, seed=index)
        result = town["stage"].refine(image, None, attitude.yaw_deg, [Candidate(truth[0], truth[1], 60.0, "prior")])
        if result.verified:
            assert result.model == "homography"
            assert math.hypot(result.look_at[0] - truth[0], result.look_at[1] - truth[1]) < 8.0
            hits += 1
    assert hits >= 3


def test_similarity_fit_recovers_the_model_and_its_covariance_scales_with_noise():
    rng = np.random.default_rng(0)
    src = rng.uniform(-100, 100, (120, 2))
    angle, scale, shift = math.radians(4.0), 1.03, np.array([5230.0, -812.0])
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rotation.T + shift + rng.normal(0, 0.5, src.shape)
    dst[:40] += rng.uniform(-60, 60, (40, 2))  # a third are outliers
    fit = fit_similarity(src, dst, threshold_m=2.0, floor_m=0.01)
    assert fit.rotation_deg == pytest.approx(4.0, abs=0.1)
    assert fit.scale == pytest.approx(1.03, abs=0.002)
    assert np.hypot(*(fit.look_at - shift)) < 0.3
    assert 70 <= fit.n_inliers <= 82  # the 80 good points, give or take outliers that land close
    # Least squares: the look-at point's std is about sigma / sqrt(n) (with the lever arm of the
    # rotation and scale, a little more).
    std = math.sqrt(np.trace(fit.covariance) / 2)
    assert 0.5 / math.sqrt(80) * 0.7 < std < 0.5 / math.sqrt(80) * 2.0
    assert np.all(np.linalg.eigvalsh(floor_covariance(fit.covariance, 1.5)) >= 1.5 ** 2 - 1e-9)


def test_repetitive_ground_has_a_rival_peak():
    """Matches from a periodic pattern (every 40 m) vote for several translations alike."""
    rng = np.random.default_rng(2)
    query = rng.uniform(-80, 80, (60, 2))
    truth = np.array([1000.0, 2000.0])
    bank_points = np.concatenate([query + truth + period for period in ([0, 0], [40, 0], [-40, 0])])
    repeated = vote_translation(np.tile(query, (3, 1)), bank_points, [(1000.0, 2000.0, 200.0)], 4.0, [0.0])
    assert repeated.rival_votes >= 0.9 * repeated.votes
    unique = vote_translation(query, query + truth, [(1000.0, 2000.0, 200.0)], 4.0, [0.0])
    assert np.hypot(*(unique.translation - truth)) < 4.0 and unique.rival_votes < 0.2 * unique.votes


def test_rerank_puts_the_tiles_containing_the_verified_point_first():
    tile_xy = np.array([[0.0, 0.0], [500.0, 0.0], [100.0, 0.0], [1000.0, 0.0]])
    sides = np.full(4, 200.0)
    indices = np.array([1, 3, 2, 0, -1])  # retrieval's order (scores high first)
    order = rerank((60.0, 10.0), tile_xy, sides, indices)
    assert list(indices[order[:2]]) == [2, 0]  # both contain (60, 10), in retrieval order
    assert sorted(order.tolist()) == list(range(5))


@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_nearest_neighbours_are_opencvs_brute_force_ones(town, kind):
    """The matcher's own L2 search (one matrix product, blocked) finds the neighbours and distances
    OpenCV's exhaustive matcher finds, on real descriptors of the town."""
    import cv2

    from meanloc.runtime.features.extract import FeatureSpec, make_extractor
    from meanloc.runtime.fine import matching

    extractor = make_extractor(FeatureSpec(kind))
    features = extractor.detect_and_describe(np.ascontiguousarray(town["drone"].image[:600, :600]))
    query, bank = features.descriptors[:200], features.descriptors[200:]
    assert len(query) == 200 and len(bank) > 500
    norm = cv2.NORM_L2 if extractor.norm == "l2" else cv2.NORM_HAMMING
    as_matched = (lambda d: d.astype(np.float32)) if extractor.norm == "l2" else (lambda d: d)
    expected = cv2.BFMatcher(norm).knnMatch(as_matched(query), as_matched(bank), k=5)
    original_block = matching.L2_BLOCK_ELEMENTS
    matching.L2_BLOCK_ELEMENTS = 37 * len(bank)  # several blocks, the last one short
    try:
        nearest, distance = matching.nearest_neighbours(query, bank, extractor.norm, 5)
    finally:
        matching.L2_BLOCK_ELEMENTS = original_block
    expected_distance = np.array([[m.distance for m in row] for row in expected])
    np.testing.assert_allclose(distance, expected_distance, rtol=1e-4, atol=1e-2)
    # Equal distances may come in either order: compare the neighbours as sets, row by row.
    assert all(set(mine) == {m.trainIdx for m in row} for mine, row in zip(nearest, expected))
