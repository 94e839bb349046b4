"""`meanloc bank build` under torchrun: 2 CPU processes (real `torch.distributed.run`, as a user
launches it) build disjoint shards, rank 0 assembles and verifies, and the bank is byte-identical
to a one-process build: embeddings, tile table, index and, with SOURCE_DATE_EPOCH, the manifest.
A build interrupted in one process is finished by two, reusing the shards already made.

The ranks share no process group (the bank CLI never imports torch): rank 0 waits for the other
ranks' shard completion marks (runtime/bank/sharding.py).
"""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from meanloc.export.onnx_export import export_onnx
from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank import OrthophotoTileSource, build_bank
from meanloc.runtime.bank.build import SHARDS_DIR
from meanloc.runtime.bank.feature_build import SHARDS_DIR as FEATURE_SHARDS_DIR
from meanloc.runtime.bank.sharding import Ranks
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.training.checkpoint import save_checkpoint
from meanloc.training.model import build_model, resolve_config

EPOCH = "1767225600"  # 2026-01-01: fixes the manifest's creation time in every build below
TILE = {"tile_m": 100.0, "overlap": 0.5, "scales": (1.0,), "min_valid": 0.5}
SHARD_SIZE, BATCH = 6, 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    image = cv2.resize(small, (500, 400), interpolation=cv2.INTER_CUBIC)  # 1000 m x 800 m at 2 m/px
    transform = np.array([[2.0, 0.0, 500000.0], [0.0, -2.0, 5150400.0], [0.0, 0.0, 1.0]])
    geotiff = folder / "area.tif"
    Orthophoto(image, transform, "EPSG:32632").save_geotiff(geotiff)
    torch.manual_seed(0)
    config = resolve_config("mean-nano")
    save_checkpoint(folder / "nano.pt", build_model(config).eval(), config)
    onnx = export_onnx(folder / "nano.pt", folder / "nano.onnx", simplify=False, parity=False).path
    return geotiff, onnx


def _build_command(assets, out, *extra):
    geotiff, onnx = assets
    return [
        "-m", "meanloc", "bank", "build", "--model", str(onnx), "--orthophoto", str(geotiff), "--out", str(out),
        "--tile-m", str(TILE["tile_m"]), "--shard-size", str(SHARD_SIZE), "--batch", str(BATCH), "--no-progress",
        *extra,
    ]


def _run(argv, distributed=False):
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    prefix = [sys.executable]
    if distributed:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(prefix + argv, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _files(folder):
    """Every file of a bank folder (its local-feature layer in `features/` too), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def single(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "bank"
    _run(_build_command(assets, out))
    return out


def test_two_ranks_build_the_same_bank_to_the_byte(assets, single, tmp_path):
    out = tmp_path / "bank"
    stdout = _run(_build_command(assets, out), distributed=True)
    assert "rank 1/2: shards built" in stdout and "rank 1/2: shards built 0" not in stdout
    expected = _files(single)
    assert set(expected) == {"embeddings.npy", "tiles.npy", "index_codes.npy", "index_centre.npy", "manifest.json",
                             "features/keypoints.npy", "features/descriptors.npy", "features/cells.npy"}
    assert _files(out) == expected  # the local features were extracted by both ranks, row by row
    assert not (out / SHARDS_DIR).exists() and not (out / FEATURE_SHARDS_DIR).exists()


def test_a_build_interrupted_in_one_process_is_finished_by_two(assets, single, tmp_path):
    out = tmp_path / "bank"
    geotiff, onnx = assets
    with open_backend(str(onnx), threads=1) as real:
        crashing = _CrashAfter(real, batches=3)
        source = OrthophotoTileSource(Orthophoto.from_geotiff(geotiff), tile_px=real.identity.preprocess.size, **TILE)
        with pytest.raises(RuntimeError, match="simulated crash"):
            build_bank(source, crashing, out, batch=BATCH, shard_size=SHARD_SIZE, progress=False, ranks=Ranks())
    finished = sorted(p.name for p in (out / SHARDS_DIR).glob("0*.json"))
    assert finished and not (out / "manifest.json").exists()
    stdout = _run(_build_command(assets, out, "--resume"), distributed=True)
    assert "reused" in stdout
    assert _files(out) == _files(single)


class _CrashAfter:
    """The real backend, failing after a number of batches (a killed build, in-process)."""

    def __init__(self, backend, batches):
        self._backend, self._left = backend, batches
        self.identity, self.name = backend.identity, backend.name

    def embed(self, batch):
        if self._left == 0:
            raise RuntimeError("simulated crash")
        self._left -= 1
        return self._backend.embed(batch)


def test_ranks_from_torchrun_environment_own_disjoint_shards():
    environ = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "3"}
    ranks = Ranks.from_environment(environ)
    assert ranks.own_shards(8) == [1, 4, 7] and not ranks.is_main and ranks.cpu_threads(12) == 4
    owners = [Ranks(rank=r, world_size=3).own_shards(8) for r in range(3)]
    assert sorted(shard for own in owners for shard in own) == list(range(8))
    assert Ranks.from_environment({}) == Ranks() and Ranks().own_shards(2) == [0, 1]
    assert ranks.pin_gpu(environ) == "1" and environ["CUDA_VISIBLE_DEVICES"] == "1"
    visible = dict(environ, CUDA_VISIBLE_DEVICES="4,6,7")
    assert ranks.pin_gpu(visible) == "6"
    with pytest.raises(Exception, match="torchrun environment"):
        Ranks.from_environment({"WORLD_SIZE": "2", "RANK": "x"})
