"""Exact top-k cosine search over float16 embeddings, blocked so memory stays bounded.

numpy has no BLAS kernel for float16, so a float16 matmul runs in a slow generic loop. Each
block of bank rows is therefore converted to float32 and multiplied by BLAS; only one block is
ever held in float32 (or, optionally, the whole bank is kept in RAM as float32). A running
top-k per query is kept with `argpartition` (linear time), and the final k are sorted by
descending score, equal scores by row index, so results are deterministic. The same code runs
on CuPy arrays when CuPy and a GPU are present (the bank is uploaded once as float16). Global
searches of large banks go through the bank's compressed index instead (`index.py`), which
re-ranks its candidates with the same scores and ordering.
Python 3.8 compatible; needs only numpy.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

from meanloc.errors import MeanlocError

DEFAULT_BLOCK_ROWS = 16384
# Index returned in slots that had no candidate (k larger than the searched rows).
NO_INDEX = -1
# Below this many rows a block is converted in the calling thread: the hand-off costs more.
PARALLEL_CONVERSION_MIN_ROWS = 2048


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise MeanlocError("queries must be (N, {}) embeddings, got shape {}".format(dim, queries.shape))
    if not np.all(np.isfinite(queries)):
        raise MeanlocError("queries contain NaN or infinite values")
    return np.ascontiguousarray(queries)


def _merge_topk(xp: Any, scores: Any, indices: Any, k: int) -> Tuple[Any, Any]:
    """Keep the k best columns of (N, C) scores (unsorted)."""
    if scores.shape[1] <= k:
        return scores, indices
    part = xp.argpartition(-scores, k - 1, axis=1)[:, :k]
    return xp.take_along_axis(scores, part, axis=1), xp.take_along_axis(indices, part, axis=1)


def sort_topk(scores: np.ndarray, indices: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score then ascending index; pad to k with -inf / NO_INDEX.

    Scores are cosines of unit vectors, but a bank stores them in float16: the rounded vectors are
    unit length only to ~1e-3, so a tile embedded from the query's own image scored 1.0001. The
    returned scores are clipped to [-1, 1] after ranking (the order still uses the raw products)."""
    n = scores.shape[0]
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_indices = np.full((n, k), NO_INDEX, dtype=np.int64)
    width = min(k, scores.shape[1])
    for i in range(n):
        order = np.lexsort((indices[i], -scores[i]))[:width]
        out_scores[i, :width] = np.clip(scores[i, order], -1.0, 1.0)
        out_indices[i, :width] = indices[i, order]
    return out_scores, out_indices


def blocked_topk(
    xp: Any,
    queries: Any,
    embeddings: Any,
    k: int,
    rows: Optional[np.ndarray] = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    convert: Optional[Callable[[Any], Any]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of float32 `queries` (N, D) against `embeddings` (M, D) of any dtype.

    `xp` is numpy or cupy, matching where `queries` and `embeddings` live. `rows`, if given,
    restricts the search to those row indices (host int64 array, ascending). `convert` turns a
    block into float32 (default: `xp.asarray(block, float32)`). Returns host arrays.
    """
    n = queries.shape[0]
    total = embeddings.shape[0] if rows is None else len(rows)
    best_scores = xp.empty((n, 0), dtype=xp.float32)
    best_indices = xp.empty((n, 0), dtype=xp.int64)
    for start in range(0, total, block_rows):
        stop = min(start + block_rows, total)
        if rows is None:
            block = embeddings[start:stop]
            block_index = xp.arange(start, stop, dtype=xp.int64)
        else:
            picked = rows[start:stop]
            block = embeddings[xp.asarray(picked)]
            block_index = xp.asarray(picked, dtype=xp.int64)
        block32 = convert(block) if convert is not None else xp.asarray(block, dtype=xp.float32)
        scores = queries @ block32.T
        block_scores, block_indices = _merge_topk(xp, scores, xp.broadcast_to(block_index, scores.shape), k)
        best_scores, best_indices = _merge_topk(
            xp,
            xp.concatenate([best_scores, block_scores], axis=1),
            xp.concatenate([best_indices, block_indices], axis=1),
            k,
        )
    host_scores, host_indices = _to_host(xp, best_scores), _to_host(xp, best_indices)
    return sort_topk(host_scores, host_indices, k)


def _to_host(xp: Any, array: Any) -> np.ndarray:
    return array if xp is np else xp.asnumpy(array)


def cupy_or_none() -> Any:
    """CuPy if it imports and sees a GPU, else None (CPU-only machines never fail here)."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # no driver / no device: CuPy imports but cannot run
        return None
    return cupy


class ExactSearcher:
    """Exact blocked top-k over an (M, D) embedding array (a float16 memmap, typically).

    device: "cpu", "cuda" (CuPy; fails if missing) or "auto" (CuPy when usable).
    float32_in_memory (CPU): keep a float32 copy in RAM (twice the size of the bank file) so a
    search skips the float16 conversion, which dominates single-query time with numpy; sensible
    for banks that fit comfortably in memory.
    On the CPU, float16 blocks are converted into one reused float32 buffer (a fresh array per
    block would cost as much in page faults as the conversion itself), split over
    `conversion_threads` threads (numpy releases the GIL while casting). The buffer makes
    concurrent searches serial (a lock), not unsafe.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        device: str = "auto",
        block_rows: int = DEFAULT_BLOCK_ROWS,
        float32_in_memory: bool = False,
        conversion_threads: Optional[int] = None,
    ) -> None:
        if embeddings.ndim != 2:
            raise MeanlocError("bank embeddings must be 2-D, got shape {}".format(embeddings.shape))
        if device not in ("auto", "cpu", "cuda"):
            raise MeanlocError("search device must be auto, cpu or cuda, not {!r}".format(device))
        self.block_rows = int(block_rows)
        self._host = embeddings
        self._lock = threading.Lock()
        self._buffer = None  # type: Optional[np.ndarray]
        self._threads = max(1, int(conversion_threads or min(4, os.cpu_count() or 1)))
        self._pool = None  # type: Optional[ThreadPoolExecutor]
        cupy = None if device == "cpu" else cupy_or_none()
        if device == "cuda" and cupy is None:
            raise MeanlocError("search device 'cuda' needs CuPy and a CUDA GPU (pip install cupy-cuda12x)")
        self.xp = cupy if cupy is not None else np
        self.device = "cuda" if cupy is not None else "cpu"
        if cupy is not None:
            self._searched = self._upload(embeddings)  # type: Any
        elif float32_in_memory:
            self._searched = self._to_float32_copy(embeddings)
        else:
            self._searched = embeddings

    def _chunks(self, count: int) -> Iterator[slice]:
        step = self.block_rows * 8
        return (slice(start, min(start + step, count)) for start in range(0, count, step))

    def _upload(self, embeddings: np.ndarray) -> Any:
        # Uploaded once, in float16 and in chunks: the host never holds a full float32 copy.
        device = self.xp.empty(embeddings.shape, dtype=self.xp.float16)
        for chunk in self._chunks(len(embeddings)):
            device[chunk] = self.xp.asarray(np.asarray(embeddings[chunk], dtype=np.float16))
        return device

    def _to_float32_copy(self, embeddings: np.ndarray) -> np.ndarray:
        copy = np.empty(embeddings.shape, dtype=np.float32)
        for chunk in self._chunks(len(embeddings)):
            copy[chunk] = embeddings[chunk]
        return copy

    @property
    def dim(self) -> int:
        return int(self._host.shape[1])

    def search(
        self, queries: np.ndarray, k: int, rows: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(scores (N, k) float32, indices (N, k) int64), best first; `rows` restricts the search."""
        if k < 1:
            raise MeanlocError("k must be at least 1, got {}".format(k))
        queries = check_queries(queries, self.dim)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
        convert = self._convert if self.xp is np and self._searched.dtype != np.float32 else None
        with self._lock:
            return blocked_topk(
                self.xp, self.xp.asarray(queries), self._searched, int(k), rows, self.block_rows, convert
            )

    def _convert(self, block: np.ndarray) -> np.ndarray:
        if self._buffer is None:
            self._buffer = np.empty((min(self.block_rows, len(self._host)), self.dim), dtype=np.float32)
        out = self._buffer[: len(block)]
        if self._threads == 1 or len(block) < PARALLEL_CONVERSION_MIN_ROWS:
            np.copyto(out, block)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="bank-convert")
        step = -(-len(block) // self._threads)
        parts = [slice(i, i + step) for i in range(0, len(block), step)]
        list(self._pool.map(lambda part: np.copyto(out[part], block[part]), parts))
        return out

    def close(self) -> None:
        """Stop the conversion threads (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
