"""ONNX-vs-PyTorch parity: the exported graph must compute the checkpoint's embedding.

Inputs are both random tensors and aerial-looking images (fields, roads, roofs, trees drawn with
OpenCV) passed through the runtime's own preprocessing, at batch sizes 1 and N so the dynamic batch
axis is exercised. ONNX Runtime (CPU, FP32) runs the graph. Gates (issue 4): max |diff| <= 1e-4 and
cosine >= 0.99999 on every embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.onnx_contract import INPUT_NAME
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.99999


@dataclass(frozen=True)
class ParityReport:
    n_random: int
    n_images: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    max_abs_diff_allowed: float = MAX_ABS_DIFF
    min_cosine_required: float = MIN_COSINE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.max_abs_diff_allowed and self.min_cosine >= self.min_cosine_required

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"parity vs PyTorch {verdict}: max |diff| {self.max_abs_diff:.2e} (<= {self.max_abs_diff_allowed:.0e}), "
            f"cosine min {self.min_cosine:.7f} mean {self.mean_cosine:.7f} (>= {self.min_cosine_required}) "
            f"on {self.n_random} random + {self.n_images} aerial-like inputs, batch sizes {list(self.batch_sizes)}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise MeanlocError("ONNX export does not match PyTorch: " + self.summary())


def torch_reference(embedder) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a torch embedder as numpy (N,3,S,S) -> (N,D)."""
    import torch

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return embedder(torch.from_numpy(batch)).numpy()

    return embed


def synthetic_aerial_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A BGR uint8 nadir view with the statistics of farmland: field patches, roads, roofs, trees."""
    palette = np.array(
        [[60, 110, 70], [70, 140, 110], [90, 130, 150], [50, 90, 60], [120, 160, 170]], np.uint8
    )
    image = np.empty((size, size, 3), np.uint8)
    image[:] = palette[rng.integers(len(palette))]
    for _ in range(12):  # field patches as random quadrilaterals
        corners = rng.integers(-size // 4, size + size // 4, size=(4, 2)).astype(np.int32)
        cv2.fillPoly(image, [corners], palette[rng.integers(len(palette))].tolist())
    for _ in range(3):  # roads
        start, end = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(map(int, start)), tuple(map(int, end)), (105, 105, 110), max(2, size // 40))
    for _ in range(8):  # roofs with a shadow on one side
        x, y = rng.integers(0, size - size // 8, 2)
        w, h = rng.integers(size // 24, size // 8, 2)
        cv2.rectangle(image, (int(x) + 3, int(y) + 3), (int(x + w) + 3, int(y + h) + 3), (30, 35, 35), -1)
        cv2.rectangle(
            image,
            (int(x), int(y)),
            (int(x + w), int(y + h)),
            tuple(int(v) for v in rng.integers(90, 230, 3)),
            -1,
        )
    for _ in range(20):  # tree crowns
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(image, centre, int(rng.integers(2, max(3, size // 30))), (35, 70, 40), -1)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    noise = rng.normal(0.0, 4.0, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def parity_inputs(spec: PreprocessSpec, n_random: int, n_images: int, seed: int) -> np.ndarray:
    """Random normal tensors followed by preprocessed aerial-like images (generated at 1.5x the input
    size, so the runtime's resize runs too)."""
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((n_random, 3, spec.size, spec.size)).astype(np.float32)
    images = [synthetic_aerial_image(rng, spec.size * 3 // 2) for _ in range(n_images)]
    return np.concatenate([random, preprocess_batch(images, spec)], axis=0)


def check_parity(
    onnx_model: bytes | str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
    spec: PreprocessSpec,
    n_random: int = 4,
    n_images: int = 4,
    seed: int = 0,
) -> ParityReport:
    """Compare ONNX Runtime (CPU) with `reference` on the same inputs; returns the report (check
    `.passed` or call `.raise_if_failed()`)."""
    import onnxruntime as ort

    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    try:
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise MeanlocError(
            f"ONNX Runtime cannot load the exported model: {str(exc).splitlines()[0]}"
        ) from None
    batch = parity_inputs(spec, n_random, n_images, seed)
    expected = reference(batch)
    single = session.run(None, {INPUT_NAME: batch[:1]})[0]
    full = session.run(None, {INPUT_NAME: batch})[0]
    diffs = [np.abs(full - expected).max(), np.abs(single - expected[:1]).max()]
    cosine = _cosine(full, expected)
    return ParityReport(
        n_random=n_random,
        n_images=n_images,
        batch_sizes=(1, len(batch)),
        max_abs_diff=float(max(diffs)),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)
