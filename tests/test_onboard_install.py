"""The onboard install: the runtime works with numpy + onnxruntime + OpenCV (+ pyproj, pymavlink)
and never imports torch.

CI runs this file twice: in the workstation venv, and in a Python 3.8 venv (JetPack 5's Python)
that has no torch at all (.ci/onboard-py38), with the model made beforehand by
tests/onboard_assets.py and passed in MEANLOC_ONBOARD_ASSETS. Python 3.8 syntax only.
"""

import csv
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meanloc.cli import main

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def nano_onnx(tmp_path_factory):
    assets = os.environ.get("MEANLOC_ONBOARD_ASSETS")
    if assets:
        return Path(assets) / "nano.onnx"
    pytest.importorskip("torch")
    from onboard_assets import make_nano_onnx

    return make_nano_onnx(tmp_path_factory.mktemp("onboard-assets"))


def test_runtime_modules_import_without_torch():
    import meanloc.runtime

    names = [m.name for m in pkgutil.walk_packages(meanloc.runtime.__path__, "meanloc.runtime.")]
    code = "import importlib, sys\nfor name in {!r}:\n    importlib.import_module(name)\n" \
           "print(sorted(m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules))".format(names)
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
    assert len(names) > 20


def _write_tiles(folder: Path, count: int = 12):
    """Textured tiles on a 100 m grid near Zurich, listed with centre and corner coordinates."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC)
        name = "tile{:03d}.png".format(index)
        cv2.imwrite(str(folder / name), image)
        lat, lon = 47.37 + 0.0009 * (index // 4), 8.54 + 0.0013 * (index % 4)
        half_lat, half_lon = 0.00045, 0.00066
        rows.append({
            "id": "t{}".format(index), "path": name, "center_lat": lat, "center_lon": lon,
            "tl_lat": lat + half_lat, "tl_lon": lon - half_lon, "tr_lat": lat + half_lat, "tr_lon": lon + half_lon,
            "br_lat": lat - half_lat, "br_lon": lon + half_lon, "bl_lat": lat - half_lat, "bl_lon": lon - half_lon,
        })
    with open(str(folder / "tiles.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_bank_localize_profile_onboard(nano_onnx, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rows = _write_tiles(tiles)
    bank = tmp_path / "bank"
    assert main(["bank", "build", "--model", str(nano_onnx), "--tiles-dir", str(tiles), "--tiles-csv",
                 str(tiles / "tiles.csv"), "--out", str(bank), "--no-progress"]) == 0
    assert main(["bank", "verify", str(bank)]) == 0

    video = tmp_path / "flight.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 96))
    for row in rows[:6]:
        writer.write(cv2.imread(str(tiles / row["path"])))
    writer.release()
    summary = tmp_path / "summary.json"
    assert main(["localize", "--model", str(nano_onnx), "--bank", str(bank), "--source", str(video),
                 "--jsonl", str(tmp_path / "track.jsonl"), "--summary", str(summary)]) == 0
    records = [json.loads(line) for line in (tmp_path / "track.jsonl").read_text().splitlines()]
    assert len(records) == 6 == json.loads(summary.read_text())["frames_processed"]

    assert main(["profile", "--model", str(nano_onnx), "--iterations", "50", "--warmup", "2", "--bank", str(bank),
                 "--out", str(tmp_path / "profile"), "--no-telemetry"]) == 0
    report = json.loads((tmp_path / "profile" / "report.json").read_text())
    assert {"decode", "preprocess", "inference", "search"} <= set(report["results"][0]["stages"])


@pytest.fixture(scope="module")
def fine_assets(nano_onnx, tmp_path_factory):
    assets = os.environ.get("MEANLOC_ONBOARD_ASSETS")
    if assets:
        return Path(assets) / "fine"
    from onboard_assets import make_fine_assets

    return make_fine_assets(tmp_path_factory.mktemp("onboard-fine"), nano_onnx)


def test_fine_stage_onboard(nano_onnx, fine_assets, tmp_path):
    """Geometric verification with the system-like numpy/OpenCV: an image folder, a fixed camera
    attitude and a prior 100 m off; the verified fixes land on the true look-at points."""
    from meanloc.runtime.bank.frame import LocalFrame

    flight = json.loads((fine_assets / "flight.json").read_text())
    truths = flight["truths"]
    prior = "{},{}".format(truths[0][0] + 0.0009, truths[0][1])  # ~100 m north
    assert main(["localize", "--model", str(nano_onnx), "--bank", str(fine_assets / "bank"),
                 "--source", str(fine_assets / "frames"), "--camera-hfov", str(flight["hfov_deg"]),
                 "--camera-pitch", str(flight["pitch_deg"]), "--altitude-agl", str(flight["altitude_m"]),
                 "--heading", str(flight["heading_deg"]), "--prior", prior, "--window-m", "300",
                 "--jsonl", str(tmp_path / "track.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "track.jsonl").read_text().splitlines()]
    frame = LocalFrame(*truths[0])
    geometric = [r for r in records if r["fix_source"] == "geometric"]
    assert len(geometric) >= 3
    for record in geometric:
        fix = np.array(frame.to_xy(record["fix_lat"], record["fix_lon"]))
        truth = np.array(frame.to_xy(*truths[record["frame"]]))
        assert np.hypot(*(fix - truth)) < 10.0


def test_doctor_runs_onboard(capsys):
    assert main(["doctor", "--json"]) == 0
    environment = json.loads(capsys.readouterr().out)["environment"]
    assert environment["python_version"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert environment["numpy_version"] == np.__version__


def test_doctor_selftest_and_the_engine_model_reader_run_onboard_without_torch_or_onnx(tmp_path, capsys):
    """What a Jetson user runs first (docs/jetson.md §0): no torch, no `onnx` package, any numpy 1.x."""
    out = tmp_path / "selftest.json"
    assert main(["doctor", "--selftest", "--out", str(out), "--iterations", "3"]) in (0, 1)
    report = json.loads(out.read_text())
    assert report["onnxruntime"]["fp32"]["status"] == "ok"
    assert report["onnxruntime"]["int8-qdq"]["cosine_to_fp32"]["mean"] > 0.97
    assert report["tensorrt"]["status"] in ("skipped", "ran")
    code = ("import sys\nfrom meanloc.runtime.onnx_file import load_embedding_onnx\n"
            "from meanloc.selftest_model import build_selftest_model\n"
            "open(sys.argv[1], 'wb').write(build_selftest_model(16).fp32_onnx)\n"
            "print(load_embedding_onnx(sys.argv[1]).opset, sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "16 []"
