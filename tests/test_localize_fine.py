"""The loop with its fine stage over a two-date town: geometry carries the metres even when the
embedding is useless, verified fixes reach the filter with their covariance, a misled filter is
re-initialised by a verified fit, and `meanloc profile` times the fine stage."""

import json
from dataclasses import replace

import numpy as np
import pytest
from fine_support import DEFAULT_LAYER, build_feature_bank, write_world_pair
from localize_support import export_nano_onnx

from meanloc.cli import main
from meanloc.runtime.backends import open_backend
from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.bank.build import build_bank_from_orthophoto
from meanloc.runtime.fine.stage import RefineConfig
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.loop import LocalizationLoop, LoopConfig
from meanloc.runtime.localize.synthetic import SyntheticFlightOptions, SyntheticFlightSource
from meanloc.runtime.localize.window import WindowConfig

FRAMES = 24


class ConstantBackend(EmbeddingBackend):
    """Embeds every frame as one fixed vector: retrieval is useless (an untrained model), or,
    with the vector of a far-away tile, confidently wrong."""

    name = "constant"

    def __init__(self, identity, vector: np.ndarray) -> None:
        self.identity = identity
        self.vector = l2_normalise(np.asarray(vector, np.float32)[None, :])

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        return np.repeat(self.vector, len(batch), axis=0)


class Records:
    def __init__(self) -> None:
        self.rows = []

    def write(self, record) -> None:
        self.rows.append(record)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flight")
    date1, date2 = write_world_pair(folder, seed=3)
    bank = SatelliteBank.open(build_feature_bank(date1, folder / "bank"))
    return {"folder": folder, "date1": date1, "date2": date2, "bank": bank}


def fly(town, backend, refine: str = "auto", frames: int = FRAMES, misled_to=None, sensor=None, source_out=None):
    records = Records()
    config = LoopConfig(estimator=EstimatorConfig(method="weighted"), window=WindowConfig(radius_m=300.0),
                        refine=RefineConfig(mode=refine))
    loop = LocalizationLoop(backend, town["bank"], config, [records])
    if misled_to is not None:  # a state no verified fit confirmed, as wrong retrieval fixes would leave
        loop.filter.reset(misled_to, 0.0, 20.0)
    options = SyntheticFlightOptions(frames=frames, altitude_m=200.0, pitch_deg=40.0, pattern="straight",
                                     speed_mps=12.0, seed=1)  # across the town
    source = SyntheticFlightSource(str(town["date2"]), options if sensor is None else replace(options, sensor=sensor))
    if source_out is not None:
        source_out.append(source)
    return loop.run(source, max_frames=frames), records.rows


def within(summary, key: str, metres: float = 25.0) -> float:
    """Share of ALL processed frames whose estimate is within `metres` (no estimate = failure)."""
    stats = summary[key]
    return (stats[f"within_{metres:g}m"] or 0.0) * stats["frames"] / summary["frames_processed"]


def test_geometry_keeps_the_track_when_retrieval_is_useless(town):
    useless = ConstantBackend(town["bank"].identity, np.ones(town["bank"].dim))
    with_geometry, records = fly(town, useless)
    without, _ = fly(town, useless, refine="off")
    assert with_geometry["fixes_geometric"] >= FRAMES // 3
    assert within(with_geometry, "error_filtered") >= 0.8
    assert with_geometry["error_fine_fix"]["median_m"] < 3.0
    assert within(without, "error_filtered") < 0.5 * within(with_geometry, "error_filtered")
    verified = [r for r in records if r["fix_source"] == "geometric"]
    for record in verified:
        assert record["refine"] == "verified" and record["inliers"] >= RefineConfig().min_inliers
        xx, xy, yy = record["fix_cov_m2"]
        assert xx > 0 and yy > 0 and xx * yy >= xy * xy  # a covariance, not a constant
        assert record["heading_error_deg"] is not None and abs(record["heading_error_deg"]) < 5.0
    refused = [r for r in records if r["fix_source"] != "geometric"]
    assert all(r["refine"] and r["refine"] != "verified" for r in refused)
    assert {"refine_detect", "refine_match", "refine_fit"} <= set(with_geometry["mean_ms"])


def test_a_verified_fit_reinitialises_a_filter_that_retrieval_misled(town):
    """The filter starts 600 m off and sure of itself (20 m): the first verified fit, found around
    the vehicle's own prior, is far outside its gate and still takes over."""
    bank = town["bank"]
    useless = ConstantBackend(bank.identity, np.ones(bank.dim))
    _, records = fly(town, useless, misled_to=(float(bank.tiles.x.mean()) + 600.0, float(bank.tiles.y.mean())))
    first = next(i for i, r in enumerate(records) if r["fix_source"] == "geometric")
    assert records[first]["status"] == "reinitialised"
    assert records[first]["mahalanobis2"] > 100  # far outside the gate
    assert all(r["filt_error_m"] > 100 for r in records[:first])
    assert np.median([r["filt_error_m"] for r in records[first:]]) < 5.0


def test_verified_fits_measure_a_cheap_compass_heading_error(town):
    """cheap-imu: the reported heading is off by a 5 deg bias plus 8 deg of wandering error. Each
    verified fit measures what the reported heading is off by (and the next frames start from it)."""
    from meanloc.runtime.localize.synthetic import sensor_preset

    useless = ConstantBackend(town["bank"].identity, np.ones(town["bank"].dim))
    sources = []
    _, records = fly(town, useless, sensor=sensor_preset("cheap-imu"), source_out=sources)
    source = sources[0]
    measured = [(r["heading_error_deg"], source.reported[r["frame"]][0] - source.plan[r["frame"]].heading_deg)
                for r in records if r["fix_source"] == "geometric"]
    assert len(measured) >= FRAMES // 3
    errors = [abs((estimate - truth + 180.0) % 360.0 - 180.0) for estimate, truth in measured]
    truths = [abs((truth + 180.0) % 360.0 - 180.0) for _, truth in measured]
    assert np.median(truths) > 3.0  # the compass really is off
    assert np.median(errors) < 1.5 and max(errors) < 6.0  # vs errors of up to ~20 deg


def test_profile_times_the_fine_stage(town, tmp_path, capsys):
    model = export_nano_onnx(tmp_path / "nano.onnx")
    with open_backend(str(model)) as backend:
        build_bank_from_orthophoto(town["date1"], backend, tmp_path / "bank", tile_m=200.0, overlap=0.5,
                                   local_features=DEFAULT_LAYER, progress=False)
    out = tmp_path / "profile"
    assert main(["profile", "--model", str(model), "--bank", str(tmp_path / "bank"), "--iterations", "50",
                 "--warmup", "1", "--out", str(out), "--no-telemetry"]) == 0
    stages = json.loads((out / "report.json").read_text())["results"][0]["stages"]
    for stage in ("refine_detect", "refine_match", "refine_fit"):
        assert stages[stage]["median_ms"] > 0
    assert "refine_detect" in (out / "report.md").read_text()
