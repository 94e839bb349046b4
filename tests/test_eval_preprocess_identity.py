"""One preprocessing definition: the training-eval path, calibration (preprocess_batch) and the
runtime backends (EmbeddingBackend.embed_images) feed the network bit-identical arrays."""

import albumentations as A
import cv2
import numpy as np

from meanloc.runtime.backends.base import EmbeddingBackend
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch
from meanloc.training.augment import view_pipeline
from meanloc.training.data.splits import Pair
from meanloc.training.evaluate import extract_embeddings
from meanloc.training.pairs import PairDataset

SIZE = 32


class RecordingBackend(EmbeddingBackend):
    name = "recording"

    def __init__(self):
        self.identity = ModelIdentity("0" * 64, "test", 4, PreprocessSpec(size=SIZE))
        self.seen = []

    def _embed_chunk(self, batch):
        self.seen.append(batch.copy())
        return np.ones((len(batch), 4), np.float32) / 2


def test_all_paths_give_identical_arrays(tmp_path):
    path = tmp_path / "photo.jpg"
    texture = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(path), texture)
    spec = PreprocessSpec(size=SIZE)

    calibration = preprocess_batch([read_image(str(path))], spec)[0]
    runtime_backend = RecordingBackend()
    runtime_backend.embed_images([cv2.imread(str(path))])
    runtime = runtime_backend.seen[0][0]
    seen = []
    extract_embeddings(lambda b: seen.append(b.copy()) or np.ones((len(b), 4), np.float32), [str(path)], spec)
    training_eval = seen[0][0]
    sat, drone, _ = PairDataset([Pair(str(path), str(path), 0)], img_size=SIZE, augment=False)[0]

    for array in (runtime, training_eval, sat.numpy(), drone.numpy()):
        assert array.dtype == np.float32 and array.shape == (3, SIZE, SIZE)
        assert np.array_equal(array, calibration)
    # and not trivially: a different size or interpolation gives different arrays
    assert not np.array_equal(
        preprocess_batch([texture], PreprocessSpec(size=SIZE + 32))[0][:, :SIZE, :SIZE], calibration
    )


def test_augmentation_core_matches_the_preprocessing_definition():
    """The training pipeline's deterministic steps (Resize INTER_LINEAR_EXACT + Normalize on RGB)
    agree with preprocess_bgr, so training and deployment see the same image statistics."""
    bgr = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    spec = PreprocessSpec(size=SIZE)
    pipeline = view_pipeline(spec, contrast=0.3, rotate90=False)
    core = A.Compose([t for t in pipeline.transforms if isinstance(t, (A.Resize, A.Normalize))])
    assert len(core.transforms) == 2
    augmented = core(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))["image"].transpose(2, 0, 1)
    assert np.allclose(augmented, preprocess_batch([bgr], spec)[0], atol=1e-5)


def test_pose_aware_queries_are_prepared_identically_everywhere(tmp_path):
    """A drone view with its pose sidecar: training (disk and RAM), evaluation, calibration and the
    onboard loop's `prepare_query` all feed the same rectified array."""
    import json

    from meanloc.calibration.calibset import CalibrationSet
    from meanloc.runtime.geo.rectify import CameraAttitude
    from meanloc.runtime.query_view import QueryView, prepare_query
    from meanloc.training.cached_pairs import CachedPairs

    view = QueryView(ground_side_m=120.0)
    attitude = CameraAttitude(altitude_m=150.0, pitch_deg=35.0, yaw_deg=60.0, hfov_deg=70.0, roll_deg=1.5)
    path = tmp_path / "image-01.jpeg"
    texture = cv2.resize(np.random.default_rng(2).integers(0, 256, (12, 16, 3), dtype=np.uint8), (128, 96))
    cv2.imwrite(str(path), texture)
    sidecar = {"camera": {"hfov_deg": attitude.hfov_deg},
               "pose": {"altitude_m": attitude.altitude_m, "pitch_deg": attitude.pitch_deg,
                        "yaw_deg": attitude.yaw_deg, "roll_deg": attitude.roll_deg}}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    spec = PreprocessSpec(size=SIZE)

    runtime = preprocess_batch([prepare_query(read_image(str(path)), view, attitude, SIZE)], spec)[0]
    seen = []
    extract_embeddings(lambda b: seen.append(b.copy()) or np.ones((len(b), 4), np.float32), [str(path)], spec,
                       query_view=view)
    _, disk_drone, _ = PairDataset([Pair(str(path), str(path), 0)], img_size=SIZE, augment=False, query_view=view)[0]
    _, ram_drone, _ = CachedPairs([(str(path), str(path), 0)], SIZE, augment=False, query_view=view).batch([0])
    calibration = next(CalibrationSet((path,), spec, 1, "test", 0, frozenset({path}), view).batches())[0]

    for array in (seen[0][0], disk_drone.numpy(), calibration):
        assert np.array_equal(array, runtime)
    np.testing.assert_allclose(ram_drone[0].numpy(), runtime, atol=1e-5)
    # and not trivially: the frame as captured gives another array
    assert not np.allclose(preprocess_batch([read_image(str(path))], spec)[0], runtime, atol=0.1)
