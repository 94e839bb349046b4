"""A user's 1 km² orthophoto pair, as a new user would use it: data, train, eval, export, bank and a
synthetic flight through the real CLI, with the defaults plus only --tile-side-m and --altitude
(CI-sized: the `tiny` size preset and a mean-nano model for a few steps), and a dataset.json that
describes the user's files, not the synthetic world.

The pair is generated: two dates of the synthetic world over 1 km², the satellite one at 1.6 m
per pixel, the drone one (the photographic second date) at 0.8 m, both GeoTIFFs like a user's.
"""

import csv
import json

import cv2
import numpy as np
import pytest

from meanloc.cli import main
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.training.data.synth.world import WorldSpec, generate_world_pair

ALTITUDE = ["--altitude", "80", "120"]


@pytest.fixture(scope="module")
def user_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_pair")
    date1, date2 = generate_world_pair(WorldSpec(seed=11, width_m=1000.0, height_m=1000.0, gsd_m=0.8), workers=1)
    coarse = cv2.resize(date1.image, (date1.width // 2, date1.height // 2), interpolation=cv2.INTER_AREA)
    transform = date1.transform.copy()
    transform[0, 0] *= 2.0
    transform[1, 1] *= 2.0
    satellite, drone = folder / "ortho_2025-05.tif", folder / "ortho_2025-09.tif"
    Orthophoto(coarse, transform, date1.crs).save_geotiff(satellite)
    date2.save_geotiff(drone)
    return folder, satellite, drone


@pytest.fixture(scope="module")
def dataset(user_pair):
    folder, satellite, drone = user_pair
    out = folder / "data"
    assert main(["data", "synth", "--orthophoto", str(satellite), "--drone-orthophoto", str(drone), "--out", str(out),
                 "--tile-side-m", "100", *ALTITUDE, "--preset", "tiny", "--workers", "1"]) == 0
    return out


def test_dataset_json_tells_the_truth_about_the_users_orthophotos(user_pair, dataset):
    _, satellite, drone = user_pair
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["source_kind"] == "user" and manifest["cross_source"] is True
    assert manifest["inputs"]["satellite"]["path"] == str(satellite)
    assert manifest["inputs"]["drone"]["path"] == str(drone)
    sat = manifest["satellite_orthophoto"]
    assert sat["gsd_m"] == pytest.approx(1.6) and sat["size_m"] == pytest.approx([1000.0, 1000.0])
    assert manifest["drone_orthophoto"]["gsd_m"] == pytest.approx(0.8)
    assert manifest["crs"] == sat["crs"] == "EPSG:32632"
    lon_min, lat_min, lon_max, lat_max = sat["bounds_lonlat"]
    assert lon_min < 8.4 + 1e-4 < lon_max and lat_min < 47.45 - 1e-4 < lat_max
    for world_only in ("n_train", "n_val", "n_test", "origin_lonlat", "world_gsd_m", "preset", "rows"):
        assert world_only not in manifest["parameters"], world_only
    assert manifest["parameters"]["tile_side_m"] == 100.0 and manifest["parameters"]["clearance_m"] == 50.0
    stats = manifest["statistics"]
    rows = list(csv.DictReader((dataset / "locations.csv").open()))
    for split in ("train", "val", "test"):
        assert stats["counts"][split]["locations"] == sum(r["split"] == split for r in rows) > 0
    assert stats["rendered_altitude_m"]["min"] >= 80 * 0.5 and stats["rendered_altitude_m"]["max"] <= 120
    assert 0.5 < stats["query_coverage"]["mean"] <= 1.0
    geometry = manifest["geometry"]
    assert geometry["layout"].startswith("bands") and geometry["min_centre_gap_m"] == pytest.approx(170.0)
    assert set(geometry["footprint_overlap"]) == {"train_views_seeing_val_centres", "train_views_seeing_test_centres"}
    assert manifest["views"]["validity"] == "query"
    assert manifest["recommended_input_px"]["pixels"] == 64  # 100 m tiles of a 1.6 m orthophoto
    # The test split is a real area, not a strip at the edge: several columns and rows of locations.
    test = [(float(r["centre_e"]), float(r["centre_n"])) for r in rows if r["split"] == "test"]
    assert len({x for x, _ in test}) >= 3 and len({y for _, y in test}) >= 10


def test_train_eval_export_bank_and_fly_with_the_defaults(dataset, user_pair, tmp_path):
    _, satellite, drone = user_pair
    run = tmp_path / "train"
    assert main(["train", "--dataset", "synthetic", "--data-root", str(dataset), "--preset", "mean-nano",
                 "--batch-size", "8", "--max-steps", "30", "--out-dir", str(run), "--no-progress", "--threads", "2"]) == 0
    config = json.loads((run / "train_config.json").read_text())
    assert config["img_size"] == 64 and config["pose_aware_queries"] is True
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(dataset), "--dataset", "synthetic",
                 "--split", "test", "--protocol", "both", "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    onnx = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--checkpoint", str(run / "last.pt"), "--out", str(onnx)]) == 0
    bank = tmp_path / "bank"
    assert main(["bank", "build", "--model", str(onnx), "--orthophoto", str(satellite), "--out", str(bank),
                 "--no-progress"]) == 0
    assert json.loads((bank / "manifest.json").read_text())["build"]["tile_m"] == 100.0  # the trained square
    summary = tmp_path / "flight.json"
    assert main(["localize", "--model", str(onnx), "--bank", str(bank), "--source", f"synthetic:{drone}",
                 "--frames", "6", "--flight-altitude", "100", "--summary", str(summary), "--jsonl",
                 str(tmp_path / "flight.jsonl")]) == 0
    result = json.loads(summary.read_text())
    assert result["frames_processed"] == 6 and result["error_raw_fix"]["frames"] == 6


def test_a_test_area_and_the_limits_that_cannot_work(user_pair, tmp_path, capsys):
    _, satellite, _ = user_pair
    ortho = Orthophoto.from_geotiff(satellite)
    x0, y0, x1, y1 = ortho.bounds_world()
    # The north-east quarter as a GeoJSON polygon.
    corners = [(x0 + 500, y0 + 500), (x1, y0 + 500), (x1, y1), (x0 + 500, y1)]
    lon, lat = ortho.world_to_lonlat([c[0] for c in corners], [c[1] for c in corners])
    geojson = tmp_path / "test_area.geojson"
    geojson.write_text(json.dumps({"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [[[float(a), float(b)] for a, b in zip(lon, lat)]]}}))
    out = tmp_path / "with_area"
    assert main(["data", "synth", "--orthophoto", str(satellite), "--out", str(out), "--tile-side-m", "100", *ALTITUDE,
                 "--preset", "tiny", "--workers", "1", "--test-area", str(geojson)]) == 0
    rows = list(csv.DictReader((out / "locations.csv").open()))
    test = np.array([(float(r["centre_e"]), float(r["centre_n"])) for r in rows if r["split"] == "test"])
    others = np.array([(float(r["centre_e"]), float(r["centre_n"])) for r in rows if r["split"] != "test"])
    assert (test[:, 0] >= x0 + 500).all() and (test[:, 1] >= y0 + 500).all()
    gaps = np.max(np.abs(others[:, None, :] - test[None, :, :]), axis=2)
    assert gaps.min() >= 170.0 - 1e-6  # tile 100 + clearance 50 + 2 x 10 m jitter, centre to centre
    cases = [
        (["--tile-side-m", "1200"], "holds no location: each needs a 1220 m square"),
        (["--tile-side-m", "100", "--clearance-m", "700"], "too small for three banded splits (three banded splits "
         "need at least 3 grid positions and 2 gaps of 820 m (tile 100 m + clearance 700 m + 2 x 10 m look-at jitter)"),
        (["--tile-side-m", "100", "--test-area", "47.0,8.0,47.001,8.001"], "--test-area holds none of the"),
        (["--test-area", "47.5,8.5,47.4,8.6"], "LAT_MIN < LAT_MAX"),
    ]
    for extra, message in cases:
        rc = main(["data", "synth", "--orthophoto", str(satellite), "--out", str(tmp_path / "never"), "--preset", "tiny",
                   "--workers", "1", *extra])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2 and err.startswith("meanloc: error:") and message in err, (extra, err)
