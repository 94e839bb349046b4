"""Live camera attitude from the autopilot over MAVLink, for pose-aware models.

A pose-aware model rectifies every frame with the camera's attitude and height above ground.
Video files and plain cameras carry none, and a fixed `--heading` is wrong after the first turn.
With `meanloc localize --telemetry URL` a background thread listens to the autopilot, and every
frame is stamped, when it is read, with the latest state no older than `max_age_s` (older state
counts as unknown, so the frame falls back to the fixed `--camera-*` values or is skipped):

* heading and pitch. A camera fixed to the airframe (`mount="body"`) looks along the vehicle's
  yaw (ATTITUDE), tilted `mount_pitch_deg` from nadir plus the vehicle's pitch (nose up tilts it
  towards the horizon). A gimbal (`mount="gimbal"`) reports its own attitude:
  GIMBAL_DEVICE_ATTITUDE_STATUS (gimbal protocol v2: pitch from the horizon, yaw in the earth or
  the vehicle frame as its flags say) or ArduPilot's MOUNT_ORIENTATION.
* roll is left at 0: the camera model rotates about the optical axis only, and a bank in a turn
  tilts a body-fixed camera sideways instead (it shifts the look-at point by h * tan(bank); the
  filter's gate absorbs such fixes).
* height above ground: a downward rangefinder (DISTANCE_SENSOR, orientation PITCH_270, reading
  inside its range, corrected for the vehicle's tilt), else GLOBAL_POSITION_INT.relative_alt,
  the height above home, which is right over ground at home's elevation.

Frames that already carry their attitude (synthetic flights) keep it. The link must stream these
messages (ArduPilot: SRn_EXTRA1 for ATTITUDE and mount, SRn_POSITION, SRn_EXTRA3 for
DISTANCE_SENSOR; or route them with mavlink-router / mavproxy `--out udp:<jetson>:14551`).
Python 3.8 compatible; pymavlink is imported only when telemetry is used.
"""

import dataclasses
import math
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from meanloc.errors import MeanlocError, MissingDependencyError

from .sources import Frame, FrameSource

MOUNTS = ("body", "gimbal")
MESSAGES = ("ATTITUDE", "GIMBAL_DEVICE_ATTITUDE_STATUS", "MOUNT_ORIENTATION", "DISTANCE_SENSOR",
            "GLOBAL_POSITION_INT")
ROTATION_DOWNWARD = 25  # MAV_SENSOR_ROTATION_PITCH_270
GIMBAL_YAW_LOCK = 16  # GIMBAL_DEVICE_FLAGS_YAW_LOCK: yaw in the earth frame (protocol v2, before the two below)
GIMBAL_YAW_IN_VEHICLE_FRAME = 32
GIMBAL_YAW_IN_EARTH_FRAME = 64


@dataclasses.dataclass(frozen=True)
class CameraState:
    """What the telemetry says about the camera now; None: unknown."""

    heading_deg: Optional[float] = None
    pitch_deg: Optional[float] = None  # from nadir
    altitude_m: Optional[float] = None  # above ground


def _quaternion_to_euler_deg(q: Any) -> Tuple[float, float, float]:
    """(roll, pitch, yaw) in degrees of a MAVLink quaternion (w, x, y, z), aerospace ZYX order."""
    w, x, y, z = (float(v) for v in q)
    roll = math.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x))))
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return math.degrees(roll), math.degrees(pitch), math.degrees(yaw)


class TelemetryState:
    """The latest message of each kind, and the camera state they give (thread-safe, no I/O)."""

    def __init__(self, mount: str = "body", mount_pitch_deg: Optional[float] = None, max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mount not in MOUNTS:
            raise MeanlocError("camera mount must be one of {}, not {!r}".format(", ".join(MOUNTS), mount))
        if mount == "body" and mount_pitch_deg is None:
            raise MeanlocError("a body-fixed camera needs its tilt from nadir (--camera-pitch) to use telemetry")
        self.mount = mount
        self.mount_pitch_deg = mount_pitch_deg
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: Dict[str, Tuple[float, Any]] = {}
        self.messages = 0

    def update(self, message: Any) -> None:
        kind = message.get_type()
        if kind == "DISTANCE_SENSOR" and message.orientation != ROTATION_DOWNWARD:
            return
        if kind in MESSAGES:
            with self._lock:
                self._latest[kind] = (self._clock(), message)
                self.messages += 1

    def _fresh(self, kind: str) -> Any:
        with self._lock:
            entry = self._latest.get(kind)
        if entry is None or self._clock() - entry[0] > self.max_age_s:
            return None
        return entry[1]

    def camera(self) -> CameraState:
        vehicle = self._fresh("ATTITUDE")
        heading, pitch = self._body_camera(vehicle) if self.mount == "body" else self._gimbal_camera(vehicle)
        return CameraState(heading_deg=None if heading is None else heading % 360.0, pitch_deg=pitch,
                           altitude_m=self._height_above_ground(vehicle))

    def _body_camera(self, vehicle: Any) -> Tuple[Optional[float], Optional[float]]:
        if vehicle is None or self.mount_pitch_deg is None:
            return None, None
        return math.degrees(vehicle.yaw), self.mount_pitch_deg + math.degrees(vehicle.pitch)

    def _gimbal_camera(self, vehicle: Any) -> Tuple[Optional[float], Optional[float]]:
        vehicle_yaw = None if vehicle is None else math.degrees(vehicle.yaw)
        status = self._fresh("GIMBAL_DEVICE_ATTITUDE_STATUS")
        if status is not None:
            _, pitch, yaw = _quaternion_to_euler_deg(status.q)
            earth_frame = bool(status.flags & GIMBAL_YAW_IN_EARTH_FRAME) or (
                bool(status.flags & GIMBAL_YAW_LOCK) and not status.flags & GIMBAL_YAW_IN_VEHICLE_FRAME)
            heading = yaw if earth_frame else None if vehicle_yaw is None else vehicle_yaw + yaw
            return heading, 90.0 + pitch  # gimbal pitch is from the horizon, -90 = straight down
        mount = self._fresh("MOUNT_ORIENTATION")
        if mount is not None:
            absolute = float(mount.yaw_absolute)
            if math.isfinite(absolute):
                heading: Optional[float] = absolute
            else:
                heading = None if vehicle_yaw is None else vehicle_yaw + float(mount.yaw)
            return heading, 90.0 + float(mount.pitch)
        return None, None

    def _height_above_ground(self, vehicle: Any) -> Optional[float]:
        ranger = self._fresh("DISTANCE_SENSOR")
        if ranger is not None and ranger.min_distance <= ranger.current_distance <= ranger.max_distance:
            tilt = 1.0 if vehicle is None else math.cos(vehicle.roll) * math.cos(vehicle.pitch)
            return ranger.current_distance / 100.0 * tilt
        position = self._fresh("GLOBAL_POSITION_INT")
        if position is not None and position.relative_alt > 0:
            return position.relative_alt / 1000.0
        return None


def stamp(frame: Frame, camera: CameraState) -> Frame:
    """The frame with its missing attitude fields taken from `camera`."""
    return dataclasses.replace(
        frame,
        heading_deg=camera.heading_deg if frame.heading_deg is None else frame.heading_deg,
        pitch_deg=camera.pitch_deg if frame.pitch_deg is None else frame.pitch_deg,
        altitude_m=camera.altitude_m if frame.altitude_m is None else frame.altitude_m,
    )


class TelemetryStampedSource(FrameSource):
    """Another source's frames, stamped with the telemetry's camera state as they are read."""

    def __init__(self, source: FrameSource, state: TelemetryState, listener: Optional["MavlinkListener"] = None):
        super().__init__()
        self.source = source
        self.state = state
        self.listener = listener
        self.description = "{} + MAVLink telemetry".format(source.description)
        self.live = source.live
        self.stats = source.stats

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            yield stamp(frame, self.state.camera())

    def close(self) -> None:
        try:
            self.source.close()
        finally:
            if self.listener is not None:
                self.listener.close()


class MavlinkListener:
    """A pymavlink connection read by a daemon thread into a TelemetryState."""

    def __init__(self, url: str, state: TelemetryState, poll_s: float = 0.2) -> None:
        try:
            from pymavlink import mavutil
        except ImportError:
            raise MissingDependencyError("--telemetry needs pymavlink: pip install pymavlink") from None
        if not url.startswith(("udpin:", "udp:", "udpout:", "tcp:", "tcpin:", "serial:", "/dev/")):
            raise MeanlocError("--telemetry expects a pymavlink connection string such as udpin:0.0.0.0:14551 or "
                               "/dev/ttyTHS1,921600, got {!r}".format(url))
        try:
            self._connection: Any = mavutil.mavlink_connection(url, dialect="common", source_system=255,
                                                               source_component=191)
        except Exception as exc:  # pymavlink raises bare socket/serial errors
            raise MeanlocError("cannot open MAVLink telemetry {}: {}".format(url, exc)) from exc
        self.state = state
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="mavlink-telemetry", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._connection.recv_match(type=list(MESSAGES), blocking=True, timeout=self._poll_s)
            except (OSError, ValueError):  # a closed socket at shutdown, or a corrupt packet
                continue
            if message is not None:
                self.state.update(message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._connection.close()


def with_telemetry(source: FrameSource, url: str, mount: str, mount_pitch_deg: Optional[float],
                   max_age_s: float = 1.0) -> TelemetryStampedSource:
    """`source` stamped with live MAVLink telemetry from `url` (the listener closes with the source)."""
    state = TelemetryState(mount, mount_pitch_deg, max_age_s)
    return TelemetryStampedSource(source, state, MavlinkListener(url, state))
