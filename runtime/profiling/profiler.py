"""The profiling procedure: warm-up, then timed iterations of every pipeline stage.

Stages per iteration: decode (JPEG bytes -> BGR), preprocess, H2D / inference / D2H (split by
the backend's CUDA events where it has them, else one "inference" stage), bank search, the fine
stage's own stages where the bank has local features (detect, match, fit: `runtime.fine`) and
filter. CPU stages are timed with `perf_counter_ns`. In compare mode the targets run
interleaved, one iteration each per round, so clock or thermal drift affects all alike. Each
target's timed iterations are also kept as `time.monotonic()` windows, the clock power samples are
stamped with, so its energy counts only its own timed work (`tegrastats.energy_per_inference_mj`).
Python 3.8 compatible; never imports torch.
"""

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..backends.base import EmbeddingBackend
from ..geo.rectify import CameraAttitude
from ..images import decode_image
from ..preprocess import preprocess_batch
from ..query_view import prepare_query
from .stats import LatencyStats

STAGES = ("decode", "preprocess", "h2d", "inference", "d2h", "search", "refine_detect", "refine_match", "refine_fit",
          "filter")
DEFAULT_MIN_ITERATIONS = 50
# Per result: the (start, end) time.monotonic() of each timed iteration; consumed by the energy figure.
TIMED_WINDOWS = "timed_windows"
# Profiled frames carry no attitude; the rectification's cost does not depend on it, so any
# oblique pose inside the synthetic benchmark's range times it fairly.
PROFILE_ATTITUDE = CameraAttitude(altitude_m=200.0, pitch_deg=40.0, yaw_deg=30.0, hfov_deg=70.0)

SearchFn = Callable[[np.ndarray], Any]
FilterFn = Callable[[np.ndarray], Any]
# The fine stage on one decoded frame; returns its own seconds per stage (detect, match, fit).
RefineFn = Callable[[np.ndarray], Dict[str, float]]


@dataclass
class ProfileTarget:
    label: str
    backend: EmbeddingBackend


def synthetic_jpeg_frames(count: int, width: int = 640, height: int = 480, seed: int = 0) -> List[bytes]:
    """Camera-sized JPEG frames with aerial-like texture, so decode costs what a real frame costs."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        noise = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        image = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 90])
        if not ok:
            raise MeanlocError("OpenCV could not encode a JPEG test frame")
        frames.append(encoded.tobytes())
    return frames


class _Timeline:
    """Seconds per stage for one iteration."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def add(self, stage: str, start_ns: int, end_ns: int) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (end_ns - start_ns) * 1e-9


def run_iteration(
    backend: EmbeddingBackend,
    frames: Sequence[bytes],
    search: Optional[SearchFn],
    filter_step: Optional[FilterFn],
    refine: Optional[RefineFn] = None,
) -> Dict[str, float]:
    clock = time.perf_counter_ns
    timeline = _Timeline()
    t0 = clock()
    decoded = [decode_image(data, "profiling frame") for data in frames]  # what the loop pays per file frame
    t1 = clock()
    spec, view = backend.identity.preprocess, backend.identity.query_view
    images = decoded
    if view.rectified:  # pose-aware models pay for the rectification in this stage
        images = [prepare_query(image, view, PROFILE_ATTITUDE, spec.size) for image in images]
    batch = preprocess_batch(images, spec)
    t2 = clock()
    embeddings = backend.embed(batch)
    t3 = clock()
    timeline.add("decode", t0, t1)
    timeline.add("preprocess", t1, t2)
    device_split = backend.stage_timings()
    if device_split:
        # The backend measured H2D/compute/D2H with CUDA events; keep host overhead in "inference".
        device_total = sum(device_split.values())
        timeline.seconds.update(device_split)
        timeline.seconds["inference"] = max(0.0, (t3 - t2) * 1e-9 - device_total) + device_split.get("inference", 0.0)
    else:
        timeline.add("inference", t2, t3)
    if search is not None:
        t4 = clock()
        search(embeddings)
        timeline.add("search", t4, clock())
    if refine is not None:
        for image in decoded:
            for stage, seconds in refine(image).items():
                timeline.seconds["refine_" + stage] = timeline.seconds.get("refine_" + stage, 0.0) + seconds
    if filter_step is not None:
        t5 = clock()
        filter_step(embeddings)
        timeline.add("filter", t5, clock())
    timeline.seconds["total"] = (clock() - t0) * 1e-9
    return timeline.seconds


def measure_timer_overhead_s(stages: int, repeats: int = 20000) -> float:
    """Cost of the instrumentation itself per iteration: `stages` pairs of clock reads."""
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(repeats):
        for _ in range(stages):
            clock()
            clock()
    return (clock() - start) * 1e-9 / repeats


def profile(
    targets: Sequence[ProfileTarget],
    batch_sizes: Sequence[int] = (1,),
    warmup: int = 20,
    iterations: Optional[int] = 200,
    duration_s: Optional[float] = None,
    min_iterations: int = DEFAULT_MIN_ITERATIONS,
    search: Optional[SearchFn] = None,
    filter_step: Optional[FilterFn] = None,
    frames: Optional[Sequence[bytes]] = None,
    progress: Optional[Callable[[int], None]] = None,
    refine: Optional[RefineFn] = None,
) -> Dict[str, Any]:
    """Profile every target at every batch size; returns the report dict (see `report.py`)."""
    if iterations is not None and iterations < min_iterations:
        raise MeanlocError(
            "refusing to profile with {} iterations: fewer than the minimum {} gives unreliable "
            "percentiles (use --iterations >= {} or lower --min-iterations knowingly)".format(
                iterations, min_iterations, min_iterations
            )
        )
    frames = list(frames) if frames is not None else synthetic_jpeg_frames(max(batch_sizes))
    results: List[Dict[str, Any]] = []
    for batch_size in batch_sizes:
        batch_frames = [frames[i % len(frames)] for i in range(batch_size)]
        for target in targets:
            for _ in range(warmup):
                run_iteration(target.backend, batch_frames, search, filter_step, refine)
        samples: Dict[str, List[Dict[str, float]]] = {t.label: [] for t in targets}
        windows: Dict[str, List[Tuple[float, float]]] = {t.label: [] for t in targets}
        deadline = time.monotonic() + duration_s if duration_s else None
        done = 0
        while True:
            for target in targets:  # interleaved: drift hits every target alike
                started = time.monotonic()
                samples[target.label].append(run_iteration(target.backend, batch_frames, search, filter_step, refine))
                windows[target.label].append((started, time.monotonic()))
            done += 1
            if progress:
                progress(1)
            if deadline is not None:
                if time.monotonic() >= deadline and done >= min_iterations:
                    break
            elif done >= (iterations or 0):
                break
        overhead_s = measure_timer_overhead_s(len(STAGES))
        for target in targets:
            result = _summarise(target, batch_size, samples[target.label], overhead_s)
            result[TIMED_WINDOWS] = windows[target.label]
            results.append(result)
    return {"results": results, "stages": list(STAGES), "timer": "time.perf_counter_ns (CPU); CUDA events (GPU)"}


def _summarise(target: ProfileTarget, batch_size: int, samples: List[Dict[str, float]], overhead_s: float) -> Dict[str, Any]:
    stage_stats = {}
    for stage in STAGES + ("total",):
        values = [sample[stage] for sample in samples if stage in sample]
        if values:
            stage_stats[stage] = LatencyStats.from_seconds(values, batch_size).to_dict()
    inference_mean_s = stage_stats["inference"]["mean_ms"] / 1e3
    return {
        "label": target.label,
        "backend": target.backend.describe(),
        "batch_size": batch_size,
        "iterations": len(samples),
        "stages": stage_stats,
        "total_samples_ms": [sample["total"] * 1e3 for sample in samples],
        "profiler_overhead_ms": overhead_s * 1e3,
        "profiler_overhead_pct_of_inference": 100.0 * overhead_s / inference_mean_s if inference_mean_s > 0 else None,
    }
