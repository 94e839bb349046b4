"""Bounded-memory statistics for long flights.

The loop may run for hours, so nothing here grows with the number of frames: errors go into a
fixed histogram (0.25 m bins up to 20 km; median/p90 are read from it, numpy-style, to within a bin),
timings into running means. Python 3.8 compatible.
"""

from typing import Dict, Optional, Sequence

import numpy as np

ACCURACY_THRESHOLDS_M = (25.0, 50.0)


class ErrorStats:
    """Median, p90, mean, max of position errors (metres) and the share under each threshold."""

    def __init__(self, bin_m: float = 0.25, max_m: float = 20000.0,
                 thresholds_m: Sequence[float] = ACCURACY_THRESHOLDS_M) -> None:
        self.bin_m = float(bin_m)
        self.counts = np.zeros(int(np.ceil(max_m / bin_m)) + 1, dtype=np.int64)  # last bin: overflow
        self.thresholds_m = tuple(float(t) for t in thresholds_m)
        self.within = [0 for _ in self.thresholds_m]
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, error_m: float) -> None:
        index = min(int(error_m / self.bin_m), len(self.counts) - 1)
        self.counts[index] += 1
        self.n += 1
        self.total += error_m
        self.max = max(self.max, error_m)
        for i, threshold in enumerate(self.thresholds_m):
            if error_m <= threshold:
                self.within[i] += 1

    def quantile(self, q: float) -> Optional[float]:
        """numpy's default (linear) percentile, each value known to within one bin."""
        if self.n == 0:
            return None
        cumulative = np.cumsum(self.counts)
        position = q * (self.n - 1)
        low = self._value_at_rank(cumulative, int(np.floor(position)))
        high = self._value_at_rank(cumulative, int(np.ceil(position)))
        return float(low + (high - low) * (position - np.floor(position)))

    def _value_at_rank(self, cumulative: np.ndarray, rank: int) -> float:
        # Values inside a bin are taken as evenly spread over it; never beyond the exact maximum.
        index = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[index - 1]) if index > 0 else 0
        fraction = (rank - before + 0.5) / int(self.counts[index])
        return float(min((index + fraction) * self.bin_m, self.max))

    def summary(self) -> Dict[str, Optional[float]]:
        result: Dict[str, Optional[float]] = {
            "frames": self.n,
            "median_m": self.quantile(0.5),
            "p90_m": self.quantile(0.9),
            "mean_m": self.total / self.n if self.n else None,
            "max_m": self.max if self.n else None,
        }
        for threshold, count in zip(self.thresholds_m, self.within):
            result["within_{:g}m".format(threshold)] = count / self.n if self.n else None
        return result


class RunningMeans:
    """Mean seconds per named stage, over the frames that went through it."""

    def __init__(self) -> None:
        self.totals: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, timings: Dict[str, float]) -> None:
        for name, seconds in timings.items():
            self.totals[name] = self.totals.get(name, 0.0) + seconds
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> Dict[str, float]:
        return {name: self.totals[name] / self.counts[name] for name in self.totals}
