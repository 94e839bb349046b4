"""`meanloc bank merge`: concatenate banks of one model into one bank with fresh tile ids.

Banks are merged only when their embeddings are comparable: same weights, dimension and
preprocessing (ModelIdentity.check_compatible) and the same precision, since the merged manifest
states one identity. Python 3.8 compatible.
"""

from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError

from .feature_build import merge_feature_layers, unmergeable_reason
from .index import build_index
from .store import (
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    check_bank_integrity,
    manifest_identity,
    open_embeddings,
    open_tiles,
    read_manifest,
    write_bank,
)
from .tiles import concatenate_records


def merge_banks(bank_dirs: Sequence[Path], out_dir: Path, index: bool = True) -> Dict[str, Any]:
    """Merge `bank_dirs` (in order) into `out_dir` (with a fresh search index unless `index` is
    False); returns the new manifest."""
    if len(bank_dirs) < 2:
        raise MeanlocError("merge needs at least two banks")
    bank_dirs = [Path(d) for d in bank_dirs]
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == d.resolve() for d in bank_dirs):
        raise MeanlocError("--out must not be one of the banks being merged")
    if (out_dir / MANIFEST_FILE).exists():
        raise MeanlocError("{} already holds a bank; choose another --out".format(out_dir))
    manifests = [read_manifest(d) for d in bank_dirs]
    identities = [manifest_identity(m) for m in manifests]
    first = identities[0]
    for directory, identity in zip(bank_dirs[1:], identities[1:]):
        what = "cannot merge {} into {}".format(directory, bank_dirs[0])
        first.check_compatible(identity, what)
        if identity.precision != first.precision:
            raise ArtifactMismatchError(
                "{}: embeddings computed at different precision ({} vs {}); rebuild one bank".format(
                    what, identity.precision, first.precision
                )
            )
    # Sources are pooled (deduplicated by id and hash); each bank's source indices are remapped.
    sources = []  # type: list
    record_parts = []
    for directory, manifest in zip(bank_dirs, manifests):
        remap = np.array([_source_slot(sources, s) for s in manifest["sources"]], dtype=np.int32)
        records = np.array(open_tiles(directory, manifest))
        records["source"] = remap[records["source"]]
        record_parts.append(records)
    build = {
        "type": "merge",
        "merged_from": [
            {
                "path": str(d),
                "count": int(m["count"]),
                "embeddings_sha256": m["files"][EMBEDDINGS_FILE]["sha256"],
                "artifact_sha256": m["identity"].get("artifact_sha256"),
                "build": m.get("build", {}),
            }
            for d, m in zip(bank_dirs, manifests)
        ],
    }
    # Local-feature layers merge too when every input has one, extracted alike.
    unmergeable = unmergeable_reason(manifests)
    build["local_features"] = "merged" if unmergeable is None else unmergeable
    embeddings = [open_embeddings(d, m) for d, m in zip(bank_dirs, manifests)]
    for directory, manifest, array in zip(bank_dirs, manifests, embeddings):
        check_bank_integrity(directory, manifest, array)  # never copy damage into a new bank
    manifest = write_bank(out_dir, embeddings, concatenate_records(record_parts), sources, first, build)
    if unmergeable is None:
        merge_feature_layers(bank_dirs, manifests, out_dir)
        manifest = read_manifest(out_dir)
    return build_index(out_dir) if index else manifest


def _source_slot(sources: list, source: Dict[str, str]) -> int:
    entry = {"id": source["id"], "sha256": source["sha256"]}
    if entry not in sources:
        sources.append(entry)
    return sources.index(entry)
