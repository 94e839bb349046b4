"""Pose-aware queries: an oblique frame rectified with its attitude shows the north-up ground square
around its look-at point; the choice travels in the model identity; the onboard loop applies it
and refuses what it cannot do."""

import json

import numpy as np
import pytest
from localize_support import (
    TILE_M,
    WORLD_PX,
    PoolingBackend,
    build_world_bank,
    to_lonlat,
    world_image,
)

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.geo.camera import CameraIntrinsics, Pose
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.geo.rectify import CameraAttitude, rectify_to_ground
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.frames import Frame, FrameSource
from meanloc.runtime.localize.loop import CameraDefaults, LocalizationLoop, LoopConfig
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.query_view import QueryView, prepare_query
from meanloc.runtime.sim.render import render_view
from meanloc.training.data.query_images import dataset_query_view, read_query_image

CAMERA = CameraIntrinsics(160, 120, 70.0)


def world_ortho(world: np.ndarray) -> Orthophoto:
    """The localize_support world (1 m/px, x east and y north from its centre) as an orthophoto."""
    half = WORLD_PX / 2
    return Orthophoto(world, np.array([[1.0, 0.0, -half], [0.0, -1.0, half], [0.0, 0.0, 1.0]]), "EPSG:32632")


def north_up_crop(world: np.ndarray, x: float, y: float, side_m: int) -> np.ndarray:
    col, row = round(WORLD_PX / 2 + x), round(WORLD_PX / 2 - y)
    half = side_m // 2
    return world[row - half : row + half, col - half : col + half]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(float).ravel(), b.astype(float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def render(world: np.ndarray, x: float, y: float, attitude: CameraAttitude) -> np.ndarray:
    pose = Pose((x, y), attitude.altitude_m, attitude.pitch_deg, attitude.yaw_deg, attitude.roll_deg)
    return render_view(world_ortho(world), CAMERA, pose).image_bgr


@pytest.mark.parametrize("pitch, yaw", [(0.0, 0.0), (35.0, 130.0), (45.0, 290.0)])
def test_rectified_frame_is_the_north_up_square_around_the_look_at_point(pitch, yaw):
    world = world_image(3)
    attitude = CameraAttitude(altitude_m=70.0, pitch_deg=pitch, yaw_deg=yaw, hfov_deg=70.0, roll_deg=2.0)
    patch = rectify_to_ground(render(world, 20.0, -10.0, attitude), attitude, side_m=48.0, size_px=48)
    assert patch.shape == (48, 48, 3)
    seen = patch.sum(axis=2) > 0  # ground outside the frame is black
    assert seen.mean() > 0.5
    truth = north_up_crop(world, 20.0, -10.0, 48)
    matched = correlation(patch[seen], truth[seen])
    shifted = correlation(patch[seen], north_up_crop(world, 44.0, -10.0, 48)[seen])
    turned = correlation(patch[seen], np.rot90(truth)[seen])
    assert matched > 0.85 and matched > shifted + 0.3 and matched > turned + 0.3


def test_query_view_travels_in_the_model_identity_and_checks_tile_sides():
    identity = ModelIdentity("a" * 64, "mean-small", 192, PreprocessSpec(size=64), query_view=QueryView(200.0))
    back = ModelIdentity.from_onnx_metadata(identity.to_onnx_metadata(), "model.onnx")
    assert back.query_view == QueryView(200.0) and back.query_view.rectified
    assert ModelIdentity.from_dict(identity.to_dict()).query_view == QueryView(200.0)
    legacy = {k: v for k, v in identity.to_onnx_metadata().items() if not k.endswith("query_view")}
    assert not ModelIdentity.from_onnx_metadata(legacy, "old.onnx").query_view.rectified
    QueryView(200.0).check_tile_side(204.0, "bank")
    QueryView().check_tile_side(50.0, "bank")  # frames as captured: any tile side
    with pytest.raises(ArtifactMismatchError, match="--tile-m 200"):
        QueryView(200.0).check_tile_side(100.0, "bank")


def test_a_frame_without_attitude_is_a_one_line_error():
    image = np.zeros((48, 64, 3), np.uint8)
    assert prepare_query(image, QueryView(), None, 32) is image
    with pytest.raises(MeanlocError, match="no camera attitude") as error:
        prepare_query(image, QueryView(100.0), None, 32)
    assert "\n" not in str(error.value)
    with pytest.raises(MeanlocError, match="pitch"):
        prepare_query(image, QueryView(100.0), CameraAttitude(100.0, 89.0, 0.0, 70.0), 32)


def test_view_files_need_their_pose_sidecar_and_datasets_their_tile_side(tmp_path):
    image = world_image(1)[:96, :128].copy()
    path = tmp_path / "image-01.jpeg"
    import cv2

    cv2.imwrite(str(path), image)
    with pytest.raises(MeanlocError, match="no pose sidecar"):
        read_query_image(path, QueryView(100.0), 32)
    assert read_query_image(path, QueryView(), 32).shape == (96, 128, 3)  # as captured: no sidecar needed
    path.with_suffix(".json").write_text(json.dumps({"pose": {"altitude_m": 90.0}, "camera": {}}))
    with pytest.raises(MeanlocError, match="lacks the camera pose"):
        read_query_image(path, QueryView(100.0), 32)
    with pytest.raises(MeanlocError, match=r"dataset\.json"):
        dataset_query_view(tmp_path, pose_aware=True)
    (tmp_path / "dataset.json").write_text(json.dumps({"parameters": {"tile_side_m": 150}}))
    assert dataset_query_view(tmp_path, pose_aware=True) == QueryView(150.0)
    assert dataset_query_view(tmp_path, pose_aware=False) == QueryView()


class ObliqueFlight(FrameSource):
    """Oblique frames along a track, heading with the track, attitude reported per frame."""

    description = "oblique flight"

    def __init__(self, world, points, attitude: CameraAttitude, report_hfov: bool = True):
        super().__init__()
        self.items = [(render(world, x, y, attitude), to_lonlat(x, y)) for x, y in points]
        self.attitude = attitude
        self.report_hfov = report_hfov

    def __iter__(self):
        a = self.attitude
        for i, (image, truth) in enumerate(self.items):
            self.stats.frames += 1
            yield Frame(i, float(i), image, truth_lonlat=truth, heading_deg=a.yaw_deg, altitude_m=a.altitude_m,
                        pitch_deg=a.pitch_deg, roll_deg=a.roll_deg, hfov_deg=a.hfov_deg if self.report_hfov else None)


@pytest.fixture(scope="module")
def world_and_bank(tmp_path_factory):
    world = world_image()
    folder = tmp_path_factory.mktemp("bank")
    bank = SatelliteBank.open(build_world_bank(folder, PoolingBackend(), world), device="cpu")
    return world, bank


def test_the_loop_localises_oblique_frames_of_a_pose_aware_model(world_and_bank):
    world, bank = world_and_bank
    backend = PoolingBackend()
    backend.identity = ModelIdentity(backend.identity.checkpoint_sha256, "test", 192, backend.identity.preprocess,
                                     query_view=QueryView(float(TILE_M)))
    attitude = CameraAttitude(altitude_m=70.0, pitch_deg=35.0, yaw_deg=30.0, hfov_deg=70.0)
    points = [(-90.0 + 9.0 * i, -60.0 + 6.0 * i) for i in range(16)]
    config = LoopConfig(estimator=EstimatorConfig(min_margin=0.0))
    summary = LocalizationLoop(backend, bank, config, []).run(ObliqueFlight(world, points, attitude))
    assert summary["frames_processed"] == len(points)
    assert summary["error_raw_fix"]["median_m"] < 25.0  # tiles every 32 m
    # The same frames embedded as captured (perspective, heading-turned) land much worse.
    as_captured = LocalizationLoop(PoolingBackend(), bank, config, []).run(ObliqueFlight(world, points, attitude))
    assert as_captured["error_raw_fix"]["median_m"] > summary["error_raw_fix"]["median_m"]
    # A camera that does not report its FOV needs the fixed value.
    with pytest.raises(MeanlocError, match="no camera attitude"):
        LocalizationLoop(backend, bank, config, []).run(ObliqueFlight(world, points[:2], attitude, report_hfov=False))
    filled = LoopConfig(estimator=config.estimator, camera=CameraDefaults(hfov_deg=70.0))
    rerun = LocalizationLoop(backend, bank, filled, []).run(ObliqueFlight(world, points, attitude, report_hfov=False))
    assert rerun["error_raw_fix"]["median_m"] == summary["error_raw_fix"]["median_m"]


def test_the_loop_refuses_a_bank_cut_at_another_tile_side(world_and_bank):
    _, bank = world_and_bank
    backend = PoolingBackend()
    backend.identity = ModelIdentity(backend.identity.checkpoint_sha256, "test", 192, backend.identity.preprocess,
                                     query_view=QueryView(200.0))
    with pytest.raises(ArtifactMismatchError, match="bank's tiles are 64 m"):
        LocalizationLoop(backend, bank, LoopConfig(), [])


def test_evaluating_a_pose_aware_model_on_data_without_poses_is_one_clear_error(tmp_path):
    from data_support import make_university_test

    from meanloc.training.evaluate import evaluate_model
    from meanloc.training.model import build_model, resolve_config
    from meanloc.training.torch_backend import TorchBackend

    make_university_test(tmp_path / "test")
    model = build_model(resolve_config("mean-nano", query_ground_side_m=200.0))
    with TorchBackend.for_model(model) as backend, pytest.raises(MeanlocError, match="no pose sidecar") as error:
        evaluate_model(backend, tmp_path, dataset="university", directions=("d2s",))
    assert "\n" not in str(error.value)
