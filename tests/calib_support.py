"""Test helpers for the calibration and precision-report tests (not a test module).

A mean-nano ONNX exported with the real exporter (random weights, fixed seed) and tiny image
trees written with OpenCV: a plain folder with sub-folders, and a University-1652-layout dataset
whose drone views are noisy copies of their class's satellite tile, so retrieval is non-trivial
but learnable-free.
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from meanloc.export.onnx_export import ExportResult, export_model_onnx
from meanloc.export.parity import synthetic_aerial_image
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.query_view import QueryView
from meanloc.training.model import build_model, resolve_config


def export_nano_onnx(path: Path, seed: int = 0, query_view: QueryView | None = None) -> ExportResult:
    torch.manual_seed(seed)
    view = query_view or QueryView()
    config = resolve_config("mean-nano", query_ground_side_m=view.ground_side_m)
    identity = ModelIdentity(
        checkpoint_sha256=f"{seed:064x}",
        preset="mean-nano",
        embed_dim=config.embed_dim,
        preprocess=PreprocessSpec(size=config.img_size),
        query_view=view,
    )
    return export_model_onnx(build_model(config), identity, path, parity=False)


def write_folder_tree(root: Path, strata: dict[str, int], size: int = 72, seed: int = 0) -> list[Path]:
    """`root/<stratum>/<i>.png` images, `strata` maps sub-folder -> number of images."""
    rng = np.random.default_rng(seed)
    written = []
    for name, count in strata.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            path = folder / f"{index}.png"
            cv2.imwrite(str(path), synthetic_aerial_image(rng, size))
            written.append(path)
    return written


def _noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-25, 26, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_university_tree(
    root: Path, classes: int = 4, drones: int = 3, size: int = 72, seed: int = 0
) -> Path:
    """train/{drone,satellite} and val/{query_drone,gallery_satellite}, `classes` per split."""
    rng = np.random.default_rng(seed)
    for split, (drone_view, satellite_view) in {
        "train": ("drone", "satellite"),
        "val": ("query_drone", "gallery_satellite"),
    }.items():
        for class_index in range(classes):
            class_id = f"{class_index:04d}"
            tile = synthetic_aerial_image(rng, size)
            (root / split / satellite_view / class_id).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / split / satellite_view / class_id / f"{class_id}.png"), tile)
            (root / split / drone_view / class_id).mkdir(parents=True, exist_ok=True)
            for index in range(drones):
                cv2.imwrite(
                    str(root / split / drone_view / class_id / f"image-{index + 1:02d}.png"),
                    _noisy(tile, rng),
                )
    return root
