"""The hostile-input catalogue: every kind of broken file fed to every command that reads that kind.

For each case the run must end without a traceback or an internal error (exit 70), with the exit
code documented for it (`meanloc.errors.EXIT_CODES`, docs/troubleshooting.md), with a message that
names the file, without a library warning before the error, and without changing any file that
existed before (outputs given with --overwrite included: a failed run replaces nothing). Streams
(localize, eval, report precision) skip a bad image, say so naming it, and succeed; builders
refuse it.

Then the faults: localize killed by SIGKILL mid-flight keeps a readable flight log with every record
up to the last second; train killed while writing a checkpoint resumes and leaves no orphan temp
file; two concurrent `bank build --resume` or `train` runs into one folder: one proceeds, the other
exits with "in use by pid N".

Everything is generated here. Commands run in-process through `meanloc.cli.main` (the console
script's entry point) and as subprocesses only where a kill or a second process is the point.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from calib_support import write_university_tree
from hostile_files import (
    BAD_IMAGES,
    write_bad_bank,
    write_bad_checkpoint,
    write_bad_image,
    write_bad_onnx,
    write_garbage_calibration_cache,
)
from localize_support import PoolingBackend, crop, grid_centres, world_image, write_tile_list
from onboard_assets import make_nano_onnx

from meanloc.cli import main
from meanloc.errors import (
    EXIT_ARTIFACT_MISMATCH,
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_IN_USE,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
)
from meanloc.runtime.artifacts import read_jsonl
from meanloc.runtime.backends import open_backend
from meanloc.runtime.bank.build import build_bank_from_tiles
from meanloc.runtime.bank.verify import verify_bank

ROOT = Path(__file__).resolve().parents[1]
CORNERS = ["47.001,8.0", "47.001,8.002", "47.0,8.002", "47.0,8.0"]


@dataclass
class World:
    root: Path
    onnx: Path
    checkpoint: Path
    data: Path  # University-1652 layout: train and val
    frames: Path  # an image folder for `localize`
    tiles: Path  # tile images and tiles.csv
    bank: Path  # built from `tiles` by `onnx`
    other_bank: Path  # the same tiles embedded by another model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    onnx = make_nano_onnx(root / "model")
    data = write_university_tree(root / "data", classes=4, drones=2, size=72)
    frames = root / "frames"
    frames.mkdir()
    for index in range(3):
        (frames / f"f_{index * 2:02d}.png").write_bytes((data / "val" / "query_drone" / "0000" /
                                                               "image-01.png").read_bytes())
    image = world_image()
    centres = grid_centres()[:12]
    tiles = root / "tiles"
    write_tile_list(tiles, centres, [crop(image, x, y, 64) for x, y in centres], 64)
    with open_backend(str(onnx)) as backend:
        build_bank_from_tiles(tiles, tiles / "tiles.csv", backend, root / "bank", progress=False)
    build_bank_from_tiles(tiles, tiles / "tiles.csv", PoolingBackend(), root / "other_bank", progress=False)
    return World(root, onnx, onnx.parent / "nano.pt", data, frames, tiles, root / "bank", root / "other_bank")


# --- running and judging a command ------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(capfd, argv) -> Run:
    capfd.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capfd.readouterr()  # file-descriptor level: C libraries' stderr noise is caught too
    return Run(code, captured.out, captured.err)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*folders: Path) -> dict:
    return {str(p): _digest(p) for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_handled(run: Run, expected: int, names, before: dict, after: dict, replaced=()):
    """The catalogue's promise for one case (see the module docstring)."""
    names = [str(name) for name in names]
    assert run.code == expected, f"exit {run.code} (expected {expected}):\n{run.text}"
    assert run.code != EXIT_INTERNAL_ERROR and "internal error" not in run.text
    assert "Traceback" not in run.text
    assert any(name in run.text for name in names), f"no message names {names}:\n{run.text}"
    assert not re.search(r"Warning|\[ ?WARN|Corrupt JPEG|libpng", run.text), run.text
    if run.code not in (EXIT_OK, EXIT_CHECK_FAILED):  # a check that found problems lists them instead
        lines = [line for line in run.err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("meanloc: error:") and lines[-1].endswith("."), run.err
    kept = {path: digest for path, digest in before.items() if path not in {str(p) for p in replaced}}
    changed = [path for path, digest in kept.items() if after.get(path) != digest]
    assert changed == [], f"pre-existing files changed: {changed}"
    leftovers = [path for path in after if re.search(r"/\.[^/]+\.\d+\.\w+\.(tmp|spool)$", path)]
    assert leftovers == []


def existing(path: Path, content: str = "an earlier run's output\n") -> Path:
    """A file that was there before the run (the output it must not destroy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# --- images -------------------------------------------------------------------------------------


def _dataset_with(world: World, folder: Path, relative: str, case: str) -> tuple:
    """A copy of the dataset with the image at `relative` replaced by a bad one; (root, bad path)."""
    root = folder / "data"
    shutil.copytree(str(world.data), str(root))
    target = root / relative
    target.unlink()
    return root, write_bad_image(case, target.with_suffix(""))


def _tiles_with(world: World, folder: Path, case: str) -> tuple:
    tiles = folder / "tiles"
    shutil.copytree(str(world.tiles), str(tiles))
    bad = write_bad_image(case, tiles / "t0003")
    if bad.suffix != ".png":
        (tiles / "t0003.png").unlink()
    listing = tiles / "tiles.csv"
    listing.write_text(listing.read_text().replace("t0003.png", bad.name))
    return tiles, bad


def image_case(world, folder, command, case):
    """(argv, expected exit code, the bad file, outputs the run may legitimately replace)."""
    if command == "localize":
        frames = folder / "frames"
        shutil.copytree(str(world.frames), str(frames))
        bad = write_bad_image(case, frames / "f_01")
        jsonl = existing(folder / "flight.jsonl")
        return (["localize", "--model", world.onnx, "--bank", world.bank, "--source", frames, "--jsonl", jsonl,
                 "--overwrite"], EXIT_OK, bad, [jsonl])
    if command in ("eval", "report precision"):
        data, bad = _dataset_with(world, folder, "val/query_drone/0001/image-01.png", case)
        out = existing(folder / "report.json")
        head = ["eval", "--onnx", world.onnx, "--split", "val", "--direction", "d2s", "--no-progress"] \
            if command == "eval" else ["report", "precision", "--onnx", world.onnx, "--split", "val"]
        return head + ["--data", data, "--out", out, "--overwrite"], EXIT_OK, bad, [out, out.with_suffix(".md")]
    if command == "calibrate":
        images = folder / "images"
        shutil.copytree(str(world.frames), str(images))
        bad = write_bad_image(case, images / "f_01")
        existing(folder / "calib" / "calibration.cache")
        return (["calibrate", "--onnx", world.onnx, "--images", images, "--out", folder / "calib", "--num-images", 4,
                 "--batch", 2, "--no-progress", "--overwrite"], EXIT_BAD_INPUT, bad, [])
    if command == "bank build":
        tiles, bad = _tiles_with(world, folder, case)
        shutil.copytree(str(world.bank), str(folder / "bank"))
        return (["bank", "build", "--model", world.onnx, "--tiles-dir", tiles, "--tiles-csv", tiles / "tiles.csv",
                 "--out", folder / "bank", "--overwrite", "--no-progress"], EXIT_BAD_INPUT, bad, [])
    if command == "data synth":
        bad = write_bad_image(case, folder / "ortho")
        existing(folder / "synth" / "dataset.json")
        return (["data", "synth", "--orthophoto", bad, "--corners", *CORNERS, "--preset", "tiny",
                 "--out", folder / "synth", "--overwrite"], EXIT_BAD_INPUT, bad, [])
    if command == "train":
        data, bad = _dataset_with(world, folder, "train/drone/0001/image-02.png", case)
        existing(folder / "run" / "last.pt")
        return (["train", "--dataset", "university", "--data-root", data, "--preset", "mean-nano", "--batch-size", 4,
                 "--epochs", 1, "--threads", 1, "--no-progress", "--out-dir", folder / "run", "--overwrite"],
                EXIT_BAD_INPUT, bad, [])
    raise ValueError(command)


IMAGE_COMMANDS = ("localize", "eval", "report precision", "calibrate", "bank build", "data synth", "train")


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images(world, tmp_path, capfd, case, command):
    argv, expected, bad, replaced = image_case(world, tmp_path, command, case)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, expected, [bad], before, snapshot(world.root, tmp_path), replaced)
    if command == "localize":
        records = list(read_jsonl(tmp_path / "flight.jsonl"))
        assert [r["frame"] for r in records] == [0, 2, 3]  # the bad frame 1 skipped, the rest processed
        assert "1 corrupt" in run.err and "Skipped 1 bad image" in run.err


def test_builders_skip_and_count_bad_images_when_asked(world, tmp_path, capfd):
    tiles, bad = _tiles_with(world, tmp_path, "truncated JPEG")
    run = cli(capfd, ["bank", "build", "--model", world.onnx, "--tiles-dir", tiles, "--tiles-csv", tiles / "tiles.csv",
                      "--out", tmp_path / "bank", "--no-progress", "--skip-bad-images"])
    assert run.code == EXIT_OK and "Skipped 1 bad image (1 truncated)" in run.err and str(bad) in run.err
    assert verify_bank(tmp_path / "bank") == []
    assert json.loads((tmp_path / "bank" / "manifest.json").read_text())["count"] == 11


def test_a_frame_deleted_during_the_run_is_missing_not_corrupt(world, tmp_path, capfd):
    from meanloc.runtime.localize.sources import ImageFolderSource

    frames = tmp_path / "frames"
    shutil.copytree(str(world.frames), str(frames))
    source = ImageFolderSource(str(frames))
    (frames / "f_02.png").unlink()
    assert len(list(source)) == 2
    assert source.stats.missing == 1 and source.stats.corrupt == 0
    assert "does not exist" in source.stats.bad_images.summary()
    assert "WARN" not in capfd.readouterr().err


# --- checkpoints ----------------------------------------------------------------------------------

CHECKPOINT_CASES = {
    "pickled-object checkpoint": EXIT_BAD_INPUT,
    "truncated checkpoint": EXIT_BAD_INPUT,
    "foreign-architecture checkpoint": EXIT_ARTIFACT_MISMATCH,
}
TRAIN = ["train", "--dataset", "university", "--preset", "mean-nano", "--batch-size", 4, "--epochs", 1, "--threads", 1,
         "--no-progress"]


def model_case(world, folder, command, model):
    """(argv, outputs it may replace) for a command that reads a model file."""
    if command == "localize":
        return ["localize", "--model", model, "--bank", world.bank, "--source", world.frames,
                "--jsonl", existing(folder / "flight.jsonl"), "--overwrite"]
    if command == "bank build":
        shutil.copytree(str(world.bank), str(folder / "bank"))
        return ["bank", "build", "--model", model, "--tiles-dir", world.tiles, "--tiles-csv", world.tiles / "tiles.csv",
                "--out", folder / "bank", "--overwrite", "--no-progress"]
    if command == "profile":
        existing(folder / "profile" / "report.json")
        return ["profile", "--model", model, "--out", folder / "profile", "--overwrite", "--no-telemetry",
                "--bank-size", 0]
    if command == "eval":
        flag = "--checkpoint" if model.suffix == ".pt" else "--onnx"
        return ["eval", flag, model, "--data", world.data, "--split", "val", "--direction", "d2s",
                "--out", existing(folder / "eval.json"), "--overwrite", "--no-progress"]
    if command == "export onnx":
        return ["export", "onnx", "--checkpoint", model, "--out", existing(folder / "model.onnx"), "--overwrite",
                "--no-parity"]
    if command in ("train --resume", "train --pretrained"):
        existing(folder / "run" / "last.pt")
        return TRAIN + [command.split()[1], model, "--data-root", world.data, "--out-dir", folder / "run", "--overwrite"]
    if command == "calibrate":
        existing(folder / "calib" / "calibration.cache")
        return ["calibrate", "--onnx", model, "--images", world.frames, "--out", folder / "calib", "--num-images", 2,
                "--batch", 2, "--overwrite", "--no-progress"]
    if command == "report precision":
        return ["report", "precision", "--onnx", model, "--data", world.data, "--out", existing(folder / "p.json"),
                "--overwrite"]
    if command == "export engine":
        return ["export", "engine", "--onnx", model, "--out", existing(folder / "model.engine")]
    if command == "doctor --selftest":
        return ["doctor", "--selftest", "--onnx", model, "--out", existing(folder / "selftest.json"), "--overwrite",
                "--iterations", 1]
    raise ValueError(command)


@pytest.mark.parametrize("command", ["eval", "export onnx", "train --resume", "train --pretrained", "bank build",
                                     "profile", "localize"])
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoints(world, tmp_path, capfd, case, command):
    marker = tmp_path / "code-was-executed"
    bad = write_bad_checkpoint(case, tmp_path / "bad.pt", world.checkpoint, marker)
    argv = model_case(world, tmp_path, command, bad)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, CHECKPOINT_CASES[case], [bad], before, snapshot(world.root, tmp_path))
    assert not marker.exists(), "unpickling ran the payload"


ONNX_CASES = {"random ONNX": EXIT_BAD_INPUT, "truncated ONNX": EXIT_BAD_INPUT, "foreign ONNX": EXIT_ARTIFACT_MISMATCH}


@pytest.mark.parametrize("command", ["localize", "bank build", "profile", "eval", "calibrate", "report precision",
                                     "export engine", "doctor --selftest"])
@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_onnx_models(world, tmp_path, capfd, case, command):
    bad = write_bad_onnx(case, tmp_path / "bad.onnx", world.onnx)
    argv = model_case(world, tmp_path, command, bad)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, ONNX_CASES[case], [bad], before, snapshot(world.root, tmp_path))


@pytest.mark.parametrize("command", ["localize", "bank build", "profile", "report precision"])
def test_random_engine(world, tmp_path, capfd, command):
    bad = tmp_path / "random.engine"
    bad.write_bytes(os.urandom(4096))
    if command == "report precision":
        argv = ["report", "precision", "--onnx", world.onnx, "--data", world.data, "--engines", bad,
                "--out", existing(tmp_path / "p.json"), "--overwrite"]
    else:
        argv = model_case(world, tmp_path, command, bad)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, EXIT_ARTIFACT_MISMATCH, [bad], before, snapshot(world.root, tmp_path))


# --- banks, calibration caches, datasets ---------------------------------------------------------

BANK_CASES = ("bank with wrong dim", "bank with NaN rows", "bank with NaN rows, manifest re-hashed",
              "bank with object dtype")


def bank_case(world, folder, command, bank):
    if command == "localize":
        return ["localize", "--model", world.onnx, "--bank", bank, "--source", world.frames,
                "--jsonl", existing(folder / "flight.jsonl"), "--overwrite"], EXIT_BAD_INPUT
    if command == "profile":
        existing(folder / "profile" / "report.json")
        return ["profile", "--model", world.onnx, "--bank", bank, "--out", folder / "profile", "--overwrite",
                "--no-telemetry", "--iterations", 50, "--warmup", 1], EXIT_BAD_INPUT
    if command == "bank info":
        return ["bank", "info", bank], EXIT_BAD_INPUT
    if command == "bank verify":
        return ["bank", "verify", bank], EXIT_CHECK_FAILED
    if command == "bank merge":
        return ["bank", "merge", bank, world.bank, "--out", folder / "merged"], EXIT_BAD_INPUT
    raise ValueError(command)


@pytest.mark.parametrize("command", ["localize", "profile", "bank info", "bank verify", "bank merge"])
@pytest.mark.parametrize("case", BANK_CASES)
def test_damaged_banks(world, tmp_path, capfd, case, command):
    bank = write_bad_bank(case, tmp_path / "bad_bank", world.bank)
    argv, expected = bank_case(world, tmp_path, command, bank)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, expected, [bank], before, snapshot(world.root, tmp_path))
    assert not (tmp_path / "merged" / "manifest.json").exists()


@pytest.mark.parametrize("command", ["localize", "profile"])
def test_bank_of_another_model(world, tmp_path, capfd, command):
    argv, _ = bank_case(world, tmp_path, command, world.other_bank)
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, EXIT_ARTIFACT_MISMATCH, [world.other_bank], before, snapshot(world.root, tmp_path))


@pytest.mark.parametrize("command", ["export engine", "report precision"])
def test_garbage_calibration_cache(world, tmp_path, capfd, command):
    cache = write_garbage_calibration_cache(tmp_path / "calib" / "calibration.cache")
    if command == "export engine":
        argv = ["export", "engine", "--onnx", world.onnx, "--precision", "int8-implicit", "--calib-cache", cache,
                "--out", existing(tmp_path / "model.engine")]
    else:
        argv = ["report", "precision", "--onnx", world.onnx, "--data", world.data, "--calib-dir", cache.parent,
                "--out", existing(tmp_path / "p.json"), "--overwrite"]
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, EXIT_BAD_INPUT, [cache], before, snapshot(world.root, tmp_path))


def _one_view_dataset(world: World, folder: Path) -> Path:
    root = folder / "one_view"
    shutil.copytree(str(world.data), str(root))
    for view in ("train/drone", "val/query_drone"):
        shutil.rmtree(str(root / view))
    return root


@pytest.mark.parametrize("command", ["train", "eval", "calibrate", "report precision"])
@pytest.mark.parametrize("case", ["empty dataset folder", "one-view dataset"])
def test_unusable_datasets(world, tmp_path, capfd, case, command):
    if case == "empty dataset folder":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = _one_view_dataset(world, tmp_path)
    argv = {
        "train": TRAIN + ["--data-root", data, "--out-dir", tmp_path / "run"],
        "eval": ["eval", "--onnx", world.onnx, "--data", data, "--split", "val", "--direction", "d2s",
                 "--out", tmp_path / "e.json"],
        "calibrate": ["calibrate", "--onnx", world.onnx, "--data", data, "--out", tmp_path / "calib"],
        "report precision": ["report", "precision", "--onnx", world.onnx, "--data", data, "--out", tmp_path / "p.json"],
    }[command]
    before = snapshot(world.root, tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, EXIT_BAD_INPUT, [data], before, snapshot(world.root, tmp_path))


# --- outputs and run folders ----------------------------------------------------------------------


def test_existing_outputs_are_refused_without_overwrite(world, tmp_path, capfd):
    outputs = {"--jsonl": existing(tmp_path / "f.jsonl"), "--geojson": existing(tmp_path / "t.geojson")}
    argv = ["localize", "--model", world.onnx, "--bank", world.bank, "--source", world.frames]
    for option, path in outputs.items():
        before = snapshot(tmp_path)
        run = cli(capfd, argv + [option, path])
        assert_handled(run, EXIT_BAD_INPUT, [path], before, snapshot(tmp_path))
        assert "--overwrite" in run.err
    run = cli(capfd, argv + ["--jsonl", outputs["--jsonl"], "--geojson", outputs["--geojson"], "--overwrite"])
    assert run.code == EXIT_OK and len(list(read_jsonl(outputs["--jsonl"]))) == 3
    assert json.loads(outputs["--geojson"].read_text())["type"] == "FeatureCollection"
    run = cli(capfd, argv + ["--jsonl", tmp_path / "flight-{time}.jsonl"])  # or a new name per run
    assert run.code == EXIT_OK and len(list(tmp_path.glob("flight-*T*Z.jsonl"))) == 1


def test_train_refuses_a_used_folder_and_starts_over_only_with_overwrite(world, tmp_path, capfd):
    run_dir = tmp_path / "run"
    earlier = {name: existing(run_dir / name) for name in ("best.pt", "metrics.jsonl")}
    argv = TRAIN + ["--data-root", world.data, "--out-dir", run_dir, "--max-steps", 1, "--selection", "last"]
    before = snapshot(tmp_path)
    run = cli(capfd, argv)
    assert_handled(run, EXIT_BAD_INPUT, [run_dir], before, snapshot(tmp_path))
    assert "--resume" in run.err and "--overwrite" in run.err
    run = cli(capfd, argv + ["--overwrite"])
    assert run.code == EXIT_OK, run.text
    assert not earlier["best.pt"].exists()  # the earlier run's best checkpoint is not left beside the new one
    assert next(r["event"] for r in read_jsonl(earlier["metrics.jsonl"])) == "start"
    assert not (run_dir / ".meanloc.lock").exists()


def test_batch_size_one_is_a_clear_error(world, tmp_path, capfd):
    argv = ["train", "--dataset", "university", "--preset", "mean-nano", "--batch-size", 1, "--data-root", world.data,
            "--out-dir", tmp_path / "run", "--no-progress"]
    run = cli(capfd, argv)
    assert run.code == EXIT_BAD_INPUT and "at least 2" in run.err and "Expected more than 1 value" not in run.text


def test_exit_code_table_is_documented_once():
    """docs/troubleshooting.md lists exactly the codes of meanloc.errors.EXIT_CODES."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)}
    assert documented == set(EXIT_CODES)


# --- faults: kill -9, concurrent writers ------------------------------------------------------------


def _meanloc(*argv, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "meanloc", *[str(a) for a in argv]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def _wait_for(condition, process, seconds=90.0, what="condition"):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.002)


def _kill(process):
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_localize_killed_mid_flight_keeps_its_flight_log(world, tmp_path, capfd):
    frames = tmp_path / "frames"
    frames.mkdir()
    first = next(iter(sorted(world.frames.iterdir())))
    for index in range(4000):  # a long flight, cheaply: links to one frame
        os.symlink(str(first), str(frames / f"f_{index:05d}.png"))
    log, track = tmp_path / "flight.jsonl", tmp_path / "track.geojson"
    process = _meanloc("localize", "--model", world.onnx, "--bank", world.bank, "--source", frames,
                       "--jsonl", log, "--geojson", track)
    try:
        _wait_for(lambda: _complete_lines(log) >= 20, process, what="20 flight records")
        written_a_second_before = _complete_lines(log)
        time.sleep(1.0)
    finally:
        _kill(process)
    assert process.returncode == -signal.SIGKILL
    records = list(read_jsonl(log))  # a torn last line would be skipped; every other line must parse
    assert len(records) >= written_a_second_before
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert not track.exists()  # the GeoJSON summary is written only at the end...
    spools = list(tmp_path.glob(".track.geojson.*.spool"))
    assert len(spools) == 1  # ...so the killed run left its spool, which the next run in that folder removes
    run = cli(capfd, ["localize", "--model", world.onnx, "--bank", world.bank, "--source", world.frames,
                      "--jsonl", log, "--geojson", track, "--overwrite"])
    assert run.code == EXIT_OK and not any(path.exists() for path in spools)
    assert len(list(read_jsonl(log))) == 3


def test_train_killed_while_writing_a_checkpoint_resumes_without_orphans(world, tmp_path, capfd):
    from meanloc.training.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    argv = TRAIN[:] + ["--data-root", world.data, "--out-dir", run_dir, "--checkpoint-every", 1, "--selection", "last"]
    argv[argv.index("--epochs") + 1] = 500
    temporary = []
    for _ in range(3):  # the kill must land inside a write; a write lasts milliseconds, so retry if it missed
        extra = ["--resume", run_dir / "last.pt"] if (run_dir / "last.pt").exists() else []
        process = _meanloc(*argv, *extra)
        try:
            _wait_for(lambda: (run_dir / "last.pt").exists(), process, what="first checkpoint")
            _wait_for(lambda: any(run_dir.glob(".last.pt.*.tmp")), process, what="checkpoint write")
        finally:
            _kill(process)
        temporary = list(run_dir.glob(".last.pt.*.tmp"))
        if temporary:
            break
    assert temporary, "never killed inside a checkpoint write"
    step = load_checkpoint(run_dir / "last.pt").train_state["step"]
    run = cli(capfd, argv + ["--resume", run_dir / "last.pt", "--max-steps", step + 1])
    assert run.code == EXIT_OK, run.text
    assert load_checkpoint(run_dir / "last.pt").train_state["step"] == step + 1
    assert not any(run_dir.glob(".*.tmp")), "an orphan temporary file survived the resumed run"


def test_concurrent_bank_builds_into_one_folder(world, tmp_path, capfd):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rows = (world.tiles / "tiles.csv").read_text().splitlines()
    listing = [rows[0]]
    for index in range(120):  # many one-tile shards: a build that lasts a few seconds
        source = rows[1 + index % (len(rows) - 1)].split(",")
        name = f"c{index:04d}.png"
        os.symlink(str(world.tiles / source[1]), str(tiles / name))
        listing.append(",".join([f"c{index}", name] + source[2:]))
    (tiles / "tiles.csv").write_text("\n".join(listing) + "\n")
    argv = ["bank", "build", "--model", world.onnx, "--tiles-dir", tiles, "--tiles-csv", tiles / "tiles.csv",
            "--out", tmp_path / "bank", "--shard-size", 1, "--batch", 1, "--no-progress", "--resume"]
    first = _meanloc(*argv)
    try:
        _wait_for(lambda: any((tmp_path / "bank" / "shards").glob("*.json")), first, what="first shard")
        second = cli(capfd, argv)
        assert first.poll() is None, "the first build must still be running"
    finally:
        _kill(first)
    assert second.code == EXIT_IN_USE and f"in use by pid {first.pid}" in second.err, second.text
    assert "Traceback" not in second.text
    # The killed build's lock is stale: a resumed build takes the folder over and finishes it.
    finished = cli(capfd, argv)
    assert finished.code == EXIT_OK, finished.text
    assert verify_bank(tmp_path / "bank") == []


def test_concurrent_trainings_into_one_folder(world, tmp_path, capfd):
    run_dir = tmp_path / "run"
    argv = TRAIN[:] + ["--data-root", world.data, "--out-dir", run_dir]
    argv[argv.index("--epochs") + 1] = 500
    first = _meanloc(*argv)
    try:
        _wait_for(lambda: (run_dir / ".meanloc.lock").exists(), first, what="lock")
        second = cli(capfd, argv + ["--overwrite"])
        assert first.poll() is None, "the first training must still be running"
    finally:
        _kill(first)
    assert second.code == EXIT_IN_USE and f"in use by pid {first.pid}" in second.err, second.text
    assert "Traceback" not in second.text


def test_every_case_kind_is_covered():
    """The catalogue of issue 14, by name: a forgotten kind fails here."""
    kinds = set(BAD_IMAGES) | set(CHECKPOINT_CASES) | set(ONNX_CASES) | set(BANK_CASES)
    assert {"oversized-header PNG", "truncated JPEG", "empty file", "text named .jpg", "4x4 image",
            "pickled-object checkpoint", "truncated checkpoint", "foreign-architecture checkpoint", "random ONNX",
            "truncated ONNX", "foreign ONNX", "bank with wrong dim", "bank with NaN rows",
            "bank with object dtype"} <= kinds
