"""Geometry of georeferenced orthophotos and of a pinhole drone camera over a flat ground.

- `orthophoto`: an image with a pixel -> metre affine in a projected CRS, a validity mask,
  conversions to/from WGS84 and north-up tile cutting (datasets-and-metrics.md §5.1, §5.7).
- `camera`: pinhole intrinsics, pose -> ground-plane homography and footprint checks (§5.2, §5.4).
- `rectify`: a frame warped into a north-up ground patch (the pose-aware query view).
- `terrain`: heights of a DEM, for height above ground.

The onboard loop, the bank and the simulator (`meanloc.runtime.sim`) all use it, so everything here
is torch-free and Python 3.8 compatible; rasterio and pyproj are imported lazily.
"""
