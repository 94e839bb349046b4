"""Compressed index of a bank for fast global search: sign codes scanned by Hamming distance, then
exact re-ranking of the nearest candidates from the float16 embeddings.

Stage 1 summarises every bank row by the signs of its centred coordinates (`row - centre`, where
`centre` is the mean row), packed 8 per byte: 96 bytes for a 768-d row, 1/16 of its float16 size.
A query is coded the same way and compared with every code by Hamming distance (FAISS's popcount
kernel when FAISS imports, numpy otherwise). The `rerank` rows nearest in Hamming distance (ties
broken by row order, so the candidate set is deterministic) go to stage 2, which scores them
exactly (float32 dot products of their float16 rows) and returns the top k. With `rerank` at or
above the bank size the search is exact.

Why sign codes (measured in bench/bench_bank_index.py, figures in bench/RESULTS.md): they need no
training, so a rebuild is byte-identical and `bank verify` recomputes them exactly; numpy alone
can scan them (FAISS is an optional accelerator, not a file format to keep compatible); and on
unstructured embeddings, where an IVF coarse quantizer or a PCA projection loses the true
neighbour, a full Hamming scan still ranks it among the first few hundred.

Files, hashed in the bank manifest's `files` and described by its `index` entry:
  index_codes.npy    (count, ceil(dim / 8)) uint8: np.packbits((row - centre) > 0) per row
  index_centre.npy   (dim,) float32: the mean of the float16 rows
Python 3.8 compatible; needs only numpy (FAISS optional).
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError

from ..artifacts import atomic_path
from .search import check_queries, sort_topk
from .store import EMBEDDINGS_FILE, open_embeddings, read_manifest, set_manifest_section

INDEX_SECTION = "index"
INDEX_KIND = "sign-codes"
INDEX_VERSION = 1
CODES_FILE = "index_codes.npy"
CENTRE_FILE = "index_centre.npy"
INDEX_FILES = (CODES_FILE, CENTRE_FILE)
# Candidates re-ranked exactly per query. At 1M x 768 the exact top-1 of a query near a bank row
# is within the first ~100 by Hamming distance (bench/bench_bank_index.py); 256 leaves margin for
# the near-duplicate neighbours of real banks (overlapping tiles, several scales).
DEFAULT_RERANK = 256
SCAN_ENGINES = ("auto", "faiss", "numpy")
_BUILD_BLOCK_ROWS = 65536
_SCAN_BLOCK_ROWS = 16384


def code_bytes(dim: int) -> int:
    return (int(dim) + 7) // 8


def sign_codes(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(n, dim) rows -> (n, ceil(dim / 8)) uint8: the coding of the bank rows and of the queries."""
    centred = np.asarray(rows, dtype=np.float32) - centre
    return np.packbits(centred > 0, axis=1)


def bank_centre(embeddings: np.ndarray, block_rows: int = _BUILD_BLOCK_ROWS) -> np.ndarray:
    """The mean row in float32, summed block by block in float64 (same order every time)."""
    total = np.zeros(embeddings.shape[1], dtype=np.float64)
    for start in range(0, embeddings.shape[0], block_rows):
        total += np.asarray(embeddings[start : start + block_rows], dtype=np.float64).sum(axis=0)
    return (total / max(1, embeddings.shape[0])).astype(np.float32)


def build_index(bank_dir: Path, block_rows: int = _BUILD_BLOCK_ROWS) -> Dict[str, Any]:
    """Write (or rewrite) the index of the bank in `bank_dir`; returns the updated manifest.

    The manifest stops describing an index before its files are replaced, so an interrupted
    build leaves a sound bank without an index, never an index that does not match."""
    bank_dir = Path(bank_dir)
    manifest = read_manifest(bank_dir)
    embeddings = open_embeddings(bank_dir, manifest)
    count, dim = embeddings.shape
    if INDEX_SECTION in manifest:
        set_manifest_section(bank_dir, INDEX_SECTION, None, INDEX_FILES)
    centre = bank_centre(embeddings, block_rows)
    with atomic_path(bank_dir / CENTRE_FILE) as tmp, open(str(tmp), "wb") as handle:
        np.save(handle, centre, allow_pickle=False)
    with atomic_path(bank_dir / CODES_FILE) as tmp:
        codes = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.uint8, shape=(count, code_bytes(dim)))
        for start in range(0, count, block_rows):
            codes[start : start + block_rows] = sign_codes(embeddings[start : start + block_rows], centre)
        codes.flush()
        del codes
    entry = {
        "kind": INDEX_KIND,
        "version": INDEX_VERSION,
        "count": int(count),
        "dim": int(dim),
        "code_bytes": code_bytes(dim),
        "codes": CODES_FILE,
        "centre": CENTRE_FILE,
        # Binds the index to these embeddings: a re-embedded bank needs a new index.
        "embeddings_sha256": manifest["files"][EMBEDDINGS_FILE]["sha256"],
    }
    return set_manifest_section(bank_dir, INDEX_SECTION, entry, INDEX_FILES)


def _entry_problems(manifest: Dict[str, Any]) -> List[str]:
    entry = manifest[INDEX_SECTION]
    if not isinstance(entry, dict):
        return ["the manifest's index entry is not an object"]
    if entry.get("kind") != INDEX_KIND or entry.get("version") != INDEX_VERSION:
        return [
            "index kind {!r} version {!r}; this meanloc reads {!r} version {}".format(
                entry.get("kind"), entry.get("version"), INDEX_KIND, INDEX_VERSION
            )
        ]
    problems = []
    expected = {"count": int(manifest["count"]), "dim": int(manifest["dim"])}
    expected["code_bytes"] = code_bytes(expected["dim"])
    for key, value in sorted(expected.items()):
        if entry.get(key) != value:
            problems.append("index {} {!r} != bank {}".format(key, entry.get(key), value))
    if entry.get("embeddings_sha256") != manifest["files"].get(EMBEDDINGS_FILE, {}).get("sha256"):
        problems.append("the index was built from other embeddings than this bank's")
    for name in INDEX_FILES:
        if name not in manifest["files"]:
            problems.append("the manifest has no hash for {}".format(name))
    return problems


def _load_index_arrays(bank_dir: Path, manifest: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    count, dim = int(manifest["count"]), int(manifest["dim"])
    arrays = []
    for name, shape, dtype in ((CODES_FILE, (count, code_bytes(dim)), np.uint8), (CENTRE_FILE, (dim,), np.float32)):
        path = bank_dir / name
        try:
            array = np.load(str(path), allow_pickle=False)
        except FileNotFoundError:
            raise ArtifactMismatchError("bank index file missing: {}".format(path)) from None
        except (OSError, ValueError) as exc:
            raise ArtifactMismatchError("cannot read bank index file {}: {}".format(path, exc)) from None
        if array.shape != shape or array.dtype != dtype:
            raise ArtifactMismatchError(
                "{} holds {} {} but the bank needs {} {}".format(path, array.shape, array.dtype, shape, np.dtype(dtype))
            )
        arrays.append(np.ascontiguousarray(array))
    if not np.all(np.isfinite(arrays[1])):
        raise ArtifactMismatchError("{} contains NaN/inf".format(bank_dir / CENTRE_FILE))
    return arrays[0], arrays[1]


def has_index(manifest: Dict[str, Any]) -> bool:
    return INDEX_SECTION in manifest


def open_index(
    bank_dir: Path,
    manifest: Dict[str, Any],
    embeddings: np.ndarray,
    rerank: int = DEFAULT_RERANK,
    scan: str = "auto",
) -> "IndexSearcher":
    """The two-stage searcher over a bank's index (ArtifactMismatchError if it is unusable)."""
    bank_dir = Path(bank_dir)
    if not has_index(manifest):
        raise MeanlocError(
            "bank {} has no search index; add one with `meanloc bank index {}`".format(bank_dir, bank_dir)
        )
    problems = _entry_problems(manifest)
    if problems:
        raise ArtifactMismatchError(
            "bank {} index: {}; rebuild it with `meanloc bank index {} --overwrite`".format(
                bank_dir, "; ".join(problems), bank_dir
            )
        )
    codes, centre = _load_index_arrays(bank_dir, manifest)
    return IndexSearcher(embeddings, codes, centre, rerank=rerank, scan=scan)


def verify_index(bank_dir: Path, manifest: Dict[str, Any], embeddings: np.ndarray) -> List[str]:
    """Problems with the bank's index (empty when sound or absent): its entry, its arrays, and its
    codes and centre recomputed from the embeddings (hashes are checked with the bank's files)."""
    if not has_index(manifest):
        return []
    problems = _entry_problems(manifest)
    if problems:
        return problems
    try:
        codes, centre = _load_index_arrays(Path(bank_dir), manifest)
    except MeanlocError as exc:
        return [str(exc)]
    if not np.array_equal(centre, bank_centre(embeddings)):
        return ["{} is not the mean of the embeddings".format(CENTRE_FILE)]
    for start in range(0, embeddings.shape[0], _BUILD_BLOCK_ROWS):
        stop = start + _BUILD_BLOCK_ROWS
        mismatch = np.flatnonzero(np.any(codes[start:stop] != sign_codes(embeddings[start:stop], centre), axis=1))
        if len(mismatch):
            return ["{} row {} does not match the embeddings".format(CODES_FILE, start + int(mismatch[0]))]
    return []


def nearest_rows(distances: np.ndarray, count: int) -> np.ndarray:
    """The `count` rows of smallest distance (ties by row order), in ascending row order."""
    if count >= len(distances):
        return np.arange(len(distances), dtype=np.int64)
    cumulative = np.cumsum(np.bincount(distances))
    threshold = int(np.searchsorted(cumulative, count))  # smallest distance reaching `count` rows
    below = np.flatnonzero(distances < threshold)
    tied = np.flatnonzero(distances == threshold)[: count - len(below)]
    return np.union1d(below, tied).astype(np.int64)


def faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


# FAISS's `hammings` is only sound for codes of 8, 16, 32 or 64 bytes in the releases Jetson's numpy
# 1.x can use (1.7.4 and 1.8.0 crash on 96-byte codes), so longer codes are scanned in such parts.
_FAISS_PART_BYTES = (64, 32, 16, 8)


class _FaissScan:
    """Hamming distances to every code with FAISS's `hammings` (SIMD popcount), summed over parts
    of the codes of 64, 32, 16 or 8 bytes (zero bytes pad a code to a multiple of 8)."""

    name = "faiss"

    def __init__(self, faiss: Any, codes: np.ndarray) -> None:
        self._faiss = faiss
        width = -(-codes.shape[1] // 8) * 8
        self._pad = width - codes.shape[1]
        self._parts = []  # type: List[Tuple[slice, np.ndarray]]
        start = 0
        while start < width:
            size = next(part for part in _FAISS_PART_BYTES if part <= width - start)
            columns = slice(start, start + size)
            padded = np.zeros((len(codes), size), dtype=np.uint8)
            real = slice(start, min(start + size, codes.shape[1]))
            padded[:, : real.stop - real.start] = codes[:, real]
            self._parts.append((columns, padded))
            start += size
        self._out = np.empty(len(codes), dtype=np.int32)
        self._part_out = np.empty(len(codes), dtype=np.int32) if len(self._parts) > 1 else self._out

    def distances(self, code: np.ndarray) -> np.ndarray:
        code = code.reshape(-1)
        if self._pad:
            code = np.concatenate([code, np.zeros(self._pad, dtype=np.uint8)])
        swig_ptr = self._faiss.swig_ptr
        for index, (columns, part) in enumerate(self._parts):
            query = np.ascontiguousarray(code[columns], dtype=np.uint8)
            out = self._out if index == 0 else self._part_out
            self._faiss.hammings(swig_ptr(query), swig_ptr(part), 1, len(part), part.shape[1], swig_ptr(out))
            if index:
                self._out += out
        return self._out

    def close(self) -> None:
        pass


# numpy < 2.0 (JetPack's) has no popcount ufunc: the classic SWAR bit count on uint64 words.
_M1, _M2, _M4, _H01 = (
    np.uint64(0x5555555555555555),
    np.uint64(0x3333333333333333),
    np.uint64(0x0F0F0F0F0F0F0F0F),
    np.uint64(0x0101010101010101),
)
_BYTE_BITS = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Bits set per row of a (n, w) uint64 or uint8 array, as int32 (the array is clobbered)."""
    bitwise_count = getattr(np, "bitwise_count", None)
    if bitwise_count is not None:
        return bitwise_count(words).sum(axis=1, dtype=np.int32)
    if words.dtype == np.uint8:
        return _BYTE_BITS[words].sum(axis=1, dtype=np.int32)
    x = words
    x -= (x >> np.uint64(1)) & _M1
    x[...] = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x += x >> np.uint64(4)
    x &= _M4
    x *= _H01
    x >>= np.uint64(56)
    return x.sum(axis=1, dtype=np.int32)


class _NumpyScan:
    """Hamming distances with numpy: XOR and popcount over 64-bit words (bytes when a code is not
    a whole number of words), in blocks spread over threads (numpy releases the GIL in ufuncs)."""

    name = "numpy"

    def __init__(self, codes: np.ndarray, threads: Optional[int] = None) -> None:
        self._words = codes.view(np.uint64) if codes.shape[1] % 8 == 0 else codes
        self._out = np.empty(len(codes), dtype=np.int32)
        count = len(codes)
        threads = max(1, int(threads or min(4, os.cpu_count() or 1)))
        step = -(-count // threads) if count else 1
        self._parts = [slice(start, min(start + step, count)) for start in range(0, count, step)]
        self._pool = ThreadPoolExecutor(len(self._parts), "bank-scan") if len(self._parts) > 1 else None

    def _scan_part(self, part: slice, query: np.ndarray) -> None:
        buffer = np.empty((min(_SCAN_BLOCK_ROWS, part.stop - part.start), self._words.shape[1]), self._words.dtype)
        for start in range(part.start, part.stop, _SCAN_BLOCK_ROWS):
            stop = min(start + _SCAN_BLOCK_ROWS, part.stop)
            block = np.bitwise_xor(self._words[start:stop], query, out=buffer[: stop - start])
            self._out[start:stop] = _popcount_rows(block)

    def distances(self, code: np.ndarray) -> np.ndarray:
        query = np.ascontiguousarray(code.reshape(-1), dtype=np.uint8).view(self._words.dtype)
        if self._pool is None:
            for part in self._parts:
                self._scan_part(part, query)
        else:
            list(self._pool.map(lambda part: self._scan_part(part, query), self._parts))
        return self._out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class IndexSearcher:
    """Two-stage global top-k over a bank: Hamming scan of the sign codes, exact re-ranking.

    `scan`: "faiss", "numpy" or "auto" (FAISS when it imports). Results have ExactSearcher's
    form and ordering (scores descending, then row index). Concurrent searches are serialised
    (the distance buffer is shared).
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        codes: np.ndarray,
        centre: np.ndarray,
        rerank: int = DEFAULT_RERANK,
        scan: str = "auto",
        threads: Optional[int] = None,
    ) -> None:
        if scan not in SCAN_ENGINES:
            raise MeanlocError("index scan must be one of {}, not {!r}".format(", ".join(SCAN_ENGINES), scan))
        if int(rerank) < 1:
            raise MeanlocError("rerank must be at least 1, got {}".format(rerank))
        self.embeddings = embeddings
        self.centre = centre
        self.rerank = int(rerank)
        self.code_bytes = int(codes.shape[1])
        self.count = int(codes.shape[0])
        faiss = None if scan == "numpy" else faiss_or_none()
        if scan == "faiss" and faiss is None:
            raise MissingDependencyError("index scan 'faiss' needs FAISS: pip install faiss-cpu (see docs/jetson.md on "
                                         "Jetson)")
        self._scan = _FaissScan(faiss, codes) if faiss is not None else _NumpyScan(codes, threads)  # type: Any
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def scan_engine(self) -> str:
        return self._scan.name

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        """Stage 1 for one float32 query: the `count` rows nearest by Hamming distance, ascending."""
        code = sign_codes(query.reshape(1, -1), self.centre)
        with self._lock:
            return nearest_rows(self._scan.distances(code), count)

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores (N, k) float32, indices (N, k) int64), best first; unfilled slots -inf / -1."""
        if k < 1:
            raise MeanlocError("k must be at least 1, got {}".format(k))
        queries = check_queries(queries, self.dim)
        all_scores, all_indices = [], []
        for query in queries:
            rows = self.candidates(query, max(self.rerank, int(k)))
            scores = np.asarray(self.embeddings[rows], dtype=np.float32) @ query
            top_scores, top_indices = sort_topk(scores[None, :], rows[None, :], int(k))
            all_scores.append(top_scores)
            all_indices.append(top_indices)
        return np.concatenate(all_scores), np.concatenate(all_indices)

    def describe(self) -> Dict[str, Any]:
        return {
            "kind": INDEX_KIND,
            "scan": self.scan_engine,
            "rerank": self.rerank,
            "code_bytes": self.code_bytes,
            "index_mb": round((self.count * self.code_bytes + self.centre.nbytes) / 1e6, 1),
        }

    def close(self) -> None:
        self._scan.close()
