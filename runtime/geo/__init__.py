"""Geometry of georeferenced orthophotos and of a pinhole drone camera over a flat ground.

- `orthophoto`: an image with a pixel -> metre affine in a projected CRS, a validity mask,
  conversions to/from WGS84 and north-up tile cutting (datasets-and-metrics.md §5.1, §5.7).
- `camera`: pinhole intrinsics, pose -> ground-plane homography, oblique view rendering and
  footprint checks (§5.2-§5.4).
- `appearance`: sensor and atmosphere effects applied after warping (§5.6).
- `flight`: flight-sequence pose schedules and a noisy position prior (§5.5).

Everything here is torch-free and Python 3.8 compatible, because the onboard loop renders
synthetic flights and cuts bank tiles with it. rasterio and pyproj are imported lazily.
"""
