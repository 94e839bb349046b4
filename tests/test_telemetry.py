"""Camera attitude from MAVLink telemetry: real pymavlink messages over UDP loopback stamp the frames
of a source that carries none, and the pose-aware loop localises with them."""

import math
import socket
import time

import numpy as np
import pytest
from localize_support import TILE_M, PoolingBackend, build_world_bank, to_lonlat, world_image
from pymavlink import mavutil
from test_query_view import render

from meanloc.errors import MeanlocError
from meanloc.runtime.bank.bank import SatelliteBank
from meanloc.runtime.geo.rectify import CameraAttitude
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.localize.estimate import EstimatorConfig
from meanloc.runtime.localize.frames import Frame, FrameSource
from meanloc.runtime.localize.loop import CameraDefaults, LocalizationLoop, LoopConfig
from meanloc.runtime.localize.telemetry import (
    GIMBAL_YAW_IN_VEHICLE_FRAME,
    GIMBAL_YAW_LOCK,
    ROTATION_DOWNWARD,
    TelemetryState,
    with_telemetry,
)
from meanloc.runtime.query_view import QueryView

MOUNT_TILT = 35.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Autopilot:
    """The other end of the link: a pymavlink sender, as an autopilot or mavlink-router would be."""

    def __init__(self, port: int) -> None:
        self.link = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, dialect="common")

    def send(self, yaw_deg: float, pitch_deg: float = 0.0, height_m: float = 70.0) -> None:
        boot_ms = int(time.monotonic() * 1000) % 2**32
        self.link.mav.attitude_send(boot_ms, 0.0, math.radians(pitch_deg), math.radians(yaw_deg), 0.0, 0.0, 0.0)
        self.link.mav.global_position_int_send(boot_ms, 0, 0, 0, int(height_m * 1000), 0, 0, 0, 0)

    def close(self) -> None:
        self.link.close()


def wait_for(state: TelemetryState, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while state.messages < count:
        assert time.monotonic() < deadline, "telemetry did not arrive"
        time.sleep(0.005)


class SilentCamera(FrameSource):
    """Oblique frames along a track that turns; the frames carry no attitude. Before each frame the
    autopilot sends the attitude it was taken with, and the frame waits until the listener has it."""

    description = "camera without telemetry"

    def __init__(self, world, points, yaws, autopilot: Autopilot) -> None:
        super().__init__()
        self.items = [(render(world, x, y, CameraAttitude(70.0, MOUNT_TILT, yaw, 70.0)), to_lonlat(x, y), yaw)
                      for (x, y), yaw in zip(points, yaws)]
        self.autopilot = autopilot
        self.state: TelemetryState | None = None

    def __iter__(self):
        for i, (image, truth, yaw) in enumerate(self.items):
            if self.state is not None:
                before = self.state.messages
                self.autopilot.send(yaw)
                wait_for(self.state, before + 2)
            self.stats.frames += 1
            yield Frame(i, float(i), image, truth_lonlat=truth)


def test_frames_are_stamped_with_the_autopilots_latest_attitude():
    port = free_udp_port()
    source = with_telemetry(SilentCamera(world_image(), [], [], None), f"udpin:127.0.0.1:{port}", "body", MOUNT_TILT)
    autopilot = Autopilot(port)
    try:
        autopilot.send(yaw_deg=-80.0, pitch_deg=5.0, height_m=180.0)
        wait_for(source.state, 2)
        camera = source.state.camera()
        assert camera.heading_deg == pytest.approx(280.0, abs=1e-3)
        assert camera.pitch_deg == pytest.approx(MOUNT_TILT + 5.0, abs=1e-3)  # nose up tilts it up
        assert camera.altitude_m == pytest.approx(180.0)
        # A downward rangefinder reading in range wins over the height above home, tilt-corrected.
        autopilot.link.mav.distance_sensor_send(0, 20, 40000, 15000, 0, 0, ROTATION_DOWNWARD, 0)
        wait_for(source.state, 3)
        assert source.state.camera().altitude_m == pytest.approx(150.0 * math.cos(math.radians(5.0)), rel=1e-4)
    finally:
        source.close()
        autopilot.close()


def test_the_pose_aware_loop_localises_a_turning_flight_with_telemetry(tmp_path):
    world = world_image()
    bank = SatelliteBank.open(build_world_bank(tmp_path, PoolingBackend(), world), device="cpu")
    backend = PoolingBackend()
    backend.identity = ModelIdentity(backend.identity.checkpoint_sha256, "test", 192, backend.identity.preprocess,
                                     query_view=QueryView(float(TILE_M)))
    points = [(-90.0 + 9.0 * i, -60.0 + 6.0 * i) for i in range(16)]
    yaws = [30.0 if i < 8 else 210.0 for i in range(16)]  # it turns around half way
    config = LoopConfig(estimator=EstimatorConfig(min_margin=0.0), camera=CameraDefaults(hfov_deg=70.0))
    port = free_udp_port()
    autopilot = Autopilot(port)
    try:
        camera = SilentCamera(world, points, yaws, autopilot)
        source = with_telemetry(camera, f"udpin:127.0.0.1:{port}", "body", MOUNT_TILT)
        camera.state = source.state
        live = LocalizationLoop(backend, bank, config, []).run(source)
    finally:
        autopilot.close()
    assert live["frames_processed"] == len(points)
    assert live["error_raw_fix"]["median_m"] < 25.0  # tiles every 32 m
    # Without telemetry the fixed camera values hold only until the turn.
    fixed = LoopConfig(estimator=config.estimator,
                       camera=CameraDefaults(hfov_deg=70.0, pitch_deg=MOUNT_TILT, altitude_m=70.0, heading_deg=30.0))
    stale = LocalizationLoop(backend, bank, fixed, []).run(SilentCamera(world, points, yaws, autopilot))
    assert stale["error_raw_fix"]["p90_m"] > live["error_raw_fix"]["p90_m"]


class Message:
    def __init__(self, kind: str, **fields) -> None:
        self.kind = kind
        self.__dict__.update(fields)

    def get_type(self) -> str:
        return self.kind


def _quaternion(pitch_deg: float, yaw_deg: float) -> list:
    """(w, x, y, z) of a rotation by yaw about z, then pitch about y (roll 0)."""
    p, y = math.radians(pitch_deg) / 2, math.radians(yaw_deg) / 2
    return [math.cos(p) * math.cos(y), -math.sin(p) * math.sin(y), math.sin(p) * math.cos(y), math.cos(p) * math.sin(y)]


def test_gimbal_attitude_in_earth_or_vehicle_frame_and_staleness():
    now = [0.0]
    state = TelemetryState("gimbal", None, max_age_s=1.0, clock=lambda: now[0])
    state.update(Message("ATTITUDE", roll=0.0, pitch=0.0, yaw=math.radians(100.0)))
    state.update(Message("GIMBAL_DEVICE_ATTITUDE_STATUS", q=_quaternion(-50.0, 20.0), flags=GIMBAL_YAW_LOCK))
    assert state.camera().heading_deg == pytest.approx(20.0, abs=1e-3)  # earth frame
    assert state.camera().pitch_deg == pytest.approx(40.0, abs=1e-3)  # 50 degrees below the horizon
    state.update(Message("GIMBAL_DEVICE_ATTITUDE_STATUS", q=_quaternion(-50.0, 20.0),
                         flags=GIMBAL_YAW_IN_VEHICLE_FRAME))
    assert state.camera().heading_deg == pytest.approx(120.0, abs=1e-3)  # vehicle yaw + gimbal yaw
    now[0] = 1.5  # everything is now stale: unknown, not old values
    assert state.camera().heading_deg is None and state.camera().pitch_deg is None
    # ArduPilot's MOUNT_ORIENTATION: absolute yaw when valid, else relative to the vehicle.
    state.update(Message("ATTITUDE", roll=0.0, pitch=0.0, yaw=math.radians(10.0)))
    state.update(Message("MOUNT_ORIENTATION", roll=0.0, pitch=-90.0, yaw=5.0, yaw_absolute=float("nan")))
    assert state.camera().heading_deg == pytest.approx(15.0) and state.camera().pitch_deg == pytest.approx(0.0)
    state.update(Message("MOUNT_ORIENTATION", roll=0.0, pitch=-60.0, yaw=5.0, yaw_absolute=350.0))
    assert state.camera().heading_deg == pytest.approx(350.0) and state.camera().pitch_deg == pytest.approx(30.0)


def test_a_frames_own_attitude_wins_and_sideways_rangefinders_are_ignored():
    from meanloc.runtime.localize.telemetry import stamp

    state = TelemetryState("body", 30.0)
    state.update(Message("ATTITUDE", roll=0.0, pitch=0.0, yaw=math.radians(45.0)))
    state.update(Message("DISTANCE_SENSOR", orientation=0, min_distance=20, max_distance=4000, current_distance=300))
    frame = stamp(Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8), heading_deg=90.0), state.camera())
    assert frame.heading_deg == 90.0 and frame.pitch_deg == pytest.approx(30.0) and frame.altitude_m is None


def test_bad_telemetry_settings_are_one_line_errors():
    with pytest.raises(MeanlocError, match="needs its tilt from nadir"):
        TelemetryState("body", None)
    with pytest.raises(MeanlocError, match="camera mount must be one of"):
        TelemetryState("helmet", 30.0)
    source = SilentCamera(world_image(), [], [], None)
    with pytest.raises(MeanlocError, match="pymavlink connection string") as error:
        with_telemetry(source, "bogus", "body", 30.0)
    assert "\n" not in str(error.value)
