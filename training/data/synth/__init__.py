"""Synthetic cross-view data: a procedural georeferenced world and a University-1652-layout writer.

- `world`: seeded procedural orthophoto (two co-registered dates).
- `writer`: locations, spatially disjoint splits, satellite tiles and oblique drone views,
  written as a University-1652 tree with `locations.csv` and `dataset.json`.

See datasets-and-metrics.md §5. The flat-world limits of §5.8 apply to everything here.
"""
