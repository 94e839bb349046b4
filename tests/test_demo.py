"""`meanloc demo` end to end on the tiny synthetic preset: every stage runs through the real CLI,
the report holds every figure the summary promises, and a re-run reuses finished steps."""

import json

import pytest

from meanloc.cli import main

TINY_DEMO = ["demo", "--data-preset", "tiny", "--model-preset", "mean-nano", "--train-minutes", "0.1",
             "--flight-frames", "6", "--batch-size", "8", "--flight-pattern", "straight"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    assert main([*TINY_DEMO, "--workdir", str(work)]) == 0
    return work


def test_demo_writes_every_artifact_and_the_report(demo_run):
    for artifact in ("train/best.pt", "model.onnx", "calib/calibration.cache", "calib/model.int8-qdq-trt.onnx",
                     "calib/model.int8-cpu.onnx", "bank/manifest.json", "report/trajectory.png",
                     "report/latency.png", "report/stages.png"):
        assert (demo_run / artifact).is_file(), artifact
    summary = json.loads((demo_run / "report" / "summary.json").read_text())
    assert {"drone -> satellite [junk_distractors]", "drone -> satellite [full]"} <= set(summary["retrieval"])
    for precision in ("fp32", "int8"):
        raw = summary["localization"][precision]["raw_fixes"]
        assert raw["frames"] and raw["p90_m"] >= raw["median_m"]
        # A barely trained model may never be confident enough to start the filter: then it reports 0 frames.
        assert "frames" in summary["localization"][precision]["filtered"]
    assert len(summary["latency_median_ms"]) == 2


def test_demo_rerun_reuses_finished_steps_and_fresh_starts_over(demo_run, capsys):
    capsys.readouterr()
    assert main([*TINY_DEMO, "--workdir", str(demo_run)]) == 0
    out = capsys.readouterr().out
    state = json.loads((demo_run / "demo-state.json").read_text())
    assert out.count("reusing the finished step") == len(state)
    assert main([*TINY_DEMO, "--workdir", str(demo_run), "--fresh", "--train-minutes", "0.05"]) == 0
    assert "reusing" not in capsys.readouterr().out
