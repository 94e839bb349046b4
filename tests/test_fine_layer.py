"""The bank's local-feature layer: built by `meanloc bank build`, indexed, resumable, merged,
verified, and refused clearly when damaged or foreign."""

import json
import shutil

import numpy as np
import pytest
from fine_support import build_feature_bank, write_world_pair
from localize_support import PoolingBackend

from meanloc.cli import main
from meanloc.runtime.bank import feature_build as layer_build
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.bank.build import build_bank_from_orthophoto
from meanloc.runtime.bank.feature_build import LayerParams, build_feature_layer
from meanloc.runtime.bank.feature_layer import DESCRIPTORS_FILE, KEYPOINTS_FILE
from meanloc.runtime.bank.merge import merge_banks
from meanloc.runtime.bank.verify import verify_bank
from meanloc.runtime.features.extract import FeatureSpec
from meanloc.runtime.geo.orthophoto import Orthophoto


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer")
    date1, date2 = write_world_pair(folder, seed=4)
    return {"folder": folder, "date1": date1, "date2": date2, "bank": build_feature_bank(date1, folder / "bank")}


def copy_bank(world, tmp_path, name="bank"):
    return shutil.copytree(world["bank"], tmp_path / name)


def test_the_layer_is_indexed_hashed_and_small(world):
    bank = SatelliteBank.open(world["bank"])
    manifest = bank.manifest
    assert {KEYPOINTS_FILE, DESCRIPTORS_FILE} <= set(manifest["files"])
    layer = bank.features
    info = layer.describe()
    assert info["count"] > 1000 and info["bytes_per_km2"] <= 5e6
    assert layer.descriptors.dtype == np.uint8
    # Cell capping: no cell holds more than per_cell features.
    assert np.diff(layer.cells).max() <= layer.meta.per_cell
    assert verify_bank(world["bank"]) == []


def test_gather_reads_the_cells_around_a_circle(world):
    layer = SatelliteBank.open(world["bank"]).features
    keypoints = np.asarray(layer.keypoints)
    centre = keypoints[len(keypoints) // 2, :2].astype(np.float64)
    radius = 120.0
    region = layer.gather([(centre[0], centre[1], radius)])
    inside = np.hypot(*(keypoints[:, :2] - centre).T) <= radius
    # Everything inside the circle is returned, and nothing beyond the cells that touch it.
    assert len(region) >= int(inside.sum())
    returned = {tuple(p) for p in np.round(region.xy, 3)}
    assert all(tuple(p) in returned for p in np.round(keypoints[inside, :2].astype(np.float64), 3))
    reach = radius + layer.meta.grid.cell_m * np.sqrt(2)
    assert np.all(np.hypot(*(region.xy - centre).T) <= reach)


def test_an_interrupted_feature_build_resumes_to_the_same_layer(world, tmp_path, monkeypatch):
    bank = copy_bank(world, tmp_path)
    ortho = Orthophoto.from_geotiff(world["date1"])
    params = LayerParams(block_cells=8)
    reference = copy_bank(world, tmp_path, "reference")
    for path in (bank, reference):  # strip the layer: both start from the embeddings alone
        manifest = json.loads((path / "manifest.json").read_text())
        del manifest["local_features"]
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("features/")}
        (path / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(path / "features")
    build_feature_layer(reference, ortho, params, progress=False)

    real = layer_build._extract_block_row
    calls = {"n": 0}

    def dies_on_third_row(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(layer_build, "_extract_block_row", dies_on_third_row)
    with pytest.raises(KeyboardInterrupt):
        build_feature_layer(bank, ortho, params, progress=False)
    monkeypatch.setattr(layer_build, "_extract_block_row", real)
    with pytest.raises(Exception, match="--resume"):
        build_feature_layer(bank, ortho, params, progress=False)
    build_feature_layer(bank, ortho, params, resume=True, progress=False)
    for name in (KEYPOINTS_FILE, DESCRIPTORS_FILE):
        assert np.array_equal(np.load(bank / name), np.load(reference / name))
    assert not (bank / layer_build.SHARDS_DIR).exists()


@pytest.mark.parametrize("damage", ["truncated", "wrong dtype", "foreign orthophoto"])
def test_a_damaged_or_foreign_layer_is_refused_in_one_line(world, tmp_path, capsys, damage):
    bank = copy_bank(world, tmp_path)
    if damage == "truncated":
        path = bank / DESCRIPTORS_FILE
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "wrong dtype":
        keypoints = np.load(bank / KEYPOINTS_FILE)
        np.save(bank / KEYPOINTS_FILE, keypoints.astype(np.float64))
    else:  # features of the other date's orthophoto, with their manifest entry, pasted in
        other = build_feature_bank(world["date2"], tmp_path / "other")
        shutil.rmtree(bank / "features")
        shutil.copytree(other / "features", bank / "features")
        manifest = json.loads((bank / "manifest.json").read_text())
        manifest["local_features"] = json.loads((other / "manifest.json").read_text())["local_features"]
        (bank / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["bank", "info", str(bank)]) in (2, 3)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bank) in err and "Traceback" not in err
    assert main(["bank", "verify", str(bank)]) == 1


def test_banks_without_an_orthophoto_layer_say_so(world, tmp_path, capsys):
    plain = tmp_path / "plain"
    build_bank_from_orthophoto(world["date1"], PoolingBackend(size=32, dim=64), plain, tile_m=200.0, overlap=0.5,
                               local_features=None, progress=False)
    assert SatelliteBank.open(plain).features is None
    capsys.readouterr()
    assert main(["bank", "info", str(plain)]) == 0
    assert "none (built with --no-local-features" in capsys.readouterr().out


def test_merging_banks_merges_their_layers_in_the_new_frame(world, tmp_path):
    other = build_feature_bank(world["date2"], tmp_path / "other")
    merged = tmp_path / "merged"
    manifest = merge_banks([world["bank"], other], merged)
    assert manifest["build"]["local_features"] == "merged"
    layers = [SatelliteBank.open(path) for path in (world["bank"], other, merged)]
    a, b, m = (bank.features for bank in layers)
    # Same place, two dates: overlapping cells are capped again, so at most the sum.
    assert max(a.meta.count, b.meta.count) < m.meta.count <= a.meta.count + b.meta.count
    assert np.diff(m.cells).max() <= m.meta.per_cell
    assert verify_bank(merged) == []
    # A feature keeps its geographic position through the change of local frame.
    lat, lon = layers[0].frame.to_latlon(*np.asarray(a.keypoints[:50, :2], dtype=np.float64).T)
    x, y = layers[2].frame.to_xy(lat, lon)
    nearest = [np.min(np.hypot(*(np.asarray(m.keypoints[:, :2], dtype=np.float64) - [px, py]).T)) for px, py in
               zip(x, y)]
    assert np.median(nearest) < 0.05


def test_layers_extracted_differently_are_not_merged(world, tmp_path):
    other = build_feature_bank(world["date1"], tmp_path / "orb", LayerParams(FeatureSpec("orb")))
    manifest = merge_banks([world["bank"], other], tmp_path / "merged")
    assert "local_features" not in manifest
    assert "extracted differently" in manifest["build"]["local_features"]
