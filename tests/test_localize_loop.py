"""The localization loop on real video through a real bank, with a deterministic stand-in embedder."""

import gc
import json
import tracemalloc

import numpy as np
import pytest
from localize_support import (
    PoolingBackend,
    build_world_bank,
    crop,
    to_lonlat,
    track,
    world_image,
    write_video,
)

from meanloc.errors import ArtifactMismatchError
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.frames import Frame, FrameSource
from meanloc.runtime.localize.geodesy import geodesic_distance_m
from meanloc.runtime.localize.loop import LocalizationLoop, LoopConfig, RateLimiter
from meanloc.runtime.localize.sinks import GeoJsonTrackSink, JsonlSink, Sink
from meanloc.runtime.localize.sources import open_source
from meanloc.runtime.localize.window import WindowConfig

N_FRAMES = 30


@pytest.fixture(scope="module")
def world():
    return world_image()


@pytest.fixture(scope="module")
def bank(world, tmp_path_factory):
    return SatelliteBank.open(build_world_bank(tmp_path_factory.mktemp("bank"), PoolingBackend(), world), device="cpu")


@pytest.fixture(scope="module")
def video(world, tmp_path_factory):
    frames = [crop(world, x, y, 64) for x, y in track(N_FRAMES)]
    return write_video(tmp_path_factory.mktemp("video") / "flight.avi", frames, fps=1.0)


class ListSource(FrameSource):
    """Frames with truth from the track, optionally repeated (for long runs)."""

    description = "track"

    def __init__(self, world, n, repeat=1):
        super().__init__()
        self.items = [(crop(world, x, y, 64), to_lonlat(x, y)) for x, y in track(n)]
        self.repeat = repeat

    def __iter__(self):
        for i in range(len(self.items) * self.repeat):
            image, truth = self.items[i % len(self.items)]
            self.stats.frames += 1
            yield Frame(i, float(i), image, truth_lonlat=truth)


class CountingSink(Sink):
    def __init__(self):
        self.count = 0
        self.closed = False

    def write(self, record):
        json.dumps(record, allow_nan=False)  # every record must be valid JSON
        self.count += 1

    def close(self):
        self.closed = True


def _errors(records, key_lat, key_lon, positions):
    return [geodesic_distance_m(r[key_lon], r[key_lat], *to_lonlat(*positions[r["frame"]]))
            for r in records if r[key_lat] is not None]


def test_loop_localises_a_real_video_and_logs_raw_and_filtered(bank, video, tmp_path):
    out = tmp_path / "out.jsonl"
    loop = LocalizationLoop(PoolingBackend(), bank, LoopConfig(estimator=EstimatorConfig(min_margin=0.0)),
                            [JsonlSink(str(out))])
    summary = loop.run(open_source(str(video)))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == N_FRAMES == summary["frames_processed"] == summary["frames_read"]
    positions = track(N_FRAMES)
    raw = _errors(records, "fix_lat", "fix_lon", positions)
    filtered = _errors(records, "filt_lat", "filt_lon", positions)
    assert len(raw) == len(filtered) == N_FRAMES
    # Tiles every 32 m: the nearest tile centre is at most 22.6 m away.
    assert np.median(raw) < 25.0 and np.median(filtered) < 25.0
    assert all(r["lat"] == r["filt_lat"] for r in records)  # the filter is the output by default
    assert summary["fixes_accepted"] + summary["fixes_rejected"] == summary["fixes_confident"]
    assert set(summary["mean_ms"]) >= {"decode", "preprocess", "embed", "search", "filter", "sinks"}


def test_truth_metrics_for_filter_on_and_off_in_one_run(bank, world):
    loop = LocalizationLoop(PoolingBackend(), bank, LoopConfig(use_filter=False), [CountingSink()])
    summary = loop.run(ListSource(world, N_FRAMES))
    assert summary["truth_point"].startswith("look-at") and "geodesic" in summary["distance"]
    assert summary["output"] == "raw fix"
    assert summary["error_raw_fix"]["frames"] == N_FRAMES
    assert summary["error_filtered"]["frames"] > 0
    assert summary["error_raw_fix"]["median_m"] < 25.0
    assert 0.5 < summary["error_raw_fix"]["within_25m"] <= summary["error_raw_fix"]["within_50m"] <= 1.0


def test_non_finite_embeddings_skip_the_frame(bank, world):
    backend = PoolingBackend()
    backend.nan_frames = (3, 7)
    sink = CountingSink()
    summary = LocalizationLoop(backend, bank, LoopConfig(), [sink]).run(ListSource(world, 10))
    assert summary["frames_nonfinite"] == 2 and summary["frames_processed"] == 8 and sink.count == 8
    assert sink.closed


@pytest.mark.parametrize("backend, message", [
    (PoolingBackend(checkpoint="other-weights"), "different model weights"),
    (PoolingBackend(dim=96), "embedding dimension"),
    (PoolingBackend(size=64), "preprocessing differs"),
])
def test_bank_model_mismatch_refuses_to_start(bank, backend, message):
    with pytest.raises(ArtifactMismatchError, match=message) as info:
        LocalizationLoop(backend, bank, LoopConfig(), [])
    assert "\n" not in str(info.value)


def test_windowed_search_follows_the_prior_then_the_filter(bank, world):
    start = track(1)[0]
    config = LoopConfig(window=WindowConfig(radius_m=120.0), prior_lonlat=to_lonlat(*start),
                        estimator=EstimatorConfig(min_margin=0.0))
    loop = LocalizationLoop(PoolingBackend(), bank, config, [CountingSink()])
    summary = loop.run(ListSource(world, N_FRAMES))
    assert summary["searches_window"] == N_FRAMES and summary["searches_global"] == 0
    assert summary["error_filtered"]["median_m"] < 25.0


def test_rate_limiter_decimates_and_drops_stale_frames():
    now = [0.0]
    limiter = RateLimiter(5.0, lambda: now[0])
    admitted = [i for i in range(30) if limiter.admit(i / 30.0)]  # instant processing of a 30 fps stream
    assert admitted == [0, 6, 12, 18, 24]
    now[0] = 0.0
    slow = RateLimiter(5.0, lambda: now[0])
    kept = []
    for i in range(60):
        now[0] = max(now[0], i / 30.0)  # a frame cannot be processed before it exists
        if slow.admit(i / 30.0):
            kept.append(i)
            now[0] += 0.5  # processing takes 0.5 s: the loop can only keep up with 2 fps
    # After frame 0 each frame ends 0.5 s later; the next one taken is the first at most one period
    # (0.2 s) behind real time, so the loop settles at the 2 fps it can sustain.
    assert kept == [0, 9, 24, 39, 54]


WARM_UP_FRAMES = 200


@pytest.mark.parametrize("frames", [1000, pytest.param(10000, marks=pytest.mark.slow)])
def test_memory_stays_flat_over_many_frames(bank, world, tmp_path, frames):
    sinks = [CountingSink(), JsonlSink(str(tmp_path / "long.jsonl")), GeoJsonTrackSink(str(tmp_path / "t.geojson"))]
    loop = LocalizationLoop(PoolingBackend(), bank, LoopConfig(window=WindowConfig(radius_m=150.0)), sinks)
    # The track restarts every 50 frames: jumps, rejections and filter resets are exercised too.
    source = ListSource(world, 50, repeat=frames // 50)
    measured = frames - WARM_UP_FRAMES
    tracemalloc.start()
    try:
        stream = loop.timed_frames(source)
        for i, (frame, decode_s) in enumerate(stream):
            if i == WARM_UP_FRAMES:  # caches and first allocations of every code path are done
                gc.collect()  # count only live memory, not cycles the collector has not reached yet
                baseline = tracemalloc.get_traced_memory()[0]
            record = loop.process(frame, decode_s)
            for sink in sinks:
                sink.write(record)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        loop.close_sinks()
    assert loop.counters.frames_processed == frames and loop.counters.filter_reinitialisations > 0
    # Slack for the sinks' I/O buffers (2 x 8 KiB) and numpy's bounded caches of small buffers
    # (up to ~30 KB seen); keeping 80 bytes per frame (a small tuple) would exceed it over 800
    # frames, 7 bytes per frame over the slow 10,000-frame run.
    assert growth < 64 * 1024, f"loop memory grew by {growth} bytes over {measured} frames"


def test_a_wrong_prior_falls_back_to_global_search_and_recovers(bank, world, tmp_path):
    out = tmp_path / "out.jsonl"
    config = LoopConfig(window=WindowConfig(radius_m=100.0, max_low_confidence=3), prior_lonlat=to_lonlat(60000.0, 0.0))
    summary = LocalizationLoop(PoolingBackend(), bank, config, [JsonlSink(str(out))]).run(ListSource(world, 12))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The window around a prior 60 km off holds no tile: three empty frames, then a global search.
    assert [r["status"] for r in records[:3]] == ["no_fix"] * 3
    assert records[3]["search"] == "global" and records[3]["fix_lat"] is not None
    assert all(r["search"] == "window" for r in records[4:])  # re-centred on the filter's track
    assert summary["error_filtered"]["median_m"] < 25.0
