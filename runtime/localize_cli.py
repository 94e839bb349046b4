"""`meanloc localize`: run the onboard localization loop.

Heavy imports (OpenCV, ONNX Runtime, the bank) happen inside the handler so that `--help` is
instant; nothing here imports torch. Python 3.8 compatible.
"""

import argparse
import contextlib
import logging
import signal
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

from meanloc.cli_args import (
    add_model,
    add_overwrite,
    add_threads,
    non_negative_float,
    positive_float,
    positive_int,
)
from meanloc.errors import EXIT_INTERRUPTED, MeanlocError

SOURCE_HELP = ("video file, camera index (0), rtsp://... URL, GStreamer pipeline string (contains '!', e.g. the "
               "Jetson CSI camera: \"nvarguscamerasrc ! ... ! appsink\"), image folder (sorted), or "
               "synthetic:ORTHO.tif (a flight rendered from a georeferenced orthophoto, with truth and a noisy prior)")


def _lat_lon(text: str) -> Tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LAT,LON in degrees, e.g. 47.3769,8.5417, got {!r}".format(text)) from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise argparse.ArgumentTypeError("LAT,LON out of range: {!r}".format(text))
    return lat, lon


def _lat_lon_box(text: str) -> Tuple[float, float, float, float]:
    """'LAT_MIN,LON_MIN,LAT_MAX,LON_MAX' -> (lat_min, lon_min, lat_max, lon_max)."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("expected LAT_MIN,LON_MIN,LAT_MAX,LON_MAX, got {!r}".format(text))
    south_west = _lat_lon(",".join(parts[:2]))
    north_east = _lat_lon(",".join(parts[2:]))
    if not (south_west[0] < north_east[0] and south_west[1] < north_east[1]):
        raise argparse.ArgumentTypeError("the box's minimum must lie south-west of its maximum: {!r}".format(text))
    return south_west + north_east


def configure(parser: argparse.ArgumentParser) -> None:
    add_model(parser, help="embedding model: .onnx (ONNX Runtime) or .engine (TensorRT)")
    parser.add_argument("--bank", required=True, help="satellite embedding bank folder (`meanloc bank build`)")
    parser.add_argument("--source", required=True, help=SOURCE_HELP)
    parser.add_argument("--bank-check", default="auto", metavar="auto|full|fast",
                        help="integrity check when opening the bank: every row always, file hashes for banks up to "
                        "512 MiB (auto), always (full) or never (fast)")
    parser.add_argument("--backend", default="auto", help="inference backend: auto, onnxruntime or tensorrt")
    add_threads(parser, help="CPU threads for ONNX Runtime")
    parser.add_argument("--search-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the bank search runs (cuda needs CuPy)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="stop after this many processed frames (synthetic flights: frames to render, default 100)")
    parser.add_argument("--prior", type=_lat_lon, default=None, metavar="LAT,LON",
                        help="initial position prior for the first search window")
    parser.add_argument("--window-m", type=positive_float, default=None, metavar="R",
                        help="search only tiles within R metres of the prior / filter prediction (R grows with the "
                        "time since the last confident fix); default: global search")
    parser.add_argument("--window-drift-mps", type=float, default=5.0,
                        help="window growth per second without a confident fix (m/s)")
    parser.add_argument("--window-max-m", type=positive_float, default=3000.0,
                        help="fall back to a global search once the window reaches this radius")
    parser.add_argument("--window-max-low-conf", type=positive_int, default=10,
                        help="fall back to a global search after this many unconfident frames in a row")
    parser.add_argument("--topk", type=positive_int, default=5, help="tiles used by the weighted estimator")
    parser.add_argument("--estimator", choices=("top1", "weighted"), default="top1",
                        help="position: top-1 tile centre, or similarity-weighted centres of the top-k adjacent tiles")
    parser.add_argument("--min-margin", type=float, default=0.02,
                        help="a fix is confident when top-1 beats the best non-adjacent tile by this cosine margin")
    parser.add_argument("--no-north-up", action="store_true",
                        help="do not rotate frames that carry a heading (synthetic flights) to north-up before embedding")
    camera = parser.add_argument_group(
        "camera facts for pose-aware models, used when frames do not carry them (video files, plain cameras)")
    camera.add_argument("--camera-hfov", type=positive_float, default=None, metavar="DEG",
                        help="horizontal field of view of the lens")
    camera.add_argument("--camera-pitch", type=float, default=None, metavar="DEG", help="fixed gimbal pitch from nadir")
    camera.add_argument("--altitude-agl", type=positive_float, default=None, metavar="M", help="height above ground")
    camera.add_argument("--heading", type=float, default=None, metavar="DEG",
                        help="heading of the optical axis, clockwise from north")
    camera.add_argument("--telemetry", default=None, metavar="URL",
                        help="read the camera's heading, pitch and height above ground from the autopilot over MAVLink "
                             "(pymavlink connection string, e.g. udpin:0.0.0.0:14551 or /dev/ttyTHS1,921600); "
                             "--camera-* values remain the fallback when it is stale")
    camera.add_argument("--camera-mount", choices=("body", "gimbal"), default="body",
                        help="with --telemetry: camera fixed to the airframe (tilted --camera-pitch from nadir) or on a "
                             "gimbal that reports its attitude")
    camera.add_argument("--telemetry-max-age", type=positive_float, default=1.0, metavar="S",
                        help="telemetry older than this counts as unknown")
    camera.add_argument("--camera-latency-ms", type=float, default=0.0, metavar="MS",
                        help="with --telemetry: time from a frame's exposure to reading it; the attitude is "
                             "interpolated to read time minus this")
    camera.add_argument("--dem", default=None, metavar="DEM.tif",
                        help="terrain heights (GeoTIFF in a metric CRS): height above ground = barometric altitude "
                             "AMSL - DEM height under the look-at point (frames that carry an AMSL altitude; synthetic "
                             "flights also fly over this terrain)")
    fine = parser.add_argument_group("fine stage: geometric verification against the bank's local features")
    fine.add_argument("--refine", choices=("auto", "off"), default="auto",
                      help="auto (default): verify every frame with local features when the bank has a feature "
                      "layer, and use the verified fit as the fix; off: retrieval fixes only")
    fine.add_argument("--refine-min-inliers", type=positive_int, default=15, metavar="N",
                      help="distinct inliers a fit needs to count as verified (default 15)")
    fine.add_argument("--heading-std-deg", type=non_negative_float, default=None, metavar="DEG",
                      help="heading error of the frames' attitude (1 sigma; widens the look-at-to-vehicle offset; "
                      "default: a synthetic flight's --sensor-noise, else 2)")
    fine.add_argument("--pitch-std-deg", type=non_negative_float, default=None, metavar="DEG",
                      help="camera pitch error of the frames' attitude (1 sigma; default: --sensor-noise, else 0.5)")
    fine.add_argument("--altitude-std-m", type=non_negative_float, default=None, metavar="M",
                      help="height-above-ground error of the frames' attitude (1 sigma; default: --sensor-noise, "
                      "else 2)")
    parser.add_argument("--no-filter", action="store_true",
                        help="output raw per-frame fixes instead of the Kalman estimate (both are logged)")
    parser.add_argument("--gate-chi2", type=positive_float, default=13.82,
                        help="Mahalanobis gate (chi-square, 2 dof; 13.82 = 99.9 %%) for rejecting outlier fixes")
    parser.add_argument("--reinit-after", type=positive_int, default=5,
                        help="jump recovery: consecutive rejected fixes considered (the last N)")
    parser.add_argument("--reinit-consensus", type=positive_int, default=3,
                        help="re-initialise the filter when this many of those agree within 100 m")
    parser.add_argument("--target-fps", type=positive_float, default=None,
                        help="skip frames to hold this processing rate")
    parser.add_argument("--folder-fps", type=positive_float, default=1.0,
                        help="frame rate assumed for image folders (timestamps)")
    parser.add_argument("--jsonl", default=None, metavar="-|FILE",
                        help="JSON Lines, one record per frame ('-' = stdout; the default when no sink is given)")
    parser.add_argument("--csv", default=None, metavar="FILE", help="CSV, one row per frame")
    parser.add_argument("--geojson", default=None, metavar="FILE", help="GeoJSON track (LineString + points)")
    parser.add_argument("--mavlink", default=None, metavar="URL",
                        help="send GPS_INPUT to an autopilot, e.g. udpout:127.0.0.1:14550 (ArduPilot: GPS1_TYPE=14)")
    parser.add_argument("--summary", default=None, metavar="FILE", help="write the run summary as JSON")
    add_overwrite(parser, help="replace existing output files (each only once this run has produced its replacement); "
                  "or put {time} in a file name, which becomes the start time (UTC), e.g. flight-{time}.jsonl")
    flight = parser.add_argument_group("synthetic flights (--source synthetic:ORTHO.tif)")
    flight.add_argument("--flight-speed", type=positive_float, default=10.0, help="ground speed (m/s)")
    flight.add_argument("--flight-altitude", type=positive_float, default=150.0, help="altitude above ground (m)")
    flight.add_argument("--flight-pitch", type=float, default=0.0, help="camera pitch from nadir (degrees)")
    flight.add_argument("--flight-hfov", type=positive_float, default=70.0, help="camera horizontal field of view (deg)")
    flight.add_argument("--flight-leg-m", type=positive_float, default=None,
                        help="lawnmower leg length (default: the longest that fits the area, at most 600 m)")
    flight.add_argument("--sensor-noise", default="ideal", choices=("ideal", "good-gimbal", "cheap-imu"),
                        help="attitude and height errors the frames report (rendered with the true pose): ideal; "
                             "good-gimbal (heading 2 deg, pitch/roll 0.5 deg, height 2 m sigma); cheap-imu (heading "
                             "8 deg sigma + 5 deg bias, pitch/roll 2 deg, height 10 m)")
    flight.add_argument("--telemetry-hz", type=positive_float, default=20.0,
                        help="rate of the simulated attitude stream, interpolated to each frame's time")
    flight.add_argument("--flight-terrain-m", type=float, default=0.0,
                        help="rolling terrain of about this relief under the flight (reported heights are above "
                             "take-off; the rendering stays flat)")
    flight.add_argument("--flight-pattern", default="lawnmower", help="flight pattern (see `meanloc data --help`)")
    flight.add_argument("--flight-seed", type=int, default=0, help="seed of the flight, rendering and prior")
    flight.add_argument("--flight-area", type=_lat_lon_box, default=None, metavar="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX",
                        help="keep every frame's look-at point inside this box (e.g. ground held out from training)")
    flight.add_argument("--prior-drift-mps", type=float, default=2.0, help="dead-reckoning drift of the simulated prior")
    flight.add_argument("--prior-jump-every", type=int, default=0, help="inject a prior jump every N frames (0: none)")
    flight.add_argument("--prior-jump-m", type=float, default=300.0, help="size of an injected prior jump (m)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log rejected fixes and filter resets to stderr")
    parser.set_defaults(handler=run)


def _claim_outputs(args: argparse.Namespace) -> None:
    """Refuse existing outputs before any work (unless --overwrite); remove what a killed run left.
    `{time}` in a name becomes the start time, so a restarted service writes new files."""
    import time
    from pathlib import Path

    from .artifacts import claim_output

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for option in ("jsonl", "csv", "geojson", "summary"):
        value = getattr(args, option)
        if value and "{time}" in value:
            setattr(args, option, value.replace("{time}", stamp))
    outputs = [path for path in (args.jsonl, args.csv, args.geojson, args.summary) if path and path != "-"]
    resolved = [Path(path).resolve() for path in outputs]
    if len(set(resolved)) != len(resolved):
        raise MeanlocError("--jsonl, --csv, --geojson and --summary must name different files")
    for path in outputs:
        claim_output(path, args.overwrite)


def _open_sinks(args: argparse.Namespace) -> List[Any]:
    from .localize.loop import RECORD_FIELDS, STAGES
    from .localize.sinks import CsvSink, GeoJsonTrackSink, JsonlSink

    sinks: List[Any] = []
    try:
        if args.jsonl is not None or not (args.csv or args.geojson or args.mavlink):
            sinks.append(JsonlSink(args.jsonl or "-"))
        if args.csv:
            sinks.append(CsvSink(args.csv, RECORD_FIELDS, STAGES))
        if args.geojson:
            sinks.append(GeoJsonTrackSink(args.geojson))
        if args.mavlink:
            from .localize.mavlink_sink import MavlinkGpsInputSink

            sinks.append(MavlinkGpsInputSink(args.mavlink))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _loop_config(args: argparse.Namespace) -> Any:
    from .fine.stage import RefineConfig
    from .localize.estimate import EstimatorConfig
    from .localize.kalman import KalmanConfig
    from .localize.loop import CameraDefaults, LoopConfig
    from .localize.window import WindowConfig

    return LoopConfig(
        estimator=EstimatorConfig(method=args.estimator, topk=args.topk, min_margin=args.min_margin),
        window=WindowConfig(radius_m=args.window_m, drift_mps=args.window_drift_mps, max_radius_m=args.window_max_m,
                            max_low_confidence=args.window_max_low_conf),
        kalman=KalmanConfig(gate_chi2=args.gate_chi2, max_rejections=args.reinit_after,
                            reinit_consensus=args.reinit_consensus),
        use_filter=not args.no_filter,
        prior_lonlat=(args.prior[1], args.prior[0]) if args.prior else None,
        target_fps=args.target_fps,
        north_up=not args.no_north_up,
        camera=CameraDefaults(hfov_deg=args.camera_hfov, pitch_deg=args.camera_pitch, altitude_m=args.altitude_agl,
                              heading_deg=args.heading),
        refine=RefineConfig(mode=args.refine, min_inliers=args.refine_min_inliers),
        attitude_std=_attitude_std(args),
    )


def _attitude_std(args: argparse.Namespace) -> Any:
    """The attitude errors the loop allows for: the options, else what a synthetic flight's sensor
    preset injects (its bias counted as error: the loop does not know it), else a good gimbal's."""
    import math

    from .localize.look_at import AttitudeUncertainty
    from .localize.synthetic import sensor_preset

    default = AttitudeUncertainty()
    noise = sensor_preset(args.sensor_noise)
    if args.source.startswith("synthetic:") and not noise.ideal:
        default = AttitudeUncertainty(heading_deg=math.hypot(noise.heading_sigma_deg, noise.heading_bias_deg),
                                      pitch_deg=noise.pitch_sigma_deg,
                                      altitude_m=math.hypot(noise.height_sigma_m, noise.height_bias_m))

    def chosen(value: Optional[float], fallback: float) -> float:
        return fallback if value is None else value

    return AttitudeUncertainty(heading_deg=chosen(args.heading_std_deg, default.heading_deg),
                               pitch_deg=chosen(args.pitch_std_deg, default.pitch_deg),
                               altitude_m=chosen(args.altitude_std_m, default.altitude_m))


def format_summary(summary: Dict[str, Any]) -> str:
    """Human-readable lines for stderr (the JSON goes to --summary)."""
    lines = [
        "meanloc localize: {} frames processed from {} ({}); {} corrupt, {} missing, {} non-finite, {} dropped for "
        "rate, {} reconnects; fixes: {} confident ({} geometric), {} rejected, {} filter resets".format(
            summary["frames_processed"], summary["source"], summary["stop_reason"], summary["frames_corrupt"],
            summary["frames_missing"], summary["frames_nonfinite"], summary["frames_dropped_rate"],
            summary["reconnects"], summary["fixes_confident"], summary["fixes_geometric"], summary["fixes_rejected"],
            summary["filter_reinitialisations"])
    ]
    if summary.get("skipped_images"):
        lines.append("meanloc localize: " + summary["skipped_images"])
    if "error_raw_fix" in summary:
        lines.append("errors vs the {}, {}:".format(summary["truth_point"], summary["distance"]))
        lines.append("| estimate | frames | median m | p90 m | <= 25 m | <= 50 m |")
        lines.append("|---|---|---|---|---|---|")
        rows = (("raw fix (no filter)", "error_raw_fix"), ("  retrieval fix", "error_retrieval_fix"),
                ("  geometric fix", "error_fine_fix"), ("Kalman filter", "error_filtered"))
        for name, key in rows:
            stats = summary[key]

            def fmt(value: Optional[float], pattern: str) -> str:
                return "-" if value is None else pattern.format(value)

            lines.append("| {} | {} | {} | {} | {} | {} |".format(
                name, stats["frames"], fmt(stats["median_m"], "{:.1f}"), fmt(stats["p90_m"], "{:.1f}"),
                fmt(stats["within_25m"], "{:.1%}"), fmt(stats["within_50m"], "{:.1%}")))
    return "\n".join(lines)


@contextlib.contextmanager
def _stop_on_sigint(loop: Any) -> Iterator[None]:
    """First Ctrl-C: finish the current frame so every sink gets whole records, then stop.
    A second Ctrl-C interrupts at once (the loop still closes its sinks)."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, previous)
        loop.request_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _with_telemetry(source: Any, args: argparse.Namespace) -> Any:
    from .localize.telemetry import with_telemetry

    try:
        return with_telemetry(source, args.telemetry, args.camera_mount, args.camera_pitch, args.telemetry_max_age,
                              latency_s=args.camera_latency_ms / 1000.0)
    except BaseException:
        source.close()
        raise


def _with_dem(source: Any, path: str) -> Any:
    from .geo.terrain import Terrain
    from .localize.terrain_height import DemHeightSource

    try:
        return DemHeightSource(source, Terrain.from_geotiff(path))
    except BaseException:
        source.close()
        raise


def run(args: argparse.Namespace) -> int:
    from .artifacts import atomic_write_json
    from .backends import open_backend
    from .bank.bank import SatelliteBank
    from .localize.loop import LocalizationLoop
    from .localize.sources import ReconnectPolicy, open_source
    from .localize.synthetic import SyntheticFlightOptions, sensor_preset

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    _claim_outputs(args)
    backend = open_backend(args.model, backend=args.backend, threads=args.threads)
    try:
        bank = SatelliteBank.open(args.bank, device=args.search_device, check=args.bank_check)
        view = backend.identity.query_view
        synthetic = SyntheticFlightOptions(
            frames=args.frames or 100, speed_mps=args.flight_speed, altitude_m=args.flight_altitude,
            pitch_deg=args.flight_pitch, pattern=args.flight_pattern, seed=args.flight_seed, area_latlon=args.flight_area,
            prior_drift_mps=args.prior_drift_mps, prior_jump_every=args.prior_jump_every,
            prior_jump_m=args.prior_jump_m, hfov_deg=args.flight_hfov, leg_m=args.flight_leg_m,
            query_side_m=view.ground_side_m if view.rectified else None, sensor=sensor_preset(args.sensor_noise),
            telemetry_hz=args.telemetry_hz, terrain_relief_m=args.flight_terrain_m, terrain_dem=args.dem)
        source = open_source(args.source, synthetic=synthetic, folder_period_s=1.0 / args.folder_fps,
                             reconnect=ReconnectPolicy())
        if args.telemetry:
            source = _with_telemetry(source, args)
        if args.dem:
            source = _with_dem(source, args.dem)
        loop = LocalizationLoop(backend, bank, _loop_config(args), [],
                                what="bank {} vs model {}".format(args.bank, args.model))
        loop.sinks = _open_sinks(args)
        with _stop_on_sigint(loop):
            summary = loop.run(source, max_frames=args.frames)
    finally:
        backend.close()
    summary["model"] = args.model
    summary["bank"] = args.bank
    summary["global_search"] = bank.describe()["global_search"]  # the bank's index, or "exact"
    if args.summary and summary["frames_processed"]:  # a run that produced nothing replaces nothing
        atomic_write_json(args.summary, summary)
    print(format_summary(summary), file=sys.stderr)
    if summary["stop_reason"] == "interrupted":
        return EXIT_INTERRUPTED
    if summary["stop_reason"].startswith("source lost"):
        raise MeanlocError(summary["stop_reason"])
    if summary["frames_processed"] == 0:
        raise MeanlocError("no frame could be processed from {} ({} corrupt, {} missing, {} non-finite embeddings)"
                           "{}".format(summary["source"], summary["frames_corrupt"], summary["frames_missing"],
                                       summary["frames_nonfinite"],
                                       "; " + summary["skipped_images"] if summary.get("skipped_images") else ""))
    return 0
