"""Live camera attitude from the autopilot over MAVLink, for pose-aware models.

A pose-aware model rectifies every frame with the camera's attitude and height above ground.
Video files and plain cameras carry none, and a fixed `--heading` is wrong after the first turn.
With `meanloc localize --telemetry URL` a background thread listens to the autopilot, and every
frame is stamped with the attitude *at its capture time*: ATTITUDE arrives at 10-50 Hz, not with
the frame, so the samples around the frame's timestamp (read time minus the camera's latency) are
interpolated (`AttitudeHistory`; heading along the shorter arc). State older than `max_age_s`
counts as unknown, so the frame falls back to the fixed `--camera-*` values or is skipped:

* heading, pitch and roll. A camera fixed to the airframe (`mount="body"`), tilted
  `mount_pitch_deg` from nadir, turns with the whole vehicle attitude (ATTITUDE): the full
  rotation is composed (`camera_attitude_from_body`), so a bank in a turn swings its view sideways
  and rolls the image, and rectification undoes both. A gimbal (`mount="gimbal"`) reports its own
  attitude: GIMBAL_DEVICE_ATTITUDE_STATUS (gimbal protocol v2: pitch from the horizon, yaw in the
  earth or the vehicle frame as its flags say, roll about the optical axis) or ArduPilot's
  MOUNT_ORIENTATION.
* height above ground: a downward rangefinder (DISTANCE_SENSOR, orientation PITCH_270, reading
  inside its range, corrected for the vehicle's tilt), else GLOBAL_POSITION_INT.relative_alt,
  the height above home, which is right over ground at home's elevation.

Frames that already carry their attitude (synthetic flights) keep it. The link must stream these
messages (ArduPilot: SRn_EXTRA1 for ATTITUDE and mount, SRn_POSITION, SRn_EXTRA3 for
DISTANCE_SENSOR; or route them with mavlink-router / mavproxy `--out udp:<jetson>:14551`).
Python 3.8 compatible; pymavlink is imported only when telemetry is used.
"""

import bisect
import collections
import dataclasses
import math
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Tuple

from meanloc.errors import MeanlocError, MissingDependencyError

from .frames import Frame, FrameSource

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
    roll_deg: Optional[float] = None  # about the optical axis
    altitude_amsl_m: Optional[float] = None  # GLOBAL_POSITION_INT.alt, for --dem


def interpolate_angle_deg(a: float, b: float, fraction: float) -> float:
    """Angle between `a` and `b` at `fraction` along the shorter arc, in [0, 360)."""
    delta = (b - a + 180.0) % 360.0 - 180.0
    return (a + fraction * delta) % 360.0


class AttitudeHistory:
    """Timestamped (heading, pitch, roll) samples; `at(t)` interpolates to a frame's timestamp.

    Samples must arrive in time order (a late one is dropped). Between two samples the heading is
    interpolated along the shorter arc and pitch and roll linearly; after the last sample it is
    held for at most `max_hold_s`; before the first, or across a gap longer than `max_gap_s`, the
    attitude is unknown (None)."""

    def __init__(self, max_samples: int = 512, max_gap_s: float = 1.0, max_hold_s: float = 0.25) -> None:
        self._times: Deque[float] = collections.deque(maxlen=max_samples)
        self._values: Deque[Tuple[float, float, float]] = collections.deque(maxlen=max_samples)
        self.max_gap_s = max_gap_s
        self.max_hold_s = max_hold_s
        self._lock = threading.Lock()

    def add(self, t: float, heading_deg: float, pitch_deg: float, roll_deg: float) -> None:
        with self._lock:
            if self._times and t <= self._times[-1]:
                return
            self._times.append(float(t))
            self._values.append((float(heading_deg) % 360.0, float(pitch_deg), float(roll_deg)))

    def __len__(self) -> int:
        return len(self._times)

    def at(self, t: float) -> Optional[Tuple[float, float, float]]:
        with self._lock:
            times, values = list(self._times), list(self._values)
        if not times or t < times[0]:
            return None
        index = bisect.bisect_right(times, t)
        if index == len(times):
            return values[-1] if t - times[-1] <= self.max_hold_s else None
        t0, t1 = times[index - 1], times[index]
        if t1 - t0 > self.max_gap_s:
            return None
        fraction = (t - t0) / (t1 - t0)
        (h0, p0, r0), (h1, p1, r1) = values[index - 1], values[index]
        return interpolate_angle_deg(h0, h1, fraction), p0 + fraction * (p1 - p0), r0 + fraction * (r1 - r0)


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
                 clock: Callable[[], float] = time.monotonic, latency_s: float = 0.0) -> None:
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
        self.latency_s = latency_s  # from the frame's exposure to reading it
        # Vehicle attitude (roll, pitch, yaw of ATTITUDE) over time, to interpolate at capture times.
        self.vehicle = AttitudeHistory(max_gap_s=max_age_s, max_hold_s=max_age_s)

    def update(self, message: Any) -> None:
        kind = message.get_type()
        if kind == "DISTANCE_SENSOR" and message.orientation != ROTATION_DOWNWARD:
            return
        if kind in MESSAGES:
            now = self._clock()
            with self._lock:
                self._latest[kind] = (now, message)
                self.messages += 1
            if kind == "ATTITUDE":  # stored as (yaw, pitch, roll) in degrees
                self.vehicle.add(now, math.degrees(message.yaw), math.degrees(message.pitch), math.degrees(message.roll))

    def _fresh(self, kind: str) -> Any:
        with self._lock:
            entry = self._latest.get(kind)
        if entry is None or self._clock() - entry[0] > self.max_age_s:
            return None
        return entry[1]

    def clock(self) -> float:
        return self._clock()

    def camera(self, capture_time: Optional[float] = None) -> CameraState:
        """The camera state at `capture_time` (telemetry clock; default: now minus the latency)."""
        t = self._clock() - self.latency_s if capture_time is None else capture_time
        vehicle = self._fresh("ATTITUDE")
        attitude = self.vehicle.at(t)  # (yaw, pitch, roll) of the vehicle interpolated to the capture time
        if self.mount == "body":
            heading, pitch, roll = self._body_camera(attitude)
        else:
            heading, pitch, roll = self._gimbal_camera(None if attitude is None else attitude[0])
        position = self._fresh("GLOBAL_POSITION_INT")
        return CameraState(heading_deg=None if heading is None else heading % 360.0, pitch_deg=pitch,
                           altitude_m=self._height_above_ground(vehicle), roll_deg=roll,
                           altitude_amsl_m=None if position is None else position.alt / 1000.0)

    def _body_camera(self, attitude: Optional[Tuple[float, float, float]]) -> Tuple[Optional[float], ...]:
        if attitude is None or self.mount_pitch_deg is None:
            return None, None, None
        from ..geo.camera import camera_attitude_from_body

        yaw, pitch, roll = attitude
        return camera_attitude_from_body(roll, pitch, yaw, self.mount_pitch_deg)

    def _gimbal_camera(self, vehicle_yaw: Optional[float]) -> Tuple[Optional[float], ...]:
        status = self._fresh("GIMBAL_DEVICE_ATTITUDE_STATUS")
        if status is not None:
            roll, pitch, yaw = _quaternion_to_euler_deg(status.q)
            earth_frame = bool(status.flags & GIMBAL_YAW_IN_EARTH_FRAME) or (
                bool(status.flags & GIMBAL_YAW_LOCK) and not status.flags & GIMBAL_YAW_IN_VEHICLE_FRAME)
            heading = yaw if earth_frame else None if vehicle_yaw is None else vehicle_yaw + yaw
            return heading, 90.0 + pitch, roll  # gimbal pitch is from the horizon, -90 = straight down
        mount = self._fresh("MOUNT_ORIENTATION")
        if mount is not None:
            absolute = float(mount.yaw_absolute)
            if math.isfinite(absolute):
                heading: Optional[float] = absolute
            else:
                heading = None if vehicle_yaw is None else vehicle_yaw + float(mount.yaw)
            return heading, 90.0 + float(mount.pitch), float(mount.roll)
        return None, None, None

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
        roll_deg=camera.roll_deg if frame.roll_deg is None else frame.roll_deg,
        altitude_amsl_m=camera.altitude_amsl_m if frame.altitude_amsl_m is None else frame.altitude_amsl_m,
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
                   max_age_s: float = 1.0, latency_s: float = 0.0) -> TelemetryStampedSource:
    """`source` stamped with live MAVLink telemetry from `url` (the listener closes with the source)."""
    state = TelemetryState(mount, mount_pitch_deg, max_age_s, latency_s=latency_s)
    return TelemetryStampedSource(source, state, MavlinkListener(url, state))
