"""Attitude-noise augmentation: re-sampling the decoded wide patch gives the patch a noisy
attitude would have given (the same homography), and the RAM pipeline draws it per batch."""

import numpy as np
import pytest
import torch

from meanloc.runtime.geo.camera import CameraIntrinsics, Pose
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.geo.rectify import CameraAttitude
from meanloc.runtime.query_view import FILLS, QueryView, prepare_query
from meanloc.runtime.sim.render import render_view
from meanloc.runtime.sim.sensors import SENSOR_PRESETS
from meanloc.training.attitude_noise import MARGIN, ViewGeometry, patch_homography, resample_patches


def _texture_ortho():
    rng = np.random.default_rng(3)
    coarse = rng.integers(20, 235, (60, 60, 3)).astype(np.uint8)
    import cv2

    image = cv2.resize(coarse, (1200, 1200), interpolation=cv2.INTER_CUBIC)  # smooth blobs of ~20 px
    return Orthophoto(image, np.array([[1.0, 0, 500_000.0], [0, -1.0, 5_200_000.0], [0, 0, 1]]), "EPSG:32632")


@pytest.mark.parametrize("errors", [(6.0, 0.0, 0.0, 0.0), (0.0, 2.0, 1.5, 0.0), (-4.0, -1.0, 0.0, 10.0)])
def test_resampled_wide_patch_equals_rectifying_with_the_noisy_attitude(errors):
    ortho = _texture_ortho()
    camera = CameraIntrinsics(320, 240, 70.0)
    x0, y0, x1, y1 = ortho.bounds_world()
    truth = CameraAttitude(150.0, 35.0, 30.0, 70.0, 0.0)
    frame = render_view(ortho, camera, Pose(((x0 + x1) / 2, (y0 + y1) / 2), 150.0, 35.0, 30.0)).image_bgr
    d_heading, d_pitch, d_roll, d_height = errors
    noisy = CameraAttitude(150.0 + d_height, 35.0 + d_pitch, 30.0 + d_heading, 70.0, d_roll)
    side, size = 200.0, 64
    direct = prepare_query(frame, QueryView(side, "mean"), noisy, size).astype(np.float64)
    wide = prepare_query(frame, QueryView(side * MARGIN, "mean"), truth, round(size * MARGIN))
    wide_rgb = torch.from_numpy(np.ascontiguousarray(wide[:, :, ::-1].transpose(2, 0, 1))).float()[None]
    homography = patch_homography(ViewGeometry(truth, 320, 240), noisy, side, size)[None]
    fill = FILLS["mean"]
    resampled = resample_patches(wide_rgb, homography, size, (fill[2], fill[1], fill[0]))[0]
    resampled = resampled.numpy().transpose(1, 2, 0)[:, :, ::-1]
    shown = np.abs(direct - np.round(fill)).max(axis=2) > 2
    assert shown.mean() > 0.5
    diff = np.abs(direct - resampled)[shown]
    assert diff.mean() < 6.0  # two bilinear resamplings instead of one
    moved = np.abs(direct - prepare_query(frame, QueryView(side, "mean"), truth, size))[shown]
    assert moved.mean() > 3 * diff.mean()  # the errors really change the patch


def test_cached_pairs_draw_attitude_errors_per_batch(tmp_path):
    from meanloc.training.cached_pairs import CachedPairs
    from meanloc.training.data.query_images import dataset_query_view
    from meanloc.training.data.splits import load_train_pairs
    from meanloc.training.data.synth.writer import preset_config, synthetic_sources, write_dataset

    config = preset_config("tiny", seed=2)
    write_dataset(tmp_path / "d", config, *synthetic_sources(config))
    pairs = load_train_pairs(tmp_path / "d", "synthetic").pairs[:6]
    view = dataset_query_view(tmp_path / "d", pose_aware=True)
    clean = CachedPairs(pairs, 64, augment=False, query_view=view)
    noisy = CachedPairs(pairs, 64, augment=False, query_view=view, attitude_noise=SENSOR_PRESETS["cheap-imu"])
    ideal = CachedPairs(pairs, 64, augment=False, query_view=view, attitude_noise=SENSOR_PRESETS["ideal"])
    torch.manual_seed(0)
    a = noisy.batch(range(6))[1]
    b = noisy.batch(range(6))[1]
    base = clean.batch(range(6))[1]
    assert torch.equal(ideal.batch(range(6))[1], base)  # ideal sensors change nothing
    assert not torch.allclose(a, b) and not torch.allclose(a, base)
    torch.manual_seed(0)
    assert torch.equal(noisy.batch(range(6))[1], a)  # same RNG state, same errors (exact resume)
