"""Latency statistics over timed iterations. Python 3.8 compatible."""

from dataclasses import asdict, dataclass
from typing import Dict, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latency in milliseconds, plus throughput in items per second."""

    count: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cov: float  # coefficient of variation; trtexec warns above a few percent
    throughput_per_s: float

    @classmethod
    def from_seconds(cls, samples_s: Sequence[float], items_per_iteration: int = 1) -> "LatencyStats":
        samples = np.asarray(samples_s, dtype=np.float64) * 1e3
        if samples.size == 0:
            raise ValueError("no latency samples")
        # numpy's default (linear interpolation between closest ranks), same as trtexec's percentiles
        p50, p90, p95, p99 = np.percentile(samples, PERCENTILES)
        mean = float(samples.mean())
        std = float(samples.std())
        return cls(
            count=int(samples.size),
            min_ms=float(samples.min()),
            mean_ms=mean,
            median_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            max_ms=float(samples.max()),
            std_ms=std,
            cov=std / mean if mean > 0 else 0.0,
            throughput_per_s=items_per_iteration * 1e3 / mean if mean > 0 else 0.0,
        )

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)
