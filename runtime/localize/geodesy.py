"""Geodesic distances for error metrics (§4.2 of datasets-and-metrics.md: state the distance used).

Errors against the truth are geodesic metres on the WGS84 ellipsoid (pyproj.Geod, Karney's
algorithm). pyproj is only needed when the source knows the truth (synthetic flights), so the
onboard loop itself runs without it. Python 3.8 compatible.
"""

from typing import Any, Optional

from meanloc.errors import MissingDependencyError

DISTANCE_METHOD = "geodesic on WGS84 (pyproj.Geod)"

_GEOD: Optional[Any] = None


def geodesic_distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    global _GEOD
    if _GEOD is None:
        try:
            import pyproj
        except ImportError:
            raise MissingDependencyError("error metrics against the truth need pyproj: pip install pyproj") from None
        _GEOD = pyproj.Geod(ellps="WGS84")
    _, _, distance = _GEOD.inv(lon1, lat1, lon2, lat2)
    return float(distance)
