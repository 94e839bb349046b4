"""PyTorch reference backend for checkpoints (the FP32 ground truth the other backends are compared to).

torch and training/ are imported inside functions only, so importing this module (and everything
else in meanloc.runtime) stays torch-free on the Jetson. Python 3.8 compatible.
"""

import os
from typing import Any, Dict, Optional

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

from .base import EmbeddingBackend, l2_normalise

DEFAULT_MAX_BATCH = 32


class TorchBackend(EmbeddingBackend):
    """`embed` with a checkpoint's MEAN model (our format or an official MEAN checkpoint)."""

    name = "torch"

    def __init__(
        self, path: str, device: str = "cpu", max_batch: Optional[int] = None, threads: Optional[int] = None
    ) -> None:
        try:
            import torch

            from meanloc.training.checkpoint import checkpoint_identity, load_checkpoint
        except ImportError as exc:
            raise MissingDependencyError(
                "the torch backend needs PyTorch and meanloc's training extra ({}): pip install 'meanloc[train]'".format(exc)
            ) from None
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise MeanlocError("checkpoint not found: {}".format(self.path))
        if threads:
            torch.set_num_threads(int(threads))
        loaded = load_checkpoint(self.path)
        self.identity = checkpoint_identity(loaded)
        self.max_batch = int(max_batch) if max_batch else DEFAULT_MAX_BATCH
        self._torch = torch
        self._device = torch.device(device)
        self._embedder = loaded.model.embedder().to(self._device).eval()

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            output = self._embedder(torch.from_numpy(batch).to(self._device))
        result = output.float().cpu().numpy()
        return l2_normalise(result)

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update({"path": self.path, "device": str(self._device)})
        return info

    def close(self) -> None:
        self._embedder = None
