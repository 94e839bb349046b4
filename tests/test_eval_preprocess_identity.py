"""One preprocessing definition: the training-eval path, calibration (preprocess_batch) and the
runtime backends (EmbeddingBackend.embed_images) feed the network bit-identical arrays."""

import albumentations as A
import cv2
import numpy as np

from meanloc.runtime.backends.base import EmbeddingBackend
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch, read_image_bgr
from meanloc.training.data import Pair, PairDataset
from meanloc.training.data.augment import view_pipeline
from meanloc.training.evaluate import extract_embeddings

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

    calibration = preprocess_batch([read_image_bgr(str(path))], spec)[0]
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
