"""Inference backends behind one interface (`EmbeddingBackend.embed`), and picking one.

`open_backend(path)` opens `.engine` files with TensorRT, `.onnx` with ONNX Runtime (best
available execution provider) and checkpoints with the PyTorch reference (training's, found
through an entry point). Backend modules are imported only when used, so this package imports
neither TensorRT nor torch.
"""

from .base import EmbeddingBackend, l2_normalise
from .select import available_backends, backend_for_path, best_backend_for, open_backend

__all__ = [
    "EmbeddingBackend",
    "available_backends",
    "backend_for_path",
    "best_backend_for",
    "l2_normalise",
    "open_backend",
]
