"""On-disk layout of a bank, and writing / checking it.

A bank is a folder:
  embeddings.npy   (count, dim) float16, L2-normalised rows, memory-mapped on load
  tiles.npy        one metadata record per embedding row (structured array, see `tiles.py`)
  manifest.json    kind "bank": model identity, dim, count, local frame, tile sources, build
                   parameters and the sha256 of every array file. Written last: a folder
                   without it is not a bank.
Derived sections computed from a written bank (the compressed search index, `index.py`) add
their own files and an entry of the same name to the manifest (`set_manifest_section`).
Python 3.8 compatible; needs only numpy.
"""

import datetime
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from meanloc.errors import MeanlocError

from ..artifacts import (
    atomic_path,
    atomic_write_json,
    check_manifest_kind,
    ensure_writable_dir,
    new_manifest,
    read_json,
    sha256_file,
)
from ..identity import ModelIdentity
from .frame import LocalFrame
from .tiles import check_tile_dtype

BANK_KIND = "bank"
EMBEDDINGS_FILE = "embeddings.npy"
TILES_FILE = "tiles.npy"
MANIFEST_FILE = "manifest.json"
EMBEDDING_DTYPE = "float16"
# Rows are checked to be unit length within this tolerance (float16 rounding is ~1e-3).
NORM_TOLERANCE = 0.02
# Opening a bank hashes its array files when they total at most this much: sha256 ran at ~1.1 GB/s
# on a loaded 2-core EPYC (0.14 s for a 100k-tile 768-d bank); larger banks get the row check only.
HASH_AUTO_LIMIT_BYTES = 512 << 20
BANK_CHECKS = ("auto", "full", "fast")
_BANK_KEYS = ("identity", "dim", "count", "local_frame", "sources", "files")


def write_bank(
    out_dir: Path,
    embedding_parts: Iterable[np.ndarray],
    records: np.ndarray,
    sources: Sequence[Mapping[str, str]],
    identity: ModelIdentity,
    build: Mapping[str, Any],
) -> Dict[str, Any]:
    """Write a complete bank; `embedding_parts` are (n_i, dim) arrays in tile order, streamed to
    disk; `records` the tile records (ids are set here to 0..count-1); `sources` what their
    `source` field indexes ({"id", "sha256"})."""
    out_dir = ensure_writable_dir(out_dir)
    count = len(records)
    if count == 0:
        raise MeanlocError("no tiles to write: every tile was skipped (check --min-valid and the source)")
    # A stale manifest must never describe the new arrays, even if we die half way.
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.exists():
        manifest_path.unlink()
    with atomic_path(out_dir / EMBEDDINGS_FILE) as tmp:
        array = np.lib.format.open_memmap(
            str(tmp), mode="w+", dtype=np.float16, shape=(count, identity.embed_dim)
        )
        filled = 0
        for part in embedding_parts:
            array[filled : filled + len(part)] = part
            filled += len(part)
        if filled != count:
            raise MeanlocError("internal: {} embeddings for {} tiles".format(filled, count))
        array.flush()
        del array
    records = np.array(records, copy=True)
    records["id"] = np.arange(count)
    with atomic_path(out_dir / TILES_FILE) as tmp, open(str(tmp), "wb") as handle:
        np.save(handle, records, allow_pickle=False)
    frame = LocalFrame.centred_on(records["center_lat"], records["center_lon"])
    manifest = new_manifest(
        BANK_KIND,
        identity=identity.to_dict(),
        dim=identity.embed_dim,
        count=count,
        dtype=EMBEDDING_DTYPE,
        local_frame=frame.to_dict(),
        sources=[{"id": str(s["id"]), "sha256": str(s["sha256"])} for s in sources],
        files={name: {"sha256": sha256_file(out_dir / name)} for name in (EMBEDDINGS_FILE, TILES_FILE)},
        build=dict(build),
        created_utc=_created_utc(),
    )
    atomic_write_json(manifest_path, manifest)
    return manifest


def _created_utc() -> str:
    """Now, or SOURCE_DATE_EPOCH when it is set (reproducible-builds.org): builds of the same tiles
    with the same model, on one process or many, are then identical to the byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise MeanlocError("SOURCE_DATE_EPOCH must be seconds since 1970, got {!r}".format(epoch)) from None
    return when.isoformat(timespec="seconds")


def set_manifest_section(
    bank_dir: Path, name: str, entry: Optional[Mapping[str, Any]], file_names: Sequence[str]
) -> Dict[str, Any]:
    """Describe a derived part of a bank (e.g. its search index) in its manifest: `entry` under
    `name` plus the sha256 of `file_names`; with `entry` None, remove both. Rewrites manifest.json
    atomically; the embeddings and tile table are untouched. Returns the new manifest."""
    bank_dir = Path(bank_dir)
    manifest = read_manifest(bank_dir)
    if name in _BANK_KEYS:
        raise MeanlocError("internal: '{}' is not a derived section of a bank".format(name))
    files = {key: value for key, value in manifest["files"].items() if key not in file_names}
    manifest.pop(name, None)
    if entry is not None:
        manifest[name] = dict(entry)
        files.update({file_name: {"sha256": sha256_file(bank_dir / file_name)} for file_name in file_names})
    manifest["files"] = files
    atomic_write_json(bank_dir / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(bank_dir: Path) -> Dict[str, Any]:
    bank_dir = Path(bank_dir)
    if not bank_dir.is_dir():
        raise MeanlocError("bank folder not found: {}".format(bank_dir))
    path = bank_dir / MANIFEST_FILE
    if not path.exists():
        raise MeanlocError(
            "{} is not a bank (no {}; unfinished build? re-run with --resume)".format(bank_dir, MANIFEST_FILE)
        )
    manifest = read_json(path, "bank manifest")
    check_manifest_kind(manifest, BANK_KIND, str(path))
    for key in _BANK_KEYS:
        if key not in manifest:
            raise MeanlocError("bank manifest {} lacks '{}'".format(path, key))
    return manifest


def manifest_identity(manifest: Mapping[str, Any]) -> ModelIdentity:
    return ModelIdentity.from_dict(manifest["identity"])


def manifest_frame(manifest: Mapping[str, Any]) -> LocalFrame:
    frame = manifest["local_frame"]
    try:
        return LocalFrame(float(frame["lat0"]), float(frame["lon0"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MeanlocError("bank manifest has an invalid local frame: {}".format(exc)) from None


def open_embeddings(bank_dir: Path, manifest: Mapping[str, Any]) -> np.ndarray:
    """Memory-map the embeddings and check their shape and dtype against the manifest."""
    path = Path(bank_dir) / EMBEDDINGS_FILE
    array = _load_array(path, "bank embeddings")
    expected = (int(manifest["count"]), int(manifest["dim"]))
    if array.dtype != np.float16 or array.shape != expected:
        raise MeanlocError(
            "bank {} is damaged: {} holds {} {} but its manifest says {} float16 (rebuild the bank)".format(
                Path(bank_dir), path.name, array.shape, array.dtype, expected)
        )
    return array


def first_bad_row(embeddings: np.ndarray, block_rows: int = 4096) -> Optional[str]:
    """What is wrong with the first row that is not finite and unit length; None if every row is sound."""
    for start in range(0, embeddings.shape[0], block_rows):
        block = np.asarray(embeddings[start : start + block_rows], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)  # NaN and inf fail the comparison too
        if np.any(bad):
            row = start + int(np.argmax(bad))
            if not np.all(np.isfinite(embeddings[row])):
                return "embedding row {} holds NaN/inf".format(row)
            return "embedding row {} has norm {:.3f}, not 1".format(row, float(norms[row - start]))
    return None


def check_bank_integrity(bank_dir: Path, manifest: Mapping[str, Any], embeddings: np.ndarray,
                         check: str = "auto") -> None:
    """Refuse a damaged bank in one line: every row must be finite and unit length, and (`full`, or
    `auto` below HASH_AUTO_LIMIT_BYTES) every array file must still have its manifest's sha256."""
    if check not in BANK_CHECKS:
        raise MeanlocError("bank check must be one of {}, not {!r}".format(", ".join(BANK_CHECKS), check))
    bank_dir = Path(bank_dir)
    files = sorted(manifest["files"].items())
    if check == "full" or (check == "auto" and sum(_size(bank_dir / name) for name, _ in files) <= HASH_AUTO_LIMIT_BYTES):
        for name, entry in files:
            if sha256_file(bank_dir / name) != entry.get("sha256"):
                raise MeanlocError(
                    "bank {} is damaged: {} no longer has the sha256 its manifest records (modified or corrupted); "
                    "rebuild it (`meanloc bank verify {}` lists every problem)".format(bank_dir, name, bank_dir)
                )
    problem = first_bad_row(embeddings)
    if problem:
        raise MeanlocError("bank {} is damaged: {} (`meanloc bank verify {}` lists every problem)".format(
            bank_dir, problem, bank_dir))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def open_tiles(bank_dir: Path, manifest: Mapping[str, Any]) -> np.ndarray:
    """Memory-map the tile records and check their layout and count against the manifest."""
    path = Path(bank_dir) / TILES_FILE
    records = _load_array(path, "bank tile table")
    try:
        check_tile_dtype(records.dtype)
    except ValueError as exc:
        raise MeanlocError("{} is not a meanloc tile table: {}".format(path, exc)) from None
    if records.shape != (int(manifest["count"]),):
        raise MeanlocError("bank {} is damaged: {} holds {} tiles but the manifest says {}".format(
            Path(bank_dir), path.name, records.shape, manifest["count"]))
    return records


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(str(path), mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise MeanlocError("{} not found: {}".format(what, path)) from None
    except (OSError, ValueError) as exc:
        raise MeanlocError("cannot read {} {}: {}".format(what, path, exc)) from None
