"""One local metric frame for a whole bank: an East-North-Up tangent plane on the WGS84 ellipsoid.

Tiles of a bank may come from orthophotos in different CRSs (and merged banks from several
areas), but windowed search, distances and the localization filter need one metric frame.
A tangent plane at the bank's centre is exact at the origin and its distances stay within a few
parts per million tens of kilometres away, needs only numpy (no pyproj on board) and is
invertible, so the filter can work in metres and report lat/lon.
Python 3.8 compatible.
"""

from typing import Tuple

import numpy as np

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
WGS84_B = WGS84_A * (1.0 - WGS84_F)
WGS84_EP2 = (WGS84_A**2 - WGS84_B**2) / WGS84_B**2


def _geodetic_to_ecef(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack(
        [n * np.cos(lat) * np.cos(lon), n * np.cos(lat) * np.sin(lon), n * (1.0 - WGS84_E2) * np.sin(lat)],
        axis=-1,
    )


def _ecef_to_geodetic(ecef: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    # Bowring's closed form: sub-millimetre for points near the ellipsoid surface.
    x, y, z = ecef[..., 0], ecef[..., 1], ecef[..., 2]
    p = np.hypot(x, y)
    theta = np.arctan2(z * WGS84_A, p * WGS84_B)
    lat = np.arctan2(
        z + WGS84_EP2 * WGS84_B * np.sin(theta) ** 3, p - WGS84_E2 * WGS84_A * np.cos(theta) ** 3
    )
    lon = np.arctan2(y, x)
    return np.degrees(lat), np.degrees(lon)


class LocalFrame:
    """East-North tangent plane (metres) at (lat0, lon0); x = east, y = north."""

    def __init__(self, lat0: float, lon0: float) -> None:
        if not (-90.0 <= lat0 <= 90.0 and -180.0 <= lon0 <= 180.0):
            raise ValueError("local frame origin out of range: lat {} lon {}".format(lat0, lon0))
        self.lat0 = float(lat0)
        self.lon0 = float(lon0)
        lat, lon = np.radians(self.lat0), np.radians(self.lon0)
        self._origin = _geodetic_to_ecef(np.array(self.lat0), np.array(self.lon0))
        # Rows: unit east, north and up vectors of the tangent plane, in ECEF.
        self._rotation = np.array(
            [
                [-np.sin(lon), np.cos(lon), 0.0],
                [-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)],
                [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)],
            ]
        )

    def to_xy(self, lat_deg, lon_deg) -> Tuple[np.ndarray, np.ndarray]:
        """Ground points (on the ellipsoid) to east/north metres."""
        enu = (_geodetic_to_ecef(lat_deg, lon_deg) - self._origin) @ self._rotation.T
        return enu[..., 0], enu[..., 1]

    def to_latlon(self, x, y) -> Tuple[np.ndarray, np.ndarray]:
        """East/north metres back to lat/lon: the inverse of `to_xy`, which drops the up component,
        so the point is moved along the frame's up axis until it meets the ellipsoid."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        plane = np.stack([x, y, np.zeros_like(x)], axis=-1) @ self._rotation + self._origin
        up = self._rotation[2]
        # |plane + t*up| on the ellipsoid ((X^2+Y^2)/a^2 + Z^2/b^2 = 1) is a quadratic in t.
        weights = np.array([1.0 / WGS84_A**2, 1.0 / WGS84_A**2, 1.0 / WGS84_B**2])
        qa = float(np.sum(weights * up * up))
        qb = 2.0 * np.sum(weights * plane * up, axis=-1)
        qc = np.sum(weights * plane * plane, axis=-1) - 1.0
        t = (-qb + np.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa)  # the root near the plane
        return _ecef_to_geodetic(plane + t[..., None] * up)

    def to_dict(self):
        return {"type": "enu_tangent_plane", "ellipsoid": "WGS84", "lat0": self.lat0, "lon0": self.lon0}

    @classmethod
    def centred_on(cls, lat_deg: np.ndarray, lon_deg: np.ndarray) -> "LocalFrame":
        """A frame at the middle of the points' lat/lon extent."""
        if len(lat_deg) == 0:
            raise ValueError("cannot centre a local frame on zero points")
        return cls(
            (float(np.min(lat_deg)) + float(np.max(lat_deg))) / 2.0,
            (float(np.min(lon_deg)) + float(np.max(lon_deg))) / 2.0,
        )
