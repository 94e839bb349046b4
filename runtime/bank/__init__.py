"""Satellite embedding bank: tiles cut from an orthophoto (or given as files), their float16
embeddings, metadata and manifest, and a compressed search index; top-k cosine search, global
(two-stage through the index on large banks, exact otherwise) or in a geographic window (exact).

Search needs only numpy. Building imports tqdm, OpenCV and pyproj/rasterio lazily, so importing
this package on board costs nothing extra.
"""

from .bank import Margin, SatelliteBank, SearchWindow
from .build import BuildResult, build_bank, build_bank_from_orthophoto, build_bank_from_tiles
from .frame import LocalFrame
from .index import IndexSearcher, build_index
from .merge import merge_banks
from .search import ExactSearcher
from .tiling import FileTileSource, OrthophotoTileSource
from .verify import verify_bank

__all__ = [
    "BuildResult",
    "ExactSearcher",
    "FileTileSource",
    "IndexSearcher",
    "LocalFrame",
    "Margin",
    "OrthophotoTileSource",
    "SatelliteBank",
    "SearchWindow",
    "build_bank",
    "build_bank_from_orthophoto",
    "build_bank_from_tiles",
    "build_index",
    "merge_banks",
    "verify_bank",
]
