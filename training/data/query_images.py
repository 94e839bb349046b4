"""Drone views as the model's queries: read the image and, for pose-aware models, rectify it with
the pose in its JSON sidecar (`meanloc.runtime.query_view` is the definition; this only finds the
pose). The synthetic generator writes a sidecar next to every drone view; University-1652 and
SUES-200 have none, so they train and evaluate with frames as captured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.rectify import CameraAttitude
from meanloc.runtime.images import read_image
from meanloc.runtime.query_view import QueryView, prepare_query


def read_view_attitude(image_path: str | Path) -> CameraAttitude:
    """The camera attitude recorded in `<image>.json`; one-line error if it is missing or bad."""
    sidecar = Path(image_path).with_suffix(".json")
    try:
        payload = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise MeanlocError(f"{image_path}: no pose sidecar {sidecar.name}; pose-aware queries need one "
                           "(datasets without poses, like University-1652, need --no-pose-aware-queries)") from None
    except (OSError, ValueError) as exc:
        raise MeanlocError(f"{sidecar}: unreadable pose sidecar ({exc})") from None
    return CameraAttitude.from_view_sidecar(payload, str(sidecar))


def read_query_image(path: str | Path, view: QueryView, size_px: int) -> np.ndarray:
    """BGR uint8 query image of one drone view file, prepared as `view` says."""
    image = read_image(path)
    attitude = read_view_attitude(path) if view.rectified else None
    return prepare_query(image, view, attitude, size_px)


def dataset_input_px(data_root: str | Path, fallback: int) -> int:
    """The network input side a synthesised dataset recommends (`meanloc data synth` chooses it by
    the orthophoto's ground resolution), or `fallback` for datasets without one."""
    try:
        payload = json.loads((Path(data_root) / "dataset.json").read_text())
        return int(payload["recommended_input_px"]["pixels"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


def dataset_query_view(data_root: str | Path, pose_aware: bool) -> QueryView:
    """Pose-aware queries are cut at the dataset's satellite tile side (from its dataset.json)."""
    if not pose_aware:
        return QueryView()
    manifest = Path(data_root) / "dataset.json"
    try:
        side = float(json.loads(manifest.read_text())["parameters"]["tile_side_m"])
    except (OSError, ValueError, KeyError, TypeError):
        raise MeanlocError(f"pose-aware queries need the tile side from {manifest} (written by `meanloc data synth`); "
                           "train real datasets with --no-pose-aware-queries") from None
    return QueryView(side)
