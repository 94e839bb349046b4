"""Test helpers for the fine stage (not a test module): a small two-date synthetic world, a bank
with a local-feature layer built by the real builder, and oblique frames rendered from the second
date with their true look-at point in the bank's frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from localize_support import PoolingBackend

from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.bank.build import build_bank_from_orthophoto
from meanloc.runtime.bank.feature_build import LayerParams
from meanloc.runtime.geo.camera import CameraIntrinsics, Pose
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.geo.rectify import CameraAttitude
from meanloc.runtime.sim.appearance import apply_appearance
from meanloc.runtime.sim.render import render_view
from meanloc.training.data.synth.world import WorldSpec, generate_world_pair

CAMERA = CameraIntrinsics(640, 480, 70.0)
WORLD_M = 1400.0
DEFAULT_LAYER = LayerParams()


def write_world_pair(folder: Path, seed: int = 3) -> tuple[Path, Path]:
    """(date-1 GeoTIFF for the bank, date-2 GeoTIFF for the drone) of one synthetic town."""
    date1, date2 = generate_world_pair(WorldSpec(seed=seed, width_m=WORLD_M, height_m=WORLD_M, gsd_m=1.0))
    paths = folder / "date1.tif", folder / "date2.tif"
    date1.save_geotiff(paths[0])
    date2.save_geotiff(paths[1])
    return paths


def build_feature_bank(ortho_path: Path, out: Path, params: LayerParams | None = DEFAULT_LAYER) -> Path:
    """A bank of 200 m tiles (stand-in embedder) with the local-feature layer `params`."""
    build_bank_from_orthophoto(ortho_path, PoolingBackend(size=32, dim=64), out, tile_m=200.0, overlap=0.5,
                               local_features=params, progress=False)
    return out


def oblique_frame(drone: Orthophoto, bank: SatelliteBank, xy_crs: tuple[float, float], yaw_deg: float,
                  altitude_m: float = 200.0, pitch_deg: float = 40.0, seed: int = 0):
    """(BGR frame rendered from `drone` looking at `xy_crs`, its true attitude, the look-at point
    in the bank's local frame)."""
    pose = Pose(xy_crs, altitude_m, pitch_deg, yaw_deg)
    view = render_view(drone, CAMERA, pose)
    image, _ = apply_appearance(view.image_bgr, np.random.default_rng(seed), view.valid_mask)
    lon, lat = drone.world_to_lonlat(*xy_crs)
    x, y = bank.frame.to_xy(lat, lon)
    return image, CameraAttitude(altitude_m, pitch_deg, yaw_deg, CAMERA.hfov_deg), (float(x), float(y))
