"""Profiler statistics, Jetson telemetry parsing and the profiling procedure."""

import json
import statistics

import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.backends.base import EmbeddingBackend, l2_normalise
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec
from meanloc.runtime.profiling.profiler import ProfileTarget, profile
from meanloc.runtime.profiling.report import markdown_table, write_report
from meanloc.runtime.profiling.stats import LatencyStats
from meanloc.runtime.profiling.tegrastats import energy_per_inference_mj, parse_tegrastats_line

# Recorded tegrastats lines (deployment.md §8 and jetson_stats' parser fixtures): rail sets differ by board.
ORIN_NANO_NX_JP6 = (
    "08-23-2026 13:57:46 RAM 3595/7607MB (lfb 1x1MB) SWAP 11/3804MB (cached 0MB) CPU [100%@1728,1%@1728,3%@1728,"
    "0%@1728,1%@729,1%@729] GR3D_FREQ 0% cpu@51C soc2@50.562C soc0@51.031C gpu@50.625C tj@51.781C soc1@51.781C "
    "VDD_IN 5832mW/5852mW VDD_CPU_GPU_CV 1307mW/1327mW VDD_SOC 1468mW/1468mW"
)
AGX_ORIN_JP5 = (
    "RAM 5133/30536MB (lfb 6296x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,0%@729,1%@729,0%@729,0%@2201,0%@2201,"
    "0%@2201,0%@2201] EMC_FREQ 1%@2133 GR3D_FREQ 37%@[1300,1300] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.406C "
    "Tboard@33C SOC2@41.968C Tdiode@35.5C SOC0@42.187C CV1@-256C GPU@41.156C tj@45.406C SOC1@41.406C CV2@-256C "
    "VDD_GPU_SOC 4008mW/4008mW VDD_CPU_CV 801mW/801mW VIN_SYS_5V0 3034mW/3034mW VDDQ_VDD2_1V8AO 503mW/503mW"
)
JETPACK7_THREE_VALUES = "RAM 2000/7607MB GR3D_FREQ 12% VDD_IN 5139mW/5139mW/5139mW VDD_SOC 1500mW/1400mW/1450mW"


def test_percentiles_match_an_independent_reference():
    rng = np.random.default_rng(1)
    samples = rng.lognormal(mean=1.0, sigma=0.4, size=997)
    stats = LatencyStats.from_seconds(samples / 1e3, items_per_iteration=4)
    # statistics.quantiles(method="inclusive") is linear interpolation between closest ranks.
    cuts = statistics.quantiles(samples.tolist(), n=100, method="inclusive")
    assert stats.median_ms == pytest.approx(cuts[49])
    assert stats.p90_ms == pytest.approx(cuts[89])
    assert stats.p95_ms == pytest.approx(cuts[94])
    assert stats.p99_ms == pytest.approx(cuts[98])
    assert stats.min_ms == pytest.approx(samples.min()) and stats.max_ms == pytest.approx(samples.max())
    assert stats.throughput_per_s == pytest.approx(4 * 1e3 / samples.mean())


def test_tegrastats_orin_nano_nx_rails_and_energy():
    sample = parse_tegrastats_line(ORIN_NANO_NX_JP6)
    assert sample.rails_mw == {"VDD_IN": 5832.0, "VDD_CPU_GPU_CV": 1307.0, "VDD_SOC": 1468.0}
    assert sample.temperatures_c["tj"] == pytest.approx(51.781)
    assert sample.ram_used_mb == 3595 and sample.gpu_load_pct == 0
    assert len(sample.cpu_loads_pct) == 6
    # VDD_IN is the module input: energy must use it alone, not the sum of all rails.
    energy = energy_per_inference_mj([sample, sample], windows=[(-1.0, 1.0)], inferences=100)
    assert energy["power_source"] == "VDD_IN"
    assert energy["energy_per_inference_mj"] == pytest.approx(5.832 * 2.0 * 1e3 / 100)


def test_tegrastats_agx_orin_rails_summed_without_total_rail():
    sample = parse_tegrastats_line(AGX_ORIN_JP5)
    assert set(sample.rails_mw) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert sample.gpu_load_pct == 37 and sample.gpu_freq_mhz == 1300
    assert sample.emc_load_pct == 1 and sample.emc_freq_mhz == 2133
    assert "CPU" in sample.temperatures_c and "GPU" in sample.temperatures_c
    power, source = sample.total_power_mw()
    assert power == pytest.approx(4008 + 801 + 3034 + 503) and source.startswith("sum of rails")


def test_tegrastats_jetpack7_three_value_rails():
    sample = parse_tegrastats_line(JETPACK7_THREE_VALUES)
    assert sample.rails_mw == {"VDD_IN": 5139.0, "VDD_SOC": 1500.0}


class _SlowNumpyBackend(EmbeddingBackend):
    """A stand-in network: a fixed random projection, with real CPU work to time."""

    name = "numpy-test"

    def __init__(self, size: int = 32, dim: int = 16) -> None:
        self.identity = ModelIdentity("0" * 64, "test", dim, PreprocessSpec(size=size))
        self.projection = np.random.default_rng(0).standard_normal((3 * size * size, dim)).astype(np.float32)

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(batch.reshape(len(batch), -1) @ self.projection)


def test_profile_reports_every_stage_and_refuses_too_few_iterations(tmp_path):
    targets = [ProfileTarget("a", _SlowNumpyBackend()), ProfileTarget("b", _SlowNumpyBackend())]
    with pytest.raises(MeanlocError, match="fewer than the minimum"):
        profile(targets, iterations=10, min_iterations=50)
    searched = []
    report = profile(targets, batch_sizes=(1, 2), warmup=2, iterations=12, min_iterations=12,
                     search=lambda q: searched.append(q.shape), filter_step=lambda q: None)
    assert [(r["label"], r["batch_size"]) for r in report["results"]] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    for result in report["results"]:
        assert {"decode", "preprocess", "inference", "search", "filter", "total"} <= set(result["stages"])
        assert result["iterations"] == 12 and len(result["total_samples_ms"]) == 12
        assert result["profiler_overhead_ms"] > 0
        stages = result["stages"]
        parts = sum(stages[s]["mean_ms"] for s in ("decode", "preprocess", "inference", "search", "filter"))
        assert parts <= stages["total"]["mean_ms"] * 1.0001
    assert (2, 16) in searched
    written = write_report(report, str(tmp_path / "out"))
    assert {p.split("/")[-1] for p in written} == {"report.json", "report.md", "latency.png", "stages.png"}
    assert "| a | 1 | 12 |" in markdown_table(report)


class _DeviceSplitBackend(_SlowNumpyBackend):
    """Reports a CUDA-event-style H2D/inference/D2H split, as the TensorRT backend does."""

    def _embed_chunk(self, batch: np.ndarray) -> np.ndarray:
        import time

        time.sleep(0.004)
        return super()._embed_chunk(batch)

    def stage_timings(self):
        return {"h2d": 0.001, "inference": 0.002, "d2h": 0.001}


def test_device_split_is_not_double_counted():
    report = profile([ProfileTarget("gpu-like", _DeviceSplitBackend())], warmup=1, iterations=5, min_iterations=5)
    stages = report["results"][0]["stages"]
    assert stages["h2d"]["mean_ms"] == pytest.approx(1.0) and stages["d2h"]["mean_ms"] == pytest.approx(1.0)
    device_and_host = sum(stages[s]["mean_ms"] for s in ("decode", "preprocess", "h2d", "inference", "d2h"))
    assert device_and_host <= stages["total"]["mean_ms"] * 1.0001


def test_jtop_readings_become_samples_with_the_same_energy_rule():
    from meanloc.runtime.profiling.tegrastats import jtop_sample

    power = {"rail": {"VDD_IN": {"volt": 5000, "curr": 1200, "power": 6000}, "VDD_SOC": {"power": 1500}},
             "tot": {"power": 6000}}
    temperature = {"tj": {"temp": 52.5, "online": True}, "cv0": {"temp": -256.0, "online": False},
                   "gpu": {"temp": -256.0, "online": True}}
    sample = jtop_sample(power, temperature, 0.0)
    assert sample.rails_mw == {"VDD_IN": 6000.0, "VDD_SOC": 1500.0}
    assert sample.temperatures_c == {"tj": 52.5}
    assert energy_per_inference_mj([sample], [(0.0, 1.0)], 10)["energy_per_inference_mj"] == pytest.approx(600.0)


def test_defect_13_offline_sensors_at_minus_256_are_dropped():
    """tegrastats prints an offline thermal zone as -256 C (rbonghi/jetson_stats#350: the AGX Orin GPU
    zone while idle); averaging it in gives nonsense temperatures."""
    sample = parse_tegrastats_line(AGX_ORIN_JP5)
    assert not {"CV0", "CV1", "CV2"} & set(sample.temperatures_c)
    assert min(sample.temperatures_c.values()) > 0 and len(sample.temperatures_c) == 8


def test_defect_6_energy_counts_only_each_targets_timed_iterations(tmp_path, monkeypatch):
    """Energy per inference used one mean power over the whole run (warm-up, JPEG encoding, the timer
    loop) and one figure for every compared target. Power here depends on who is running: an iteration
    of target a draws 2 W, of b 8 W, and everything else (frame encoding, timer loop) 50 W."""
    import argparse
    import time

    import meanloc.runtime.backends as backends
    from meanloc.runtime.profiling import profile_cli, profiler, tegrastats

    activity = []  # (start, end, milliwatts) of every iteration, on time.monotonic()

    class PoweredBackend(_SlowNumpyBackend):
        def __init__(self, milliwatts):
            super().__init__()
            self.milliwatts = milliwatts

        def _embed_chunk(self, batch):
            time.sleep(0.002)
            return super()._embed_chunk(batch)

    run_iteration = profiler.run_iteration

    def powered_iteration(backend, *args):
        start = time.monotonic()
        timeline = run_iteration(backend, *args)
        activity.append((start, time.monotonic(), backend.milliwatts))
        return timeline

    class RecordedSampler:
        """Samples every 0.2 ms from start to stop: the running target's power, else 50 W."""

        available = True

        def start(self):
            self.started = time.monotonic()

        def stop(self):
            stopped, samples, t = time.monotonic(), [], self.started
            while t < stopped:
                power = next((mw for begin, end, mw in activity if begin <= t <= end), 50000.0)
                samples.append(tegrastats.TegrastatsSample(time_s=t, rails_mw={"VDD_IN": power}))
                t += 0.0002
            return samples

    models = {"a.onnx": 2000.0, "b.onnx": 8000.0}
    monkeypatch.setattr(backends, "open_backend", lambda path, **kwargs: PoweredBackend(models[path]))
    monkeypatch.setattr(tegrastats, "TegrastatsSampler", RecordedSampler)
    monkeypatch.setattr(profiler, "run_iteration", powered_iteration)
    parser = argparse.ArgumentParser()
    profile_cli.configure(parser)  # every option's default, as `meanloc profile` parses them
    args = parser.parse_args(["--model", "a.onnx", "--model", "b.onnx", "--batch", "1", "--warmup", "3",
                              "--iterations", "20", "--min-iterations", "20", "--bank-size", "0",
                              "--out", str(tmp_path / "prof")])
    assert profile_cli.run(args) == 0
    report = json.loads((tmp_path / "prof" / "report.json").read_text())
    by_label = {result["label"].split(" ")[0]: result for result in report["results"]}
    for label, milliwatts in models.items():
        energy = by_label[label]["energy"]
        # Only the target's own samples, give or take one that lands in the microseconds between the
        # profiler's clock read and the iteration's (never the 50 W of setup, warm-up or the other target).
        assert milliwatts <= energy["mean_power_mw"] < milliwatts * 1.25, label
        assert energy["inferences"] == 20 and 20 * 0.002 <= energy["timed_s"] < 5.0
        assert energy["energy_per_inference_mj"] == pytest.approx(energy["mean_power_mw"] * energy["timed_s"] / 20)
    assert "timed_windows" not in by_label["a.onnx"]
