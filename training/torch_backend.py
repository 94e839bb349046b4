"""PyTorch reference backend: the exported embedder (`MEAN.embedder()`, the graph `meanloc export
onnx` writes) behind the runtime's `EmbeddingBackend`, for checkpoints and for a model in training.

Evaluation runs every model through a backend, so training-time validation, `meanloc eval
--checkpoint` and the exported ONNX measure one graph. runtime/ opens it through the
`meanloc.backends` entry point (pyproject.toml) and never imports torch or training/ itself.
"""

import os
from typing import Any

import numpy as np
import torch

from meanloc.errors import MeanlocError
from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.identity import ModelIdentity

from .checkpoint import checkpoint_identity, load_checkpoint, model_identity
from .model import MEAN

DEFAULT_MAX_BATCH = 32


class TorchBackend(EmbeddingBackend):
    """`embed` with a checkpoint's MEAN model (our format or an official MEAN checkpoint)."""

    name = "torch"

    def __init__(self, path: str, device: str = "cpu", max_batch: int | None = None, threads: int | None = None) -> None:
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise MeanlocError(f"checkpoint not found: {self.path}")
        if threads:
            torch.set_num_threads(int(threads))
        loaded = load_checkpoint(self.path)
        self._open(loaded.model, checkpoint_identity(loaded), torch.device(device), max_batch)

    @classmethod
    def for_model(cls, model: MEAN, max_batch: int | None = None) -> "TorchBackend":
        """A model in memory (the trainer's), in eval mode until `close()` restores its mode."""
        backend = cls.__new__(cls)
        backend.path = "(in-process model)"
        backend._restore_training = model.training
        backend._model = model.eval()
        backend._open(model, model_identity(model.config, checkpoint_sha256=""), next(model.parameters()).device,
                      max_batch)
        return backend

    def _open(self, model: MEAN, identity: ModelIdentity, device: torch.device, max_batch: int | None) -> None:
        self.identity = identity
        self.max_batch = int(max_batch) if max_batch else DEFAULT_MAX_BATCH
        self._device = device
        self._embedder = model.embedder().to(device).eval()

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = self._embedder(torch.from_numpy(batch).to(self._device))
        return l2_normalise(output.float().cpu().numpy())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"path": self.path, "device": str(self._device)})
        return info

    def close(self) -> None:
        self._embedder = None
        model = self.__dict__.pop("_model", None)
        if model is not None:
            model.train(self.__dict__.pop("_restore_training"))
