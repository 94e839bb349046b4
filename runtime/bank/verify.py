"""`meanloc bank verify`: every problem of a written bank, its derived sections included.

It checks the arrays and manifest (`store.py`), the local-feature layer (`feature_layer.py`) and the
search index (`index.py`), so it sits above all three. Python 3.8 compatible; needs only numpy.
"""

from pathlib import Path
from typing import List

import numpy as np

from meanloc.errors import MeanlocError

from ..artifacts import sha256_file
from .feature_layer import has_layer, verify_layer
from .index import verify_index
from .store import TILES_FILE, first_bad_row, manifest_identity, open_embeddings, open_tiles, read_manifest


def verify_bank(bank_dir: Path) -> List[str]:
    """Every problem found (empty list = sound): hashes, shapes, table consistency, unit norms."""
    bank_dir = Path(bank_dir)
    manifest = read_manifest(bank_dir)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        path = bank_dir / name
        if not path.exists():
            problems.append("{} is missing".format(name))
        elif sha256_file(path) != entry.get("sha256"):
            problems.append("{} sha256 differs from the manifest (corrupted or modified)".format(name))
    try:
        manifest_identity(manifest)
        embeddings = open_embeddings(bank_dir, manifest)
        records = open_tiles(bank_dir, manifest)
    except MeanlocError as exc:
        return [*problems, str(exc)]
    if int(manifest["identity"]["embed_dim"]) != embeddings.shape[1]:
        problems.append(
            "identity embed_dim {} != array dim {}".format(
                manifest["identity"]["embed_dim"], embeddings.shape[1]
            )
        )
    problem = first_bad_row(embeddings)
    if problem:
        problems.append(problem)
    if not np.array_equal(records["id"], np.arange(len(records))):
        problems.append("{} ids are not 0..count-1 in order".format(TILES_FILE))
    sources = np.asarray(records["source"])
    if len(sources) and (sources.min() < 0 or sources.max() >= len(manifest["sources"])):
        problems.append("{} refers to tile sources missing from the manifest".format(TILES_FILE))
    if not (np.all(np.abs(records["center_lat"]) <= 90) and np.all(np.abs(records["center_lon"]) <= 180)):
        problems.append("{} has tile centres outside valid lat/lon".format(TILES_FILE))
    if has_layer(manifest):
        problems.extend(verify_layer(bank_dir, manifest))
    return problems + verify_index(bank_dir, manifest, embeddings)
