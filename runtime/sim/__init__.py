"""The flight simulator: synthetic drone frames rendered from an orthophoto, with simulated sensors.

- `render`: a drone's oblique view of an orthophoto (datasets-and-metrics.md §5.3);
- `appearance`: sensor and atmosphere effects applied to a rendered view (§5.6);
- `flight`: flight plans and a drifting dead-reckoning prior (§5.5);
- `sensors`: the attitude and height errors a vehicle reports, as presets;
- `terrain`: synthetic rolling hills under a flight.

Training's synthetic world renders its drone views with it. Onboard code reaches it only through
the `synthetic:` frame source (`meanloc.runtime.localize.synthetic`), an import-linter contract in
pyproject.toml. Python 3.8 compatible and torch-free.
"""
