"""Satellite embedding bank: tiles cut from an orthophoto (or given as files), their float16
embeddings, metadata and manifest; exact top-k cosine search with an optional geographic window.

Search needs only numpy. Building imports tqdm, OpenCV and pyproj/rasterio lazily, so importing
this package on board costs nothing extra.
"""

from .bank import Margin, SatelliteBank, SearchWindow
from .build import BuildResult, build_bank, build_bank_from_orthophoto, build_bank_from_tiles
from .frame import LocalFrame
from .merge import merge_banks
from .search import ExactSearcher, FaissSearcher
from .store import verify_bank
from .tiling import FileTileSource, OrthophotoTileSource

__all__ = [
    "BuildResult",
    "ExactSearcher",
    "FaissSearcher",
    "FileTileSource",
    "LocalFrame",
    "Margin",
    "OrthophotoTileSource",
    "SatelliteBank",
    "SearchWindow",
    "build_bank",
    "build_bank_from_orthophoto",
    "build_bank_from_tiles",
    "merge_banks",
    "verify_bank",
]
