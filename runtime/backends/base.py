"""The one interface every inference backend implements.

`embed(batch)` takes preprocessed float32 NCHW images (see `meanloc.runtime.preprocess`) and
returns (N, D) float32, L2-normalised embeddings. Backends accept any N: batches larger than
their maximum are split, smaller ones are passed as they are (or padded, for fixed-shape engines).
Python 3.8 compatible.
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..identity import ModelIdentity
from ..preprocess import preprocess_batch


class EmbeddingBackend:
    """Base class. Subclasses set `name`, `identity` and `max_batch`, and implement `_embed_chunk`."""

    name = "base"
    identity: ModelIdentity
    max_batch: int = 64

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    @property
    def input_size(self) -> int:
        return self.identity.preprocess.size

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                "{} expects (N, 3, {s}, {s}) float32, got {}".format(self.name, batch.shape, s=self.input_size)
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._timings = {}  # type: Dict[str, float]
        chunks = [self._embed_chunk(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        if not chunks:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(chunks, axis=0)

    def embed_images(self, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess BGR uint8 images with the model's own spec, then embed."""
        return self.embed(preprocess_batch(images_bgr, self.identity.preprocess))

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_timings(self) -> Optional[Dict[str, float]]:
        """Seconds spent in H2D/inference/D2H by the last `embed` call, where the backend can tell."""
        timings = getattr(self, "_timings", None)
        return dict(timings) if timings else None

    def _record_timing(self, stage: str, seconds: float) -> None:
        """Add to the current `embed` call's total for one stage (summed over its chunks)."""
        timings = self.__dict__.setdefault("_timings", {})
        timings[stage] = timings.get(stage, 0.0) + float(seconds)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "max_batch": self.max_batch, "identity": self.identity.to_dict()}

    def close(self) -> None:
        """Release device memory and sessions."""

    def __enter__(self) -> "EmbeddingBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (host side, FP16-overflow safe)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, np.float32(1e-12))


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a batch along N up to `size` rows, for fixed-shape models (results for the padding are dropped)."""
    if len(batch) >= size:
        return batch
    padded = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
    padded[: len(batch)] = batch
    return padded


BACKEND_NAMES: List[str] = ["tensorrt", "onnxruntime", "torch"]
