"""`meanloc localize` end to end with real ONNX Runtime: synthetic flight, Ctrl-C, mismatch."""

import csv
import json
import signal
import statistics
import subprocess
import sys
import threading

import numpy as np
import pytest
from localize_support import (
    PoolingBackend,
    build_world_bank,
    crop,
    export_nano_onnx,
    track,
    world_image,
    write_video,
)

from meanloc.cli import main
from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank.build import build_bank_from_orthophoto
from meanloc.runtime.geo.orthophoto import Orthophoto, utm_epsg_for
from meanloc.runtime.localize.geodesy import geodesic_distance_m

GSD_M = 1.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A mean-nano ONNX model, a GeoTIFF orthophoto of the test world and a bank cut from it."""
    folder = tmp_path_factory.mktemp("cli")
    model = export_nano_onnx(folder / "nano.onnx")
    epsg = utm_epsg_for(8.0, 47.0)
    image = world_image()
    transform = np.array([[GSD_M, 0.0, 440000.0], [0.0, -GSD_M, 5206000.0], [0.0, 0.0, 1.0]])
    ortho_path = folder / "ortho.tif"
    Orthophoto(image, transform, f"EPSG:{epsg}").save_geotiff(ortho_path)
    with open_backend(str(model)) as backend:
        build_bank_from_orthophoto(ortho_path, backend, folder / "bank", tile_m=64.0, overlap=0.5)
    return {"folder": folder, "model": model, "ortho": ortho_path, "bank": folder / "bank"}


def test_synthetic_flight_reports_errors_with_and_without_filter(setup, tmp_path, capsys):
    out = {name: tmp_path / name for name in ("out.jsonl", "out.csv", "track.geojson", "summary.json")}
    code = main(["localize", "--model", str(setup["model"]), "--bank", str(setup["bank"]),
                 "--source", "synthetic:{}".format(setup["ortho"]), "--frames", "8", "--flight-altitude", "45",
                 "--flight-pattern", "straight", "--window-m", "150", "--estimator", "weighted",
                 "--jsonl", str(out["out.jsonl"]), "--csv", str(out["out.csv"]),
                 "--geojson", str(out["track.geojson"]), "--summary", str(out["summary.json"])])
    assert code == 0
    summary = json.loads(out["summary.json"].read_text())
    records = [json.loads(line) for line in out["out.jsonl"].read_text().splitlines()]
    assert summary["frames_processed"] == len(records) == 8
    assert summary["truth_point"].startswith("look-at") and "geodesic" in summary["distance"]
    raw = [geodesic_distance_m(r["fix_lon"], r["fix_lat"], r["truth_lon"], r["truth_lat"]) for r in records]
    assert summary["error_raw_fix"]["frames"] == 8
    assert summary["error_raw_fix"]["median_m"] == pytest.approx(statistics.median(raw), abs=0.3)
    assert summary["error_raw_fix"]["within_50m"] == pytest.approx(np.mean(np.array(raw) <= 50.0))
    assert "error_filtered" in summary
    assert len(list(csv.DictReader(out["out.csv"].open()))) == 8
    assert json.loads(out["track.geojson"].read_text())["type"] == "FeatureCollection"
    assert "| raw fix (no filter) |" in capsys.readouterr().err


def test_sigint_flushes_and_closes_every_sink(setup, tmp_path):
    world = world_image()
    frames = [crop(world, x, y, 64) for x, y in track(40)] * 20  # 800 frames: far more than we wait for
    video = write_video(tmp_path / "long.avi", frames, fps=5.0)
    csv_path, geojson_path, summary_path = tmp_path / "o.csv", tmp_path / "o.geojson", tmp_path / "s.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "meanloc", "localize", "--model", str(setup["model"]), "--bank", str(setup["bank"]),
         "--source", str(video), "--jsonl", "-", "--csv", str(csv_path), "--geojson", str(geojson_path),
         "--summary", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = [process.stdout.readline() for _ in range(5)]  # the loop is running
        assert all(line.startswith("{") for line in first)
        process.send_signal(signal.SIGINT)
        # Not communicate(): it reads the raw pipe and would drop lines readline() already buffered.
        watchdog = threading.Timer(60, process.kill)
        watchdog.start()
        rest, stderr = process.stdout.read(), process.stderr.read()
        process.wait()
        watchdog.cancel()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    streamed = [json.loads(line) for line in first + rest.splitlines()]
    rows = list(csv.DictReader(csv_path.open()))
    track_json = json.loads(geojson_path.read_text())
    summary = json.loads(summary_path.read_text())
    assert summary["stop_reason"] == "interrupted"
    assert 5 <= len(streamed) == len(rows) == summary["frames_processed"] < len(frames)
    assert [int(r["frame"]) for r in rows] == [r["frame"] for r in streamed]
    assert len(track_json["features"]) == 1 + sum(r["lat"] is not None for r in streamed)


def test_bank_from_another_model_is_refused_in_one_line(setup, tmp_path, capsys):
    other = build_world_bank(tmp_path / "other-bank", PoolingBackend(), world_image())
    code = main(["localize", "--model", str(setup["model"]), "--bank", str(other), "--source", str(setup["ortho"])])
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert err.startswith("meanloc: error: bank") and "\n" not in err


def test_bad_telemetry_options_are_one_line_errors(setup, tmp_path, capsys):
    video = write_video(tmp_path / "flight.mp4", [crop(world_image(), x, y, 64) for x, y in track(4)])
    base = ["localize", "--model", str(setup["model"]), "--bank", str(setup["bank"]), "--source", str(video)]
    cases = {
        "pymavlink connection string": ["--telemetry", "bogus", "--camera-pitch", "30"],
        "needs its tilt from nadir": ["--telemetry", "udpin:127.0.0.1:0"],
    }
    for message, extra in cases.items():
        assert main(base + extra) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
