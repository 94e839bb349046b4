"""`SatelliteBank`: a bank opened for search (memory-mapped embeddings, tile table, identity).

Global searches of banks of INDEX_MIN_TILES tiles or more go through the bank's compressed index
(two stages: Hamming scan of sign codes, exact re-ranking; `index.py`); smaller banks and every
windowed search are searched exactly (`search.py`).
Python 3.8 compatible; needs only numpy (CuPy / FAISS optional).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from meanloc.errors import MeanlocError

from ..identity import ModelIdentity
from .feature_layer import FeatureLayer, has_layer
from .index import DEFAULT_RERANK, has_index, open_index
from .search import DEFAULT_BLOCK_ROWS, ExactSearcher
from .store import (
    check_bank_integrity,
    manifest_frame,
    manifest_identity,
    open_embeddings,
    open_tiles,
    read_manifest,
)
from .tiles import TileTable

# Banks up to this float32 size (1 GiB: ~350k tiles at 768-d) are kept in RAM as float32 by default
# when their global searches are exact.
FLOAT32_AUTO_LIMIT_BYTES = 1 << 30
# engine="auto" searches banks of at least this many tiles through their index: below it an exact
# single-query search takes under ~15 ms on 2 cores and exactness costs nothing
# (bench/bench_bank_index.py); above it the exact search grows linearly, the index barely.
INDEX_MIN_TILES = 20000
SEARCH_ENGINES = ("auto", "exact", "index")


@dataclass(frozen=True)
class SearchWindow:
    """Search only tiles whose centres lie within `radius_m` of a prior, given as lat/lon or as
    x/y metres in the bank's local frame (`bank.tiles.x`, `bank.tiles.y`)."""

    radius_m: float
    lat: Optional[float] = None
    lon: Optional[float] = None
    x: Optional[float] = None
    y: Optional[float] = None

    def __post_init__(self) -> None:
        has_latlon = self.lat is not None and self.lon is not None
        has_xy = self.x is not None and self.y is not None
        if has_latlon == has_xy:
            raise MeanlocError("a search window needs either lat/lon or x/y, not both or neither")
        if not (self.radius_m > 0 and np.isfinite(self.radius_m)):
            raise MeanlocError("search window radius must be > 0 metres, got {}".format(self.radius_m))


@dataclass(frozen=True)
class Margin:
    """Confidence: top-1 score over the best tile that does not overlap the top-1 tile."""

    top_index: int
    top_score: float
    runner_up_index: int  # -1 if every searched tile is adjacent to the top-1
    runner_up_score: float
    margin: float


class SatelliteBank:
    def __init__(
        self,
        directory: Path,
        manifest: Dict[str, Any],
        embeddings: np.ndarray,
        tiles: TileTable,
        searcher: Any,
        exact: Optional[ExactSearcher] = None,
        features: Optional[FeatureLayer] = None,
    ) -> None:
        """`searcher` serves global searches; `exact` (default: `searcher` if it is an
        ExactSearcher, else a CPU one) serves windowed ones."""
        self.directory = directory
        self.manifest = manifest
        self.embeddings = embeddings
        self.tiles = tiles
        self.identity = manifest_identity(manifest)
        self.frame = tiles.frame
        self.features = features  # the local-feature layer for geometric verification, if built
        self._searcher = searcher
        if exact is None:
            exact = searcher if isinstance(searcher, ExactSearcher) else ExactSearcher(embeddings, device="cpu")
        self._exact = exact

    @classmethod
    def open(
        cls,
        directory: Union[str, Path],
        expected_identity: Optional[ModelIdentity] = None,
        device: str = "auto",
        engine: str = "auto",
        scan: str = "auto",
        rerank: int = DEFAULT_RERANK,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        float32_in_memory: Optional[bool] = None,
        check: str = "auto",
    ) -> "SatelliteBank":
        """Open a bank; with `expected_identity` (the model's) refuse a bank from other weights,
        dimension or preprocessing (ArtifactMismatchError).

        engine (global searches): "index" (two-stage search over the bank's compressed index:
        Hamming scan with `scan` = "faiss", "numpy" or "auto", then exact re-ranking of `rerank`
        candidates), "exact" (blocked brute force, on CuPy when `device` allows) or "auto" (the
        index for banks that have one and at least INDEX_MIN_TILES tiles). `float32_in_memory`
        trades twice the bank size in RAM for faster exact global CPU searches (see
        `ExactSearcher`); None (default) turns it on when global searches are exact and the
        float32 copy fits in FLOAT32_AUTO_LIMIT_BYTES, because per-query float16 -> float32
        conversion dominates a single-frame search (bench/bench_bank_search.py).

        A damaged bank is refused in one line (`store.check_bank_integrity`): every row must be finite
        and unit length, and with `check` "auto" (small banks) or "full" the files must match their
        manifest's sha256; "fast" skips the hashes.
        """
        if engine not in SEARCH_ENGINES:
            raise MeanlocError(
                "search engine must be one of {}, not {!r}".format(", ".join(SEARCH_ENGINES), engine)
            )
        directory = Path(directory)
        manifest = read_manifest(directory)
        identity = manifest_identity(manifest)
        if expected_identity is not None:
            expected_identity.check_compatible(identity, "bank {} vs model".format(directory))
        embeddings = open_embeddings(directory, manifest)
        check_bank_integrity(directory, manifest, embeddings, check)
        tiles = TileTable(open_tiles(directory, manifest), manifest["sources"], manifest_frame(manifest))
        if engine == "auto":
            engine = "index" if has_index(manifest) and len(embeddings) >= INDEX_MIN_TILES else "exact"
        if engine == "index":
            searcher = open_index(directory, manifest, embeddings, rerank=rerank, scan=scan)  # type: Any
            # Windows hold few tiles: they are searched from the float16 rows directly.
            float32_in_memory = bool(float32_in_memory)
        elif float32_in_memory is None:
            float32_in_memory = embeddings.shape[0] * embeddings.shape[1] * 4 <= FLOAT32_AUTO_LIMIT_BYTES
        exact = ExactSearcher(embeddings, device=device, block_rows=block_rows, float32_in_memory=float32_in_memory)
        if engine == "exact":
            searcher = exact
        features = FeatureLayer.open(directory, manifest) if has_layer(manifest) else None
        return cls(directory, manifest, embeddings, tiles, searcher, exact, features)

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def device(self) -> str:
        return getattr(self._searcher, "device", "cpu")

    def window_rows(self, window: SearchWindow) -> np.ndarray:
        """Ascending row indices of the tiles inside the window (a cheap mask on precomputed x/y)."""
        if window.lat is not None:
            x, y = self.frame.to_xy(window.lat, window.lon)
        else:
            x, y = window.x, window.y
        dx = self.tiles.x - float(x)
        dy = self.tiles.y - float(y)
        return np.flatnonzero(dx * dx + dy * dy <= float(window.radius_m) ** 2).astype(np.int64)

    def search(
        self, queries: np.ndarray, k: int, window: Optional[SearchWindow] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k cosine: (scores (N, k) float32, indices (N, k) int64), best first. Queries must be
        L2-normalised. Slots beyond the searched tiles hold score -inf and index -1."""
        if window is None:
            return self._searcher.search(queries, k)
        return self._exact.search(queries, k, rows=self.window_rows(window))

    def margin(
        self,
        query: np.ndarray,
        scores: np.ndarray,
        indices: np.ndarray,
        exclude_m: Optional[float] = None,
        window: Optional[SearchWindow] = None,
    ) -> Margin:
        """Margin of the top-1 over the best tile whose centre is farther than `exclude_m` (default:
        the top-1 tile's side) from the top-1 centre. Overlapping neighbours score almost as high
        as the top-1, so they say nothing about ambiguity and are excluded.

        `scores`/`indices` are one query's row from `search` (same window); the runner-up is taken
        from them when possible, otherwise found by one more search of the same kind.
        """
        top = int(indices[0])
        if top < 0:
            raise MeanlocError("margin needs a search result with at least one tile")
        radius = float(self.tiles.side_m[top]) if exclude_m is None else float(exclude_m)
        far = self._far_from(top, np.asarray(indices), radius)
        if np.any(far):
            first = int(np.argmax(far))
            return _margin(top, float(scores[0]), int(indices[first]), float(scores[first]))
        rows = None if window is None else self.window_rows(window)
        candidates = np.arange(self.count) if rows is None else rows
        n_near = int(np.count_nonzero(~self._far_from(top, candidates, radius)))
        if rows is None:
            more_scores, more_indices = self._searcher.search(query, n_near + 1)
        else:
            more_scores, more_indices = self._exact.search(query, n_near + 1, rows=rows)
        far = self._far_from(top, more_indices[0], radius)
        if not np.any(far):
            return _margin(top, float(scores[0]), -1, float("-inf"))
        first = int(np.argmax(far))
        return _margin(top, float(scores[0]), int(more_indices[0, first]), float(more_scores[0, first]))

    def _far_from(self, top: int, rows: np.ndarray, radius: float) -> np.ndarray:
        valid = rows >= 0
        safe = np.where(valid, rows, top)
        dist2 = (self.tiles.x[safe] - self.tiles.x[top]) ** 2 + (self.tiles.y[safe] - self.tiles.y[top]) ** 2
        return valid & (dist2 > radius * radius)

    def close(self) -> None:
        """Release search threads and device memory (the memory map closes with the object)."""
        for searcher in {id(self._searcher): self._searcher, id(self._exact): self._exact}.values():
            searcher.close()

    def __enter__(self) -> "SatelliteBank":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> Dict[str, Any]:
        return {
            "path": str(self.directory),
            "count": self.count,
            "dim": self.dim,
            "device": self.device,
            "global_search": self._searcher.describe() if hasattr(self._searcher, "describe") else "exact",
            "identity": self.identity.to_dict(),
            "local_frame": self.frame.to_dict(),
            "local_features": None if self.features is None else self.features.describe(),
        }


def _margin(top: int, top_score: float, runner: int, runner_score: float) -> Margin:
    return Margin(top, top_score, runner, runner_score, top_score - runner_score)
