"""MAVLink `GPS_INPUT` sink: feed the visual fix to an ArduPilot or PX4 autopilot as a GPS.

ArduPilot: set `GPS1_TYPE = 14` (MAV; `GPS_TYPE` before 4.6) so the autopilot takes GPS_INPUT
as its first GPS, keep `EK3_SRC1_POSXY = 3` (GPS), and route the UDP link in with
`SERIALn_PROTOCOL = 2` or through mavproxy/mavlink-router (e.g. `udpout:<fc-ip>:14550`).
PX4 accepts GPS_INPUT on any MAVLink instance as an additional GPS (`SENS_GPS_PRIME` chooses
which GPS the EKF uses).

What is sent:
* lat/lon in 1e-7 degrees of the vehicle (the loop's output minus the camera's look-at offset);
  altitude, vertical/velocity fields are flagged as ignored (we do not estimate them), unless the frame carried an altitude;
* fix_type 3 (3D) when the estimate is trustworthy (confident fix or a filter state), else 1
  (no fix), so the autopilot falls back to its own sources;
* horiz_accuracy (m) from the filter covariance or the fix noise, and an HDOP-like value
  horiz_accuracy / 5 m (a typical GPS user-range error), clipped to [0.5, 50];
* time_week / time_week_ms in GPS time: seconds since 1980-01-06 plus 18 leap seconds.

Python 3.8 compatible; pymavlink is imported only when this sink is used.
"""

import time
from typing import Any, Callable, Dict, Optional, Tuple

from meanloc.errors import MeanlocError, MissingDependencyError

from .sinks import Sink

GPS_EPOCH_UNIX_S = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
SECONDS_PER_WEEK = 7 * 24 * 3600
UERE_M = 5.0

FIX_NONE = 1
FIX_2D = 2
FIX_3D = 3


def gps_week_and_ms(unix_time_s: float) -> Tuple[int, int]:
    gps_seconds = unix_time_s - GPS_EPOCH_UNIX_S + GPS_LEAP_SECONDS
    week = int(gps_seconds // SECONDS_PER_WEEK)
    week_ms = round((gps_seconds - week * SECONDS_PER_WEEK) * 1000.0)
    return week, week_ms


def _pymavlink_util():  # type: ignore[no-untyped-def]
    try:
        from pymavlink import mavutil
    except ImportError:
        raise MissingDependencyError("the MAVLink sink needs pymavlink: pip install pymavlink") from None
    return mavutil


class MavlinkGpsInputSink(Sink):
    def __init__(self, url: str, gps_id: int = 0, source_system: int = 1, source_component: int = 220,
                 wall_clock: Callable[[], float] = time.time) -> None:
        mavutil = _pymavlink_util()
        if not url.startswith(("udpout:", "udpin:", "udp:", "tcp:", "serial:", "/dev/")):
            raise MeanlocError("--mavlink expects a pymavlink connection string such as udpout:127.0.0.1:14550, "
                               "got {!r}".format(url))
        try:
            self._connection: Any = mavutil.mavlink_connection(
                url, source_system=source_system, source_component=source_component, dialect="common"
            )
        except Exception as exc:  # pymavlink raises bare socket/serial errors
            raise MeanlocError("cannot open MAVLink connection {}: {}".format(url, exc)) from exc
        self._mavlink = mavutil.mavlink
        self._gps_id = gps_id
        self._wall_clock = wall_clock
        self._closed = False

    def write(self, record: Dict[str, Any]) -> None:
        mav = self._mavlink
        # The vehicle's position, not the camera's look-at point (they differ for an oblique camera).
        lat, lon = record.get("vehicle_lat", record.get("lat")), record.get("vehicle_lon", record.get("lon"))
        accuracy: Optional[float] = record.get("accuracy_m")
        trusted = lat is not None and lon is not None and bool(record.get("trusted"))
        altitude = record.get("altitude_m")
        ignore = (mav.GPS_INPUT_IGNORE_FLAG_VDOP | mav.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
                  | mav.GPS_INPUT_IGNORE_FLAG_VEL_VERT | mav.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY
                  | mav.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY)
        if altitude is None:
            ignore |= mav.GPS_INPUT_IGNORE_FLAG_ALT
        if accuracy is None:
            ignore |= mav.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY | mav.GPS_INPUT_IGNORE_FLAG_HDOP
        now = self._wall_clock()
        week, week_ms = gps_week_and_ms(now)
        hdop = min(max((accuracy or 0.0) / UERE_M, 0.5), 50.0)
        self._connection.mav.gps_input_send(
            int(now * 1e6), self._gps_id, ignore, week_ms, week,
            (FIX_3D if altitude is not None else FIX_2D) if trusted else FIX_NONE,
            round(lat * 1e7) if trusted else 0,
            round(lon * 1e7) if trusted else 0,
            float(altitude or 0.0), hdop, 0.0, 0.0, 0.0, 0.0, 0.0,
            float(accuracy or 0.0), 0.0, 0, 0,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.close()
