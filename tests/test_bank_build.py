"""Bank building from a real GeoTIFF and from tile files with a real ONNX Runtime model; resumable
shards, `meanloc bank build|info|verify|merge` end to end, corruption and mismatch refusals."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from pyproj import Transformer

from meanloc.cli import main as meanloc_main
from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.export.onnx_export import export_onnx
from meanloc.runtime.backends import EmbeddingBackend, l2_normalise, open_backend
from meanloc.runtime.bank import (
    OrthophotoTileSource,
    SatelliteBank,
    build_bank,
    build_bank_from_orthophoto,
    build_bank_from_tiles,
    merge_banks,
    verify_bank,
)
from meanloc.runtime.bank.build import SHARDS_DIR
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.training.checkpoint import save_checkpoint
from meanloc.training.model import build_model, resolve_config

GSD = 2.0
WIDTH_PX, HEIGHT_PX = 300, 200  # 600 m x 400 m
ORIGIN_EN = (500000.0, 5150400.0)  # top-left corner, EPSG:32632 (Switzerland / Italy)
NODATA_PX = 60  # the westmost 120 m have no data


def _texture(seed, height, width):
    """Smooth random colour texture: distinct but locally correlated content, like imagery."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.astype(np.int16) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    valid = np.ones((HEIGHT_PX, WIDTH_PX), dtype=bool)
    valid[:, :NODATA_PX] = False
    image = _texture(0, HEIGHT_PX, WIDTH_PX)
    image[~valid] = 0
    transform = np.array([[GSD, 0.0, ORIGIN_EN[0]], [0.0, -GSD, ORIGIN_EN[1]], [0.0, 0.0, 1.0]])
    path = tmp_path_factory.mktemp("ortho") / "area.tif"
    Orthophoto(image, transform, "EPSG:32632", valid).save_geotiff(path)
    return path


def _export_nano(folder, seed):
    torch.manual_seed(seed)
    config = resolve_config("mean-nano")
    checkpoint = folder / f"nano-{seed}.pt"
    save_checkpoint(checkpoint, build_model(config).eval(), config)
    return export_onnx(checkpoint, folder / f"nano-{seed}.onnx", simplify=False, parity=False).path


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """Two real mean-nano ONNX models with different weights."""
    folder = tmp_path_factory.mktemp("models")
    return _export_nano(folder, 0), _export_nano(folder, 1)


@pytest.fixture(scope="module")
def ortho_bank(geotiff, onnx_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("banks") / "ortho"
    with open_backend(str(onnx_models[0])) as backend:
        result = build_bank_from_orthophoto(
            geotiff,
            backend,
            out,
            tile_m=100.0,
            overlap=0.5,
            scales=(1.0, 2.0),
            batch=16,
            shard_size=32,
            progress=False,
        )
    return result


class ProjectionBackend(EmbeddingBackend):
    """A numpy 'model' (fixed random projection of the preprocessed pixels) that counts its work
    and can crash after a number of batches, to exercise resumable builds quickly."""

    name = "numpy-projection"

    def __init__(self, identity, crash_after_batches=None):
        self.identity = identity
        self.max_batch = 64
        size = identity.preprocess.size
        self._projection = np.random.default_rng(0).standard_normal((3 * size * size, identity.embed_dim))
        self.crash_after_batches = crash_after_batches
        self.batches = 0
        self.images = 0

    def _embed_chunk(self, batch):
        if self.crash_after_batches is not None and self.batches >= self.crash_after_batches:
            raise RuntimeError("simulated crash")
        self.batches += 1
        self.images += len(batch)
        return l2_normalise(batch.reshape(len(batch), -1) @ self._projection)


def _projection_identity(checkpoint="a" * 64, dim=24, precision="fp32"):
    return ModelIdentity(checkpoint, "mean-nano", dim, PreprocessSpec(size=16), precision=precision)


def _read_rows(bank_dir):
    tiles = SatelliteBank.open(bank_dir).tiles
    return [tiles.row(i) for i in range(len(tiles))]


# ---------------------------------------------------------------------------------------------
# From an orthophoto


def test_orthophoto_grid_geometry(geotiff):
    ortho = Orthophoto.from_geotiff(geotiff)
    source = OrthophotoTileSource(ortho, 100.0, overlap=0.5, scales=(1.0, 2.0), tile_px=32, min_valid=0.0)
    min_x, _, max_x, max_y = ortho.bounds_world()
    plan = source._candidates
    for scale in (1.0, 2.0):
        side, stride = 100.0 * scale, 50.0 * scale
        tiles = [c for c in plan if c[0] == scale]
        xs = sorted({c[3] for c in tiles})
        ys = sorted({c[4] for c in tiles})
        assert len(tiles) == len(xs) * len(ys)
        np.testing.assert_allclose(np.diff(xs), stride)
        np.testing.assert_allclose(np.diff(ys), stride)
        # Every tile lies inside the raster, no further column/row would, and the margins are even.
        assert xs[0] - side / 2 >= min_x - 1e-6 and xs[-1] + side / 2 <= max_x + 1e-6
        assert xs[-1] + stride + side / 2 > max_x and ys[-1] + stride + side / 2 > max_y
        assert (xs[0] - side / 2 - min_x) == pytest.approx(max_x - xs[-1] - side / 2)
        north_first = [c for c in tiles if c[2] == 0]
        assert all(c[1] == 0 for c in tiles if c[4] == ys[-1]) and len(north_first) == len(ys)


def test_orthophoto_bank_contents(ortho_bank, geotiff, onnx_models):
    bank = SatelliteBank.open(ortho_bank.path)
    rows = _read_rows(ortho_bank.path)
    assert bank.count == ortho_bank.count == len(rows) > 0
    assert (
        ortho_bank.skipped_invalid > 0
        and ortho_bank.count + ortho_bank.skipped_invalid == ortho_bank.candidates
    )
    assert {float(r["scale"]) for r in rows} == {1.0, 2.0}
    assert [int(r["id"]) for r in rows] == list(range(len(rows)))

    ortho = Orthophoto.from_geotiff(geotiff)
    to_lonlat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    for row in rows:
        assert float(row["valid_fraction"]) >= 0.5
        e, n, half = float(row["center_e"]), float(row["center_n"]), float(row["side_m"]) / 2
        lon, lat = to_lonlat.transform(e, n)
        assert float(row["center_lat"]) == pytest.approx(lat, abs=1e-9)
        assert float(row["center_lon"]) == pytest.approx(lon, abs=1e-9)
        lon_tl, lat_tl = to_lonlat.transform(e - half, n + half)
        assert (float(row["tl_lat"]), float(row["tl_lon"])) == pytest.approx((lat_tl, lon_tl), abs=1e-9)
        # Clockwise from top-left on a north-up tile: TL/TR north of BR/BL, TR/BR east of TL/BL.
        assert float(row["tl_lat"]) > float(row["bl_lat"]) and float(row["tr_lat"]) > float(row["br_lat"])
        assert float(row["tr_lon"]) > float(row["tl_lon"]) and float(row["br_lon"]) > float(row["bl_lon"])
        assert row["crs"] == "EPSG:32632" and float(row["gsd"]) == pytest.approx(GSD)
        assert row["source_id"] == "area.tif" and row["source_sha256"] == ortho.source_sha256

    # The stored embeddings are the model's embeddings of the cut tiles (float16-rounded).
    with open_backend(str(onnx_models[0])) as backend:
        assert bank.identity == backend.identity
        picks = [0, len(rows) // 2, len(rows) - 1]
        crops = [
            ortho.crop_north_up(
                (float(rows[i]["center_e"]), float(rows[i]["center_n"])), float(rows[i]["side_m"]), 64
            )[0]
            for i in picks
        ]
        expected = backend.embed_images(crops)
    np.testing.assert_allclose(np.asarray(bank.embeddings[picks], dtype=np.float32), expected, atol=2e-3)

    # Each tile finds itself first.
    scores, indices = bank.search(expected, 3)
    assert indices[:, 0].tolist() == picks and np.all(scores[:, 0] > 0.999)


def test_every_skipped_tile_is_really_mostly_nodata(ortho_bank, geotiff):
    ortho = Orthophoto.from_geotiff(geotiff)
    source = OrthophotoTileSource(ortho, 100.0, overlap=0.5, scales=(1.0, 2.0), tile_px=64, min_valid=0.5)
    kept = {r["name"] for r in _read_rows(ortho_bank.path)}
    for index, (scale, row, col, x, y) in enumerate(source._candidates):
        name = f"s{scale:g}_r{row:04d}_c{col:04d}"
        valid = ortho.crop_north_up((x, y), 100.0 * scale, 64)[1]
        assert (name in kept) == (valid >= 0.5), name
        assert (source.load(index) is None) == (valid < 0.5)


def test_manifest_records_model_hashes_and_parameters(ortho_bank, onnx_models):
    manifest = json.loads((ortho_bank.path / "manifest.json").read_text())
    assert manifest["kind"] == "bank" and manifest["count"] == ortho_bank.count and manifest["dim"] == 128
    assert manifest["identity"]["artifact_sha256"] is not None and manifest["identity"]["precision"] == "fp32"
    assert manifest["identity"]["preprocess"]["size"] == 64
    assert set(manifest["files"]) == {"embeddings.npy", "tiles.npy", "index_codes.npy", "index_centre.npy"}
    # The search index is bound to these embeddings and sized for them (96 bytes at 768-d).
    assert manifest["index"]["embeddings_sha256"] == manifest["files"]["embeddings.npy"]["sha256"]
    assert (manifest["index"]["count"], manifest["index"]["code_bytes"]) == (ortho_bank.count, 128 // 8)
    assert manifest["sources"] == [{"id": "area.tif", "sha256": manifest["build"]["source_sha256"]}]
    build = manifest["build"]
    assert (build["tile_m"], build["overlap"], build["scales"], build["tile_px"]) == (
        100.0,
        0.5,
        [1.0, 2.0],
        64,
    )
    assert not (ortho_bank.path / SHARDS_DIR).exists()


def test_bank_refuses_a_model_with_other_weights(ortho_bank, onnx_models):
    with (
        open_backend(str(onnx_models[1])) as other,
        pytest.raises(ArtifactMismatchError, match="different model"),
    ):
        SatelliteBank.open(ortho_bank.path, expected_identity=other.identity)


# ---------------------------------------------------------------------------------------------
# From tile files


def _write_tile_files(folder, count, fmt):
    to_lonlat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    records = []
    for i in range(count):
        path = f"tile_{i}.png"
        cv2.imwrite(str(folder / path), _texture(10 + i, 48, 48))
        e, n, half = 500000.0 + 150.0 * i, 5150000.0, 75.0
        lon, lat = to_lonlat.transform(
            [e, e - half, e + half, e + half, e - half], [n, n + half, n + half, n - half, n - half]
        )
        record = {"id": f"T{i}", "path": path, "center_lat": lat[0], "center_lon": lon[0], "gsd": 0.5}
        for j, corner in enumerate(("tl", "tr", "br", "bl")):
            record[corner + "_lat"], record[corner + "_lon"] = lat[j + 1], lon[j + 1]
        records.append(record)
    listing = folder / ("tiles." + fmt)
    if fmt == "json":
        listing.write_text(json.dumps({"tiles": records}))
    else:
        with open(str(listing), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return listing


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_bank_from_tile_files(tmp_path, onnx_models, fmt):
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    listing = _write_tile_files(tiles_dir, 5, fmt)
    with open_backend(str(onnx_models[0])) as backend:
        result = build_bank_from_tiles(
            tiles_dir, listing, backend, tmp_path / "bank", batch=2, progress=False
        )
        expected = backend.embed_images([cv2.imread(str(tiles_dir / "tile_3.png"))])
    rows = _read_rows(result.path)
    assert [r["name"] for r in rows] == ["T0", "T1", "T2", "T3", "T4"]
    assert float(rows[0]["side_m"]) == pytest.approx(150.0, rel=1e-3)
    assert rows[0]["crs"] == "EPSG:32632" and float(rows[0]["center_e"]) == pytest.approx(500000.0, abs=1e-3)
    assert rows[2]["north_up"] == 1 and float(rows[2]["gsd"]) == 0.5
    bank = SatelliteBank.open(result.path)
    np.testing.assert_allclose(np.asarray(bank.embeddings[3], dtype=np.float32), expected[0], atol=2e-3)


def test_tile_list_errors_are_one_line(tmp_path, onnx_models):
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    listing = _write_tile_files(tiles_dir, 2, "csv")
    (tiles_dir / "tile_1.png").unlink()
    with open_backend(str(onnx_models[0])) as backend:
        with pytest.raises(MeanlocError, match="missing"):
            build_bank_from_tiles(tiles_dir, listing, backend, tmp_path / "bank", progress=False)
        listing.write_text("id,path,center_lat\nA,tile_0.png,1.0\n")
        with pytest.raises(MeanlocError, match="lacks center_lon"):
            build_bank_from_tiles(tiles_dir, listing, backend, tmp_path / "bank", progress=False)


# ---------------------------------------------------------------------------------------------
# Resumable shards


def test_interrupted_build_resumes_without_redoing_finished_shards(geotiff, tmp_path):
    ortho = Orthophoto.from_geotiff(geotiff)

    def source():
        return OrthophotoTileSource(ortho, 100.0, overlap=0.5, scales=(1.0,), tile_px=16, min_valid=0.5)

    options = {"batch": 4, "shard_size": 10, "progress": False}
    reference = build_bank(source(), ProjectionBackend(_projection_identity()), tmp_path / "clean", **options)

    out = tmp_path / "resumed"
    crashing = ProjectionBackend(_projection_identity(), crash_after_batches=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_bank(source(), crashing, out, **options)
    finished = sorted(p.name for p in (out / SHARDS_DIR).glob("*.json") if p.name != "plan.json")
    assert finished and not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / SHARDS_DIR).glob("*.npy")) == [
        n.replace(".json", ".npy") for n in finished
    ]
    with pytest.raises(MeanlocError, match="not a bank"):
        SatelliteBank.open(out)

    with pytest.raises(MeanlocError, match="--resume"):
        build_bank(source(), ProjectionBackend(_projection_identity()), out, **options)
    with pytest.raises(MeanlocError, match="different source, model or parameters"):
        build_bank(
            source(),
            ProjectionBackend(_projection_identity(checkpoint="b" * 64)),
            out,
            resume=True,
            **options,
        )

    done_before = sum(json.loads((out / SHARDS_DIR / name).read_text())["count"] for name in finished)
    resumed_backend = ProjectionBackend(_projection_identity())
    result = build_bank(source(), resumed_backend, out, resume=True, **options)
    assert result.shards_reused == len(finished) and result.shards_built > 0
    # Only the tiles of unfinished shards were embedded again.
    assert done_before > 0 and resumed_backend.images == reference.count - done_before
    assert np.array_equal(
        np.load(str(out / "embeddings.npy")), np.load(str(reference.path / "embeddings.npy"))
    )
    assert (out / "tiles.npy").read_bytes() == (reference.path / "tiles.npy").read_bytes()
    assert verify_bank(out) == []

    # Resuming a finished bank is a no-op; rebuilding over it is refused.
    again = ProjectionBackend(_projection_identity())
    assert (
        build_bank(source(), again, out, resume=True, **options).count == reference.count
        and again.images == 0
    )
    with pytest.raises(MeanlocError, match="already holds a bank"):
        build_bank(source(), again, out, **options)


def test_loader_pool_keeps_tile_order_and_reports_a_failing_tile(geotiff, tmp_path):
    ortho = Orthophoto.from_geotiff(geotiff)

    def source():
        return OrthophotoTileSource(ortho, 100.0, overlap=0.5, scales=(1.0,), tile_px=16, min_valid=0.5)

    options = {"batch": 3, "shard_size": 7, "progress": False, "index": False}
    plain = build_bank(source(), ProjectionBackend(_projection_identity()), tmp_path / "plain", workers=0, **options)
    pooled = build_bank(source(), ProjectionBackend(_projection_identity()), tmp_path / "pool", workers=3, **options)
    for name in ("embeddings.npy", "tiles.npy"):
        assert (plain.path / name).read_bytes() == (pooled.path / name).read_bytes()

    class Broken(OrthophotoTileSource):
        def load(self, index):
            if index == 11:
                raise MeanlocError("tile 11 is unreadable")
            return super().load(index)

    broken = Broken(ortho, 100.0, overlap=0.5, scales=(1.0,), tile_px=16, min_valid=0.5)
    with pytest.raises(MeanlocError, match="tile 11 is unreadable"):
        build_bank(broken, ProjectionBackend(_projection_identity()), tmp_path / "broken", workers=3, **options)


# ---------------------------------------------------------------------------------------------
# Command line: build, info, verify, merge


def test_cli_build_info_verify_and_corruption(geotiff, onnx_models, tmp_path, capsys):
    out = tmp_path / "cli_bank"
    code = meanloc_main(
        [
            "bank",
            "build",
            "--model",
            str(onnx_models[0]),
            "--orthophoto",
            str(geotiff),
            "--out",
            str(out),
            "--tile-m",
            "150",
            "--overlap",
            "0.25",
            "--batch",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "tiles" in capsys.readouterr().out
    assert meanloc_main(["bank", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "mean-nano" in info and "128-d float16" in info
    assert meanloc_main(["bank", "verify", str(out)]) == 0

    embeddings = out / "embeddings.npy"
    data = bytearray(embeddings.read_bytes())
    data[-5] ^= 0xFF
    embeddings.write_bytes(bytes(data))
    capsys.readouterr()
    assert meanloc_main(["bank", "verify", str(out)]) == 1
    assert "embeddings.npy sha256 differs" in capsys.readouterr().err


def test_cli_index_adds_an_index_to_a_bank_without_one(geotiff, onnx_models, tmp_path, capsys):
    out = tmp_path / "plain"
    args = ["bank", "build", "--model", str(onnx_models[0]), "--orthophoto", str(geotiff), "--out", str(out)]
    assert meanloc_main([*args, "--tile-m", "150", "--no-progress", "--no-index"]) == 0
    assert "index" not in json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    assert meanloc_main(["bank", "info", str(out)]) == 0
    assert "index:       none" in capsys.readouterr().out
    assert meanloc_main(["bank", "index", str(out)]) == 0
    assert "index of" in capsys.readouterr().out
    assert meanloc_main(["bank", "info", str(out)]) == 0
    assert "index:       sign-codes v1, 16 bytes/tile" in capsys.readouterr().out
    assert meanloc_main(["bank", "verify", str(out)]) == 0
    assert "search index" in capsys.readouterr().out
    assert meanloc_main(["bank", "index", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    before = (out / "index_codes.npy").read_bytes()
    assert meanloc_main(["bank", "index", str(out), "--overwrite"]) == 0
    assert (out / "index_codes.npy").read_bytes() == before


def test_cli_build_rejects_bad_arguments(geotiff, onnx_models, tmp_path, capsys):
    base = ["bank", "build", "--model", str(onnx_models[0]), "--out", str(tmp_path / "b"), "--no-progress"]
    assert meanloc_main([*base, "--orthophoto", str(geotiff), "--overlap", "1.0"]) == 2
    assert "--overlap" in capsys.readouterr().err
    assert meanloc_main([*base, "--orthophoto", str(geotiff), "--scales", "1,x"]) == 2
    assert meanloc_main([*base, "--tiles-dir", str(tmp_path)]) == 2
    assert "--tiles-csv" in capsys.readouterr().err
    assert meanloc_main([*base, "--orthophoto", str(tmp_path / "missing.tif")]) == 2
    assert "not found" in capsys.readouterr().err


def _projection_bank(folder, geotiff, identity, scales=(1.0,)):
    ortho = Orthophoto.from_geotiff(geotiff)
    source = OrthophotoTileSource(ortho, 100.0, overlap=0.5, scales=scales, tile_px=16)
    return build_bank(source, ProjectionBackend(identity), folder, batch=8, progress=False)


def test_merge_renumbers_and_keeps_embeddings(geotiff, tmp_path, capsys):
    a = _projection_bank(tmp_path / "a", geotiff, _projection_identity())
    b = _projection_bank(tmp_path / "b", geotiff, _projection_identity(), scales=(2.0,))
    assert meanloc_main(["bank", "merge", str(a.path), str(b.path), "--out", str(tmp_path / "ab")]) == 0
    merged = SatelliteBank.open(tmp_path / "ab")
    assert merged.count == a.count + b.count
    rows = _read_rows(tmp_path / "ab")
    assert [int(r["id"]) for r in rows] == list(range(merged.count))
    assert [r["name"] for r in rows] == [r["name"] for r in _read_rows(a.path)] + [
        r["name"] for r in _read_rows(b.path)
    ]
    stacked = np.concatenate(
        [np.load(str(a.path / "embeddings.npy")), np.load(str(b.path / "embeddings.npy"))]
    )
    assert np.array_equal(np.asarray(merged.embeddings), stacked)
    assert merged.manifest["build"]["type"] == "merge" and verify_bank(tmp_path / "ab") == []


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (_projection_identity(checkpoint="b" * 64), "different model weights"),
        (_projection_identity(dim=32), "embedding dimension"),
        (_projection_identity(precision="int8"), "precision"),
    ],
)
def test_merge_refuses_banks_of_another_model(geotiff, tmp_path, capsys, other, message):
    a = _projection_bank(tmp_path / "a", geotiff, _projection_identity())
    b = _projection_bank(tmp_path / "b", geotiff, other)
    assert meanloc_main(["bank", "merge", str(a.path), str(b.path), "--out", str(tmp_path / "ab")]) == 3
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "ab" / "manifest.json").exists()


def test_merge_refuses_other_preprocessing(geotiff, tmp_path):
    a = _projection_bank(tmp_path / "a", geotiff, _projection_identity())
    other = ModelIdentity("a" * 64, "mean-nano", 24, PreprocessSpec(size=16, interpolation="INTER_AREA"))
    b = _projection_bank(tmp_path / "b", geotiff, other)
    with pytest.raises(ArtifactMismatchError, match="preprocessing differs"):
        merge_banks([a.path, b.path], tmp_path / "ab")


def test_verify_detects_a_truncated_tile_table(geotiff, tmp_path):
    bank = _projection_bank(tmp_path / "a", geotiff, _projection_identity())
    table = bank.path / "tiles.npy"
    np.save(str(table), np.load(str(table))[:-1], allow_pickle=False)
    problems = verify_bank(bank.path)
    assert any("tiles.npy sha256" in p for p in problems)
    assert any("tiles but the manifest says" in p for p in problems)
    with pytest.raises(MeanlocError, match=r"damaged: tiles\.npy"):
        SatelliteBank.open(bank.path)


def test_info_exports_the_tile_table_as_csv(geotiff, tmp_path, capsys):
    bank = _projection_bank(tmp_path / "a", geotiff, _projection_identity(), scales=(1.0, 2.0))
    out_csv = tmp_path / "tiles.csv"
    assert meanloc_main(["bank", "info", str(bank.path), "--tiles-csv", str(out_csv)]) == 0
    with open(str(out_csv), newline="") as handle:
        exported = list(csv.DictReader(handle))
    tiles = SatelliteBank.open(bank.path).tiles
    assert len(exported) == len(tiles) == bank.count
    for i in (0, len(tiles) - 1):
        assert exported[i]["name"] == tiles.name[i] and int(exported[i]["id"]) == i
        assert float(exported[i]["br_lon"]) == tiles.br_lon[i]  # repr round-trips exactly
        assert exported[i]["source_id"] == "area.tif" and len(exported[i]["source_sha256"]) == 64
