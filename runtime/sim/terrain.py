"""Synthetic terrain for simulated flights: smooth, seeded rolling hills as a `Terrain`.

The rendering stays flat (datasets-and-metrics.md §5.8): the terrain only changes which height the
simulated sensors report. Python 3.8 compatible and torch-free.
"""

import math
from typing import Tuple

import numpy as np

from meanloc.runtime.geo.terrain import Terrain


def synthetic_terrain(bounds: Tuple[float, float, float, float], crs: str, relief_m: float, seed: int,
                      cell_m: float = 20.0, base_m: float = 400.0) -> Terrain:
    """Smooth rolling hills over `bounds` (base height `base_m`, about +-`relief_m`), seeded."""
    min_x, min_y, max_x, max_y = bounds
    cols = math.ceil((max_x - min_x) / cell_m) + 1
    rows = math.ceil((max_y - min_y) / cell_m) + 1
    rng = np.random.default_rng([seed, 4242])
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64) * cell_m
    heights = np.zeros((rows, cols))
    for wavelength, weight in ((1500.0, 1.0), (600.0, 0.5), (250.0, 0.25)):
        for _ in range(2):
            angle = rng.uniform(0.0, 2.0 * math.pi)
            phase = rng.uniform(0.0, 2.0 * math.pi)
            heights += weight * np.sin(2.0 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / wavelength + phase)
    heights *= relief_m / max(1e-9, float(np.abs(heights).max()))
    transform = np.array([[cell_m, 0.0, min_x - cell_m / 2.0], [0.0, -cell_m, max_y + cell_m / 2.0], [0.0, 0.0, 1.0]])
    return Terrain(base_m + heights, transform, crs, "synthetic terrain seed={} relief={:g} m".format(seed, relief_m))
