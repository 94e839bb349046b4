"""The synthetic dataset writer and `meanloc data synth`: layout, splits, manifests, atomicity."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from meanloc.cli import main
from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import sha256_file
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.training.data.synth.writer import preset_config, synthetic_sources, write_dataset
from meanloc.training.data.university import university_eval_views, university_train_views


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = preset_config("tiny", seed=3)
    sources, plan = synthetic_sources(config)
    out = tmp_path_factory.mktemp("synth") / "ds"
    manifest = write_dataset(out, config, sources, plan)
    return config, sources, plan, out, manifest


def _ids(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_tree_follows_the_university_layout_and_the_readers_accept_it(tiny):
    config, _, _, out, manifest = tiny
    sat, drone = university_train_views(out)
    assert sat.classes.keys() == drone.classes.keys()
    assert all(len(v) == config.views_train for v in drone.classes.values())
    for split in ("val", "test"):
        query, gallery = university_eval_views(out, "d2s", split)
        assert set(query.classes) <= set(gallery.classes)
        s_query, s_gallery = university_eval_views(out, "s2d", split)
        assert set(s_query.classes) == set(query.classes) and set(s_gallery.classes) == set(gallery.classes)
    # Distractors: test galleries hold classes that no query has, exactly as many as asked.
    test_q, test_g = _ids(out / "test/query_drone"), _ids(out / "test/gallery_satellite")
    assert len(set(test_g) - set(test_q)) == config.n_distractors
    ids = [i for split in ("train/satellite", "val/gallery_satellite", "test/gallery_satellite")
           for i in _ids(out / split)]
    assert len(ids) == len(set(ids)) and all(len(i) == 4 and i.isdigit() for i in ids)
    assert ids == sorted(ids)  # train, then val, then test
    assert (out / "train/satellite" / ids[0] / f"{ids[0]}.jpg").is_file()
    assert manifest["kind"] == "synthetic-crossview-dataset" and manifest["seed"] == 3
    assert manifest["difficulty"]["pinned_default"] is True and manifest["cross_source"] is True
    assert any("flat" in note.lower() for note in manifest["notes"])
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk["inputs"]["satellite"]["sha256"] == sha256_file(out / "world/satellite.tif")
    assert not out.with_name(out.name + ".partial").exists()


def test_locations_csv_has_wgs84_centres_and_corners(tiny):
    config, sources, _, out, _ = tiny
    rows = list(csv.DictReader((out / "locations.csv").open()))
    assert len(rows) == sum(c["locations"] for c in tiny[4]["statistics"]["counts"].values())
    assert sum(int(r["is_distractor"]) for r in rows) == config.n_distractors
    for row in rows[:5]:
        lon, lat = sources.satellite.world_to_lonlat(float(row["centre_e"]), float(row["centre_n"]))
        assert (float(row["lat"]), float(row["lon"])) == pytest.approx((float(lat), float(lon)), abs=1e-7)
        assert float(row["tl_lat"]) > float(row["bl_lat"]) and float(row["tr_lon"]) > float(row["tl_lon"])


def test_splits_are_spatially_disjoint_including_every_drone_footprint(tiny):
    config, _, _, out, manifest = tiny
    rows = {r["id"]: r for r in csv.DictReader((out / "locations.csv").open())}
    half = config.tile_side_m / 2
    extent = {}  # split -> [min_x, max_x] of tiles and footprints
    for split, folder in (("train", "train/drone"), ("val", "val/gallery_drone"), ("test", "test/gallery_drone")):
        xs = []
        for loc_id in _ids(out / folder):
            x = float(rows[loc_id]["centre_e"])
            xs += [x - half, x + half]
            for sidecar in sorted((out / folder / loc_id).glob("*.json")):
                view = json.loads(sidecar.read_text())
                xs += [p[0] for p in view["footprint_xy"]]
                assert view["valid_fraction"] >= 1 - config.sampling.max_invalid_fraction
                assert 150 * 0.5 <= view["pose"]["altitude_m"] <= 300
                assert view["pose"]["pitch_deg"] <= view["pitch_sampled_deg"] + 1e-9
                assert {"gamma", "jpeg_quality", "haze_transmission"} <= set(view["appearance"])
        extent[split] = (min(xs), max(xs))
    assert extent["train"][1] < extent["val"][0] and extent["val"][1] < extent["test"][0]
    assert manifest["geometry"]["min_split_gap_m"] >= config.tile_side_m + 2 * manifest["geometry"]["footprint_reach_m"]


def test_output_does_not_depend_on_the_number_of_workers(tiny, tmp_path):
    config, sources, plan, out, _ = tiny
    from dataclasses import replace

    other = tmp_path / "two_workers"
    write_dataset(other, replace(config, workers=2), sources, plan, save_world=False)
    files = sorted(p.relative_to(out) for p in (out / "test").rglob("*.jpeg"))
    assert files and files == sorted(p.relative_to(other) for p in (other / "test").rglob("*.jpeg"))
    assert all((out / f).read_bytes() == (other / f).read_bytes() for f in files)


def test_interrupted_run_leaves_only_a_partial_folder_and_existing_output_is_kept(tiny, tmp_path):
    config, sources, plan, out, _ = tiny
    target = tmp_path / "interrupted"
    calls = []

    def stop_after_two(_n):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(target, config, sources, plan, progress=stop_after_two, save_world=False)
    assert not target.exists() and target.with_name("interrupted.partial").exists()
    write_dataset(target, config, sources, plan, save_world=False)  # a rerun replaces the stale partial
    assert (target / "dataset.json").is_file() and not target.with_name("interrupted.partial").exists()
    with pytest.raises(MeanlocError, match="already exists"):
        write_dataset(out, config, sources, plan)


def test_cli_with_a_user_orthophoto_pair(tiny, tmp_path, capsys):
    _, _, _, out, _ = tiny
    dest = tmp_path / "user"
    rc = main(["data", "synth", "--preset", "tiny", "--out", str(dest), "--orthophoto", str(out / "world/satellite.tif"),
               "--drone-orthophoto", str(out / "world/drone.tif"), "--workers", "1"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["source_kind"] == "user" and manifest["cross_source"] is True
    assert manifest["inputs"]["drone"]["sha256"] == sha256_file(out / "world/drone.tif")
    assert manifest["statistics"]["counts"]["test"]["query_classes"] > 0


def test_cli_with_an_image_and_corner_coordinates(tiny, tmp_path, capsys):
    import cv2

    _, sources, _, _, _ = tiny
    ortho = sources.satellite
    image = tmp_path / "plain.png"
    cv2.imwrite(str(image), ortho.image)
    lon, lat = ortho.world_to_lonlat(*ortho.pixel_to_world([0, ortho.width, ortho.width, 0],
                                                           [0, 0, ortho.height, ortho.height]))
    corners = [f"{a:.9f},{o:.9f}" for a, o in zip(lat, lon)]
    dest = tmp_path / "corners"
    rc = main(["data", "synth", "--preset", "tiny", "--out", str(dest), "--orthophoto", str(image),
               "--corners", *corners, "--workers", "1", "--view-aspect", "1.5"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["crs"] == ortho.crs and manifest["cross_source"] is False
    assert manifest["camera"]["height"] == round(manifest["camera"]["width"] / 1.5)
    assert manifest["satellite_orthophoto"]["gsd_m"] == pytest.approx(ortho.gsd, rel=1e-4)


def test_cli_bad_inputs_give_one_line_errors(tiny, tmp_path, capsys):
    _, sources, _, _, _ = tiny
    cases = []
    cases.append((["--orthophoto", str(tmp_path / "missing.tif")], "not found"))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)
    cases.append((["--orthophoto", str(corrupt)], "cannot read"))
    small = tmp_path / "small.tif"
    # 160 x 240 m: not even one 200 m tile (plus the look-at jitter) fits.
    Orthophoto(sources.satellite.image[:40, :60].copy(), sources.satellite.transform, sources.satellite.crs
               ).save_geotiff(small)
    cases.append((["--orthophoto", str(small)], "holds no location: each needs a 220 m square"))
    rotated = tmp_path / "rotated.tif"
    t = sources.satellite.transform
    Orthophoto(np.ascontiguousarray(np.rot90(sources.satellite.image, k=-1)),
               np.array([[0, -t[1, 1], t[0, 2]], [t[0, 0], 0, t[1, 2] - sources.satellite.height * t[0, 0]],
                         [0, 0, 1]]), sources.satellite.crs).save_geotiff(rotated)
    cases.append((["--orthophoto", str(rotated)], "north-up"))
    cases.append((["--orthophoto", str(small), "--corners", "1,2", "3,4", "5,6", "7"], "LAT,LON"))
    for extra, message in cases:
        rc = main(["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "never"), *extra])
        err = capsys.readouterr().err
        assert rc == 2, extra
        last = err.strip().splitlines()[-1]
        assert last.startswith("meanloc: error:") and message in last, (extra, err)
        assert "Traceback" not in err
    assert not (tmp_path / "never").exists()
