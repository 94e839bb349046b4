"""Test helpers for the localization-loop tests (not a test module).

A tiny textured "world" image in a local metric frame, a deterministic numpy stand-in backend
(so retrieval really works and positions can be checked without a trained network), banks
built with the real bank builder from a tile folder, and a mean-nano ONNX export for real-ONNX-Runtime tests.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.bank.build import build_bank_from_tiles
from meanloc.runtime.bank.frame import LocalFrame
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec

LAT0, LON0 = 47.0, 8.0
WORLD_PX = 480  # 1 m per pixel, centred on (LAT0, LON0); x east, y north
TILE_M = 64
STRIDE_M = 32


def world_image(seed: int = 0) -> np.ndarray:
    """Smooth random texture (BGR uint8): distinct everywhere at the tile scale."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, size=(WORLD_PX // 32, WORLD_PX // 32, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (WORLD_PX, WORLD_PX), interpolation=cv2.INTER_CUBIC)
    fine = rng.randint(0, 12, size=image.shape).astype(np.uint8)
    return cv2.add(image, fine)


def crop(world: np.ndarray, x: float, y: float, side_m: int) -> np.ndarray:
    """Square crop centred on local metres (x east, y north)."""
    col = round(WORLD_PX / 2 + x)
    row = round(WORLD_PX / 2 - y)
    half = side_m // 2
    return np.ascontiguousarray(world[row - half : row + half, col - half : col + half])


class PoolingBackend(EmbeddingBackend):
    """Average-pools the preprocessed image to 8x8 and projects it: a deterministic embedder."""

    name = "numpy-test"

    def __init__(self, size: int = 32, dim: int = 192, checkpoint: str = "stand-in") -> None:
        self.identity = ModelIdentity(checkpoint, "test", dim, PreprocessSpec(size=size))
        self.projection = np.random.RandomState(1).randn(3 * 64, dim).astype(np.float32)
        self.nan_frames: Sequence[int] = ()
        self.calls = 0

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        n, c, s, _ = batch.shape
        pooled = batch.reshape(n, c, 8, s // 8, 8, s // 8).mean(axis=(3, 5)).reshape(n, -1)
        pooled = pooled - pooled.mean(axis=1, keepdims=True)
        out = l2_normalise(pooled @ self.projection)
        self.calls += 1
        if self.calls in self.nan_frames:
            out[:] = np.nan
        return out


def grid_centres() -> list[tuple[float, float]]:
    limit = WORLD_PX / 2 - TILE_M / 2
    steps = np.arange(-limit, limit + 1e-6, STRIDE_M)
    return [(float(x), float(y)) for y in steps[::-1] for x in steps]


def write_tile_list(folder: Path, centres: Sequence[tuple[float, float]], tiles: Sequence[np.ndarray],
                    side_m: float) -> Path:
    """Tile images plus the CSV of centres and corners that `meanloc bank build` reads."""
    frame = LocalFrame(LAT0, LON0)
    folder.mkdir(parents=True, exist_ok=True)
    half = side_m / 2
    with open(folder / "tiles.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "center_lat", "center_lon", "tl_lat", "tl_lon", "tr_lat", "tr_lon",
                         "br_lat", "br_lon", "bl_lat", "bl_lon", "gsd"])
        for i, ((x, y), tile) in enumerate(zip(centres, tiles)):
            cv2.imwrite(str(folder / f"t{i:04d}.png"), tile)
            lat, lon = frame.to_latlon(np.array([x, x - half, x + half, x + half, x - half]),
                                       np.array([y, y + half, y + half, y - half, y - half]))
            corners = [v for k in range(1, 5) for v in (lat[k], lon[k])]
            writer.writerow([f"t{i}", f"t{i:04d}.png", lat[0], lon[0], *corners, 1.0])
    return folder / "tiles.csv"


def build_world_bank(folder: Path, backend: EmbeddingBackend, world: np.ndarray) -> Path:
    """A bank of 64 m tiles every 32 m over the world, built by the real bank builder."""
    centres = grid_centres()
    tile_list = write_tile_list(folder / "tiles", centres, [crop(world, x, y, TILE_M) for x, y in centres], TILE_M)
    build_bank_from_tiles(folder / "tiles", tile_list, backend, folder / "bank", progress=False)
    return folder / "bank"


def to_lonlat(x: float, y: float) -> tuple[float, float]:
    lat, lon = LocalFrame(LAT0, LON0).to_latlon(x, y)
    return float(lon), float(lat)


def track(n: int, speed: float = 6.0) -> list[tuple[float, float]]:
    """A straight diagonal track inside the world, `speed` metres per frame."""
    start = -WORLD_PX / 2 + TILE_M
    return [(start + speed * i * 0.8, start + speed * i * 0.6) for i in range(n)]


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), f"cv2.VideoWriter could not open {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def export_nano_onnx(path: Path) -> Path:
    """A random-init mean-nano embedder exported with torch.onnx, with meanloc metadata props."""
    import onnx
    import torch

    from meanloc.training.model import build_model, resolve_config

    torch.manual_seed(0)
    config = resolve_config("mean-nano")
    embedder = build_model(config).embedder().eval()
    size = config.img_size
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is what TensorRT 8.5 parses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(embedder, torch.zeros(1, 3, size, size), str(path), input_names=["images"],
                          output_names=["embedding"], dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    identity = ModelIdentity("nano-test-weights", "mean-nano", config.embed_dim, PreprocessSpec(size=size))
    for key, value in identity.to_onnx_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path
