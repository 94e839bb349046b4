"""The onboard localization loop: frame -> embedding -> bank search -> fix -> filter -> sinks.

Per frame: prepare the query as the model was trained (`runtime.query_view`: a pose-aware model
gets the north-up ground patch rectified with the frame's attitude; otherwise the frame is turned
north-up when its heading is known, `orient.py`), preprocess (the one `runtime.preprocess`
definition) and embed with the backend, search the bank globally or in a
window around the filter's prediction / the prior (`window.py`), turn the results into a fix
with a confidence (`estimate.py`), verify it geometrically against the bank's local features
where the bank has them (`runtime.fine`: the verified fit replaces the retrieval fix and
re-ranks the retrieved tiles), gate and fuse the fix with its covariance in a Kalman filter
(`kalman.py`) that predicts with the vehicle's odometry when frames carry a prior position (its
frame-to-frame displacement), and hand one record to every sink.

The filter always runs, so one run reports both the raw per-frame fix and the filtered estimate
(and their errors when the source knows the truth); `use_filter` only chooses which of the two
is the output position. Nothing here grows with the number of frames: counters, running means
and fixed histograms only (see `metrics.py`). Python 3.8 compatible, never imports torch.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..backends.base import EmbeddingBackend
from ..bank.bank import SatelliteBank, SearchWindow
from ..fine.stage import Candidate, FineResult, FineStage, RefineConfig, rerank
from ..geo.rectify import CameraAttitude
from ..preprocess import preprocess_batch
from ..query_view import prepare_query
from .estimate import EstimatorConfig, Fix, PositionEstimator
from .frames import Frame, FrameSource, SourceLostError
from .geodesy import DISTANCE_METHOD, geodesic_distance_m
from .kalman import ConstantVelocityKalman, KalmanConfig, UpdateResult, noise_covariance
from .look_at import (
    AttitudeUncertainty,
    HeadingCorrection,
    look_at_offset,
    offset_covariance,
    with_heading_error_removed,
)
from .metrics import ErrorStats, RunningMeans
from .orient import rotate_to_north_up
from .sinks import Sink
from .window import SearchWindowPolicy, WindowConfig

LOG = logging.getLogger("meanloc.localize")

TRUTH_POINT = "look-at ground point (image centre)"
STAGES = ("decode", "preprocess", "embed", "search", "estimate", "refine", "filter")
RECORD_FIELDS = (
    "t", "frame", "lat", "lon", "fix_lat", "fix_lon", "fix_source", "filt_lat", "filt_lon", "score", "margin",
    "confidence", "confident", "status", "mahalanobis2", "search", "window_m", "tile", "accuracy_m", "trusted",
    "altitude_m", "truth_lat", "truth_lon", "error_m", "fix_error_m", "filt_error_m", "vehicle_lat", "vehicle_lon",
    "retrieval_lat", "retrieval_lon", "retrieval_error_m", "fine_error_m", "inliers", "inlier_ratio", "fix_cov_m2",
    "heading_error_deg", "refine",
)


@dataclass(frozen=True)
class CameraDefaults:
    """Fixed camera facts used when a frame does not carry its own (None: unknown)."""

    hfov_deg: Optional[float] = None
    pitch_deg: Optional[float] = None
    altitude_m: Optional[float] = None
    heading_deg: Optional[float] = None

    def attitude(self, frame: Frame) -> Optional[CameraAttitude]:
        """The frame's attitude, completed from these defaults; None if anything is unknown.
        The FOV may stay unknown: only rectification needs it (`prepare_query` refuses then)."""
        altitude = self.altitude_m if frame.altitude_m is None else frame.altitude_m
        pitch = self.pitch_deg if frame.pitch_deg is None else frame.pitch_deg
        heading = self.heading_deg if frame.heading_deg is None else frame.heading_deg
        hfov = self.hfov_deg if frame.hfov_deg is None else frame.hfov_deg
        if altitude is None or pitch is None or heading is None:
            return None
        return CameraAttitude(altitude, pitch, heading, hfov, frame.roll_deg or 0.0)

    def heading(self, frame: Frame) -> Optional[float]:
        return self.heading_deg if frame.heading_deg is None else frame.heading_deg


@dataclass(frozen=True)
class LoopConfig:
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    kalman: KalmanConfig = field(default_factory=KalmanConfig)
    use_filter: bool = True
    # A fixed prior (lon, lat) for the first window, used until the filter has a state.
    prior_lonlat: Optional[Tuple[float, float]] = None
    # Process at most this many frames per second of source time, and drop frames that are more
    # than one period behind real time (None: process every frame).
    target_fps: Optional[float] = None
    # Results fetched per search: enough to usually hold a tile that does not overlap the top-1.
    search_k: int = 32
    # Rotate frames that carry a heading to north-up, like the bank tiles (§4.3); models with
    # pose-aware queries rectify instead.
    north_up: bool = True
    # For frames whose source does not report them (video files, cameras without telemetry).
    camera: CameraDefaults = field(default_factory=CameraDefaults)
    # The fine stage (local features against the bank's layer) and the candidates it checks.
    refine: RefineConfig = field(default_factory=RefineConfig)
    # Retrieval clusters verified when the filter is not tracking (it checks only its prediction then).
    refine_candidates: int = 3
    # The filter "tracks" while a geometric fix confirmed it within `tracking_timeout_s` and its
    # position std stays below `tracking_std_m`: the fine stage then checks only its prediction,
    # and retrieval fixes can no longer re-initialise it.
    tracking_std_m: float = 25.0
    tracking_timeout_s: float = 20.0
    # How wrong the frames' attitude may be: the look-at -> vehicle offset inherits it.
    attitude_std: AttitudeUncertainty = field(default_factory=AttitudeUncertainty)


class RateLimiter:
    """Decides which frames to process so that the loop holds `target_fps`."""

    def __init__(self, target_fps: float, clock: Callable[[], float]) -> None:
        self.period = 1.0 / target_fps
        self._clock = clock
        self._origin: Optional[Tuple[float, float]] = None  # (wall, source) time of the first frame
        self._next_t = -math.inf

    def admit(self, t_source: float) -> bool:
        now = self._clock()
        if self._origin is None:
            self._origin = (now, t_source)
        if t_source < self._next_t:
            return False  # decimation: not yet a period after the last processed frame
        lag = (now - self._origin[0]) - (t_source - self._origin[1])
        if lag > self.period:
            return False  # stale: processing fell behind the source's clock
        self._next_t = t_source + self.period * 0.999  # tolerate timestamp jitter
        return True


@dataclass
class LoopCounters:
    frames_processed: int = 0
    frames_nonfinite: int = 0
    frames_dropped_rate: int = 0
    fixes_confident: int = 0
    fixes_geometric: int = 0
    fixes_accepted: int = 0
    fixes_rejected: int = 0
    filter_reinitialisations: int = 0
    searches_global: int = 0
    searches_window: int = 0


class LocalizationLoop:
    def __init__(self, backend: EmbeddingBackend, bank: SatelliteBank, config: LoopConfig, sinks: Sequence[Sink],
                 clock: Callable[[], float] = time.perf_counter, what: str = "bank vs model") -> None:
        # Same weights, dimension and preprocessing, or embeddings and bank are not comparable.
        bank.identity.check_compatible(backend.identity, what)
        self.query_view = backend.identity.query_view
        if len(bank.tiles.side_m):
            self.query_view.check_tile_side(float(np.median(bank.tiles.side_m)), what)
        self.backend = backend
        self.bank = bank
        self.config = config
        self.sinks = list(sinks)
        self._clock = clock
        tiles = bank.tiles
        self.tile_xy = np.stack([tiles.x, tiles.y], axis=1)
        self.estimator = PositionEstimator(self.tile_xy, tiles.side_m, config.estimator)
        self.fine: Optional[FineStage] = None
        if config.refine.mode != "off" and bank.features is not None:
            self.fine = FineStage(bank.features, config.refine)
        self.filter = ConstantVelocityKalman(config.kalman)
        self.window_policy = SearchWindowPolicy(config.window)
        self.rate = RateLimiter(config.target_fps, clock) if config.target_fps else None
        self.search_k = max(config.search_k, config.estimator.topk)
        self.counters = LoopCounters()
        self.raw_errors = ErrorStats()
        self.retrieval_errors = ErrorStats()
        self.fine_errors = ErrorStats()
        self.filtered_errors = ErrorStats()
        self.stage_means = RunningMeans()
        self.stop_reason = "not started"
        self._stop_requested = False
        self._last_prior_xy: Optional[Tuple[float, float]] = None
        self._fused_look_at: Optional[np.ndarray] = None  # this frame's look-at estimate, when a fix was fused
        self._last_geometric_t: Optional[float] = None  # when a geometric fix last updated the filter
        self.heading_correction = HeadingCorrection()

    # -- geometry helpers -------------------------------------------------------------------
    def _to_lonlat(self, xy: Tuple[float, float]) -> Tuple[float, float]:
        lat, lon = self.bank.frame.to_latlon(xy[0], xy[1])
        return float(lon), float(lat)

    def _to_xy(self, lonlat: Tuple[float, float]) -> Tuple[float, float]:
        x, y = self.bank.frame.to_xy(lonlat[1], lonlat[0])
        return float(x), float(y)

    def _odometry(self, frame: Frame) -> Optional[Tuple[float, float]]:
        """Displacement of the vehicle's own (drifting) position estimate since the last frame."""
        if frame.prior_lonlat is None:
            return None
        here = self._to_xy(frame.prior_lonlat)
        last, self._last_prior_xy = self._last_prior_xy, here
        return None if last is None else (here[0] - last[0], here[1] - last[1])

    def _window_centre(self, frame: Frame, offset: Tuple[float, float]) -> Optional[Tuple[float, float]]:
        if self.filter.initialised:
            vehicle: Optional[Tuple[float, float]] = self.filter.position
        else:
            prior = frame.prior_lonlat or self.config.prior_lonlat
            vehicle = self._to_xy(prior) if prior is not None else None
        return None if vehicle is None else (vehicle[0] + offset[0], vehicle[1] + offset[1])

    # -- one frame --------------------------------------------------------------------------
    def process(self, frame: Frame, decode_s: float = 0.0) -> Optional[Dict[str, Any]]:
        """Localise one frame; returns its record, or None if the frame had to be skipped."""
        clock = self._clock
        timings = {"decode": decode_s}
        start = clock()
        # What backend.embed_images does, in two steps so that preprocessing and the network are
        # timed apart (the overhead budget counts everything but the network).
        image = frame.image
        spec = self.backend.identity.preprocess
        # The heading error the last verified fit measured is taken off this frame's heading.
        correction = self.heading_correction.at(frame.t)
        attitude = with_heading_error_removed(self.config.camera.attitude(frame), correction)
        heading = self.config.camera.heading(frame)
        heading = None if heading is None else (heading - correction) % 360.0
        if self.query_view.rectified:
            image = prepare_query(image, self.query_view, attitude, spec.size)
        elif self.config.north_up and heading is not None:
            image = rotate_to_north_up(image, heading)
        batch = preprocess_batch([image], spec)
        after_preprocess = clock()
        embedding = self.backend.embed(batch)
        after_embed = clock()
        timings["preprocess"] = after_preprocess - start
        timings["embed"] = after_embed - after_preprocess
        if not np.all(np.isfinite(embedding)):
            self.counters.frames_nonfinite += 1
            LOG.warning("frame %d: non-finite embedding, skipped", frame.index)
            return None

        offset = look_at_offset(attitude)
        self.filter.predict(frame.t, self._odometry(frame))
        window = self.window_policy.choose(frame.t, self._window_centre(frame, offset))
        scores, indices = self.bank.search(embedding, self.search_k, window=window)
        margin = None
        if indices[0, 0] >= 0:
            margin = self.bank.margin(embedding, scores[0], indices[0], window=window).margin
        after_search = clock()
        if window is None:
            self.counters.searches_global += 1
        else:
            self.counters.searches_window += 1

        retrieval: Optional[Fix] = None
        if margin is not None:
            retrieval = self.estimator.estimate(scores[0], indices[0], margin)
        after_estimate = clock()
        fine = self._refine(frame, attitude, heading, offset, indices[0], timings)
        fix = self._geometric_fix(fine, scores[0], indices[0], retrieval) or retrieval
        heading_error: Optional[float] = None
        if fine is not None and fix is not None and fix.source == "geometric" and fine.rotation_deg is not None:
            # The fit measured what heading error is left: the vehicle lies behind the look-at
            # point along the true heading, and the next frames start from this estimate.
            heading_error = correction + fine.rotation_deg  # this fit's measurement, as reported
            estimate = self.heading_correction.measured(frame.t, correction, fine.rotation_deg)
            attitude = with_heading_error_removed(attitude, estimate - correction)
            offset = look_at_offset(attitude)
        self.window_policy.observe(frame.t, fix is not None and fix.confident)
        after_refine = clock()
        status = self._filter_fix(frame, fix, offset, offset_covariance(
            attitude, self.config.attitude_std, heading_measured=fix is not None and fix.source == "geometric"))
        after_filter = clock()
        timings["search"] = after_search - after_embed
        timings["estimate"] = after_estimate - after_search
        timings["refine"] = after_refine - after_estimate
        timings["filter"] = after_filter - after_refine
        self.counters.frames_processed += 1
        self.stage_means.add(timings)
        return self._record(frame, fix, retrieval, fine, status, window, timings, offset, heading_error)

    # -- fine stage -------------------------------------------------------------------------
    def _refine(self, frame: Frame, attitude: Optional[CameraAttitude], heading: Optional[float],
                offset: Tuple[float, float], indices: np.ndarray, timings: Dict[str, float]) -> Optional[FineResult]:
        """Verify this frame against the bank's local features around the candidate regions."""
        if self.fine is None:
            return None
        offset_cov = offset_covariance(attitude, self.config.attitude_std)
        result = self.fine.refine(frame.image, attitude, heading, self._candidates(frame, offset, offset_cov, indices),
                                  self._clock)
        for stage, seconds in result.timings.items():
            timings["refine_" + stage] = seconds
        return result

    def _tracking(self, t: float) -> bool:
        """The filter's state was confirmed by a geometric fix recently and is still tight."""
        return (self._last_geometric_t is not None and t - self._last_geometric_t <= self.config.tracking_timeout_s
                and self.filter.initialised and self.filter.position_std() <= self.config.tracking_std_m)

    def _candidates(self, frame: Frame, offset: Tuple[float, float], offset_cov: np.ndarray,
                    indices: np.ndarray) -> List[Candidate]:
        """Where the look-at point may be. Tracking: around the filter's prediction, as far as the
        filter's uncertainty and the look-at offset's (the attitude's errors) allow. Otherwise also
        around the vehicle's own prior (dead reckoning, which an untrained or misled retrieval
        cannot corrupt) and the best distinct retrieved tiles."""
        window_radius = self.config.window.radius_m or 400.0
        candidates: List[Candidate] = []
        if self.filter.initialised:
            x, y = self.filter.position
            spread = float(np.sqrt(max(np.linalg.eigvalsh(self.filter.cov[:2, :2] + offset_cov))))
            radius = min(max(3.0 * spread, 30.0), window_radius)
            candidates.append(Candidate(x + offset[0], y + offset[1], radius, "filter"))
            if self._tracking(frame.t):
                return candidates
        prior = frame.prior_lonlat or self.config.prior_lonlat
        if prior is not None:
            x, y = self._to_xy(prior)
            candidates.append(Candidate(x + offset[0], y + offset[1], window_radius, "prior"))
        tiles = self.bank.tiles
        retrieved: List[Candidate] = []
        for index in indices:
            if len(retrieved) >= self.config.refine_candidates or index < 0:
                break
            x, y, side = float(tiles.x[index]), float(tiles.y[index]), float(tiles.side_m[index])
            if all(math.hypot(x - c.x, y - c.y) > side for c in retrieved):
                retrieved.append(Candidate(x, y, 0.75 * side, "retrieval"))
        return candidates + retrieved

    def _geometric_fix(self, fine: Optional[FineResult], scores: np.ndarray, indices: np.ndarray,
                       retrieval: Optional[Fix]) -> Optional[Fix]:
        """The verified fit as this frame's fix; its tile is the best retrieved one containing it."""
        if fine is None or not fine.verified or fine.look_at is None:
            return None
        self.counters.fixes_geometric += 1
        order = rerank(fine.look_at, self.tile_xy, self.bank.tiles.side_m, indices)
        best = int(order[0]) if len(order) else 0
        tile = int(indices[best]) if len(indices) and indices[best] >= 0 else -1
        score = float(scores[best]) if tile >= 0 else float("nan")
        cov = np.asarray(fine.covariance)
        return Fix(fine.look_at, tile, score, retrieval.margin if retrieval else float("nan"), 1.0, True,
                   float(np.sqrt(max(np.linalg.eigvalsh(cov)))), "geometric", cov)

    def _filter_fix(self, frame: Frame, fix: Optional[Fix], offset: Tuple[float, float],
                    offset_cov: np.ndarray) -> Dict[str, Any]:
        self._fused_look_at = None
        if fix is None:
            return {"status": "no_fix", "mahalanobis2": None}
        if not fix.confident:
            return {"status": "low_confidence", "mahalanobis2": None}
        self.counters.fixes_confident += 1
        fix_cov = noise_covariance(fix.noise)
        predicted = None
        was_initialised = self.filter.initialised
        if was_initialised:
            # The look-at point as predicted (vehicle + this frame's offset, with the offset's
            # uncertainty), fused below with the fix if the filter accepts it.
            predicted = (np.asarray(self.filter.position) + offset, self.filter.cov[:2, :2] + offset_cov)
        vehicle = (fix.xy[0] - offset[0], fix.xy[1] - offset[1])
        geometric = fix.source == "geometric"
        tracking = self._tracking(frame.t)
        # While verified fits keep the filter on track, retrieval fixes cannot move it away; verified
        # fits can, by the usual consensus of rejected fixes.
        result = self.filter.update(vehicle, frame.t, fix_cov + offset_cov, may_reinitialise=geometric or not tracking)
        if geometric and not result.accepted and not tracking:
            # A verified fit outweighs a state that no verified fit has confirmed (it came from
            # retrieval fixes or dead reckoning): start again from it.
            self.filter.reset(vehicle, frame.t, fix_cov + offset_cov)
            result = UpdateResult(True, result.mahalanobis2, True)
        if geometric and result.accepted:
            self._last_geometric_t = frame.t
        d2 = round(result.mahalanobis2, 3)
        if not result.accepted:
            self.counters.fixes_rejected += 1
            LOG.info("frame %d: fix rejected by the gate (Mahalanobis^2 %.1f)", frame.index, d2)
            return {"status": "rejected", "mahalanobis2": d2}
        self.counters.fixes_accepted += 1
        self._fused_look_at = np.asarray(fix.xy, dtype=np.float64)
        if predicted is not None and not result.reinitialised:
            mean, cov = predicted
            gain = cov @ np.linalg.inv(cov + fix_cov)
            self._fused_look_at = mean + gain @ (self._fused_look_at - mean)
        if result.reinitialised and was_initialised:
            self.counters.filter_reinitialisations += 1
            LOG.info("frame %d: filter re-initialised on the fix after repeated rejections", frame.index)
            return {"status": "reinitialised", "mahalanobis2": d2}
        return {"status": "accepted", "mahalanobis2": d2}

    def _record(self, frame: Frame, fix: Optional[Fix], retrieval: Optional[Fix], fine: Optional[FineResult],
                status: Dict[str, Any], window: Optional[SearchWindow], timings: Dict[str, float],
                offset: Tuple[float, float], heading_error: Optional[float]) -> Dict[str, Any]:
        """Positions are of the look-at point (what retrieval sees, compared with the truth), plus
        the vehicle's (`vehicle_lat/lon`: the output minus the look-at offset, for the autopilot).
        `fix_*` is the frame's fix (geometric when verified, else retrieval); `retrieval_*` the
        retrieval fix alone."""
        record: Dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
        record.update(status)
        record["t"] = round(frame.t, 4)
        record["frame"] = frame.index
        record["search"] = "global" if window is None else "window"
        record["window_m"] = None if window is None else round(window.radius_m, 1)
        record["altitude_m"] = frame.altitude_m
        raw = self._fix_fields(record, fix, retrieval, fine)
        record["heading_error_deg"] = None if heading_error is None else round(heading_error, 2)
        filtered: Optional[Tuple[float, float]] = None
        if self.filter.initialised:
            vehicle = self.filter.position
            look_at = (vehicle[0] + offset[0], vehicle[1] + offset[1])
            if self._fused_look_at is not None:
                look_at = (float(self._fused_look_at[0]), float(self._fused_look_at[1]))
            filtered = self._to_lonlat(look_at)
            record["filt_lon"], record["filt_lat"] = filtered
        vehicle_xy: Optional[Tuple[float, float]]
        if self.config.use_filter:
            output = filtered
            vehicle_xy = self.filter.position if filtered else None
            record["accuracy_m"] = round(self.filter.position_std(), 2) if filtered else None
            # Trust the filter while its uncertainty stays within what a poor single fix would give.
            record["trusted"] = bool(filtered) and self.filter.position_std() <= self.estimator.max_std_m
        else:
            output = raw
            vehicle_xy = None if fix is None else (fix.xy[0] - offset[0], fix.xy[1] - offset[1])
            record["accuracy_m"] = round(fix.std_m, 2) if fix is not None else None
            record["trusted"] = fix is not None and fix.confident
        if output is not None and vehicle_xy is not None:
            record["lon"], record["lat"] = output
            record["vehicle_lon"], record["vehicle_lat"] = self._to_lonlat(vehicle_xy)
        if frame.truth_lonlat is not None:
            self._error_fields(record, frame.truth_lonlat, raw, filtered, fix)
        record["timings_ms"] = {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()}
        return record

    def _fix_fields(self, record: Dict[str, Any], fix: Optional[Fix], retrieval: Optional[Fix],
                    fine: Optional[FineResult]) -> Optional[Tuple[float, float]]:
        """Fill the fix's fields; returns the fix as (lon, lat)."""
        if retrieval is not None:
            record["retrieval_lon"], record["retrieval_lat"] = self._to_lonlat(retrieval.xy)
        if fine is not None:
            record["refine"] = "verified" if fine.verified else fine.reason
            record["inliers"] = fine.inliers
            record["inlier_ratio"] = None if fine.inlier_ratio is None else round(fine.inlier_ratio, 3)
        if fix is None:
            return None
        raw = self._to_lonlat(fix.xy)
        record["fix_lon"], record["fix_lat"] = raw
        record["fix_source"] = fix.source
        record["tile"] = fix.tile_index
        record["score"] = round(fix.score, 5) if math.isfinite(fix.score) else None
        record["margin"] = round(fix.margin, 5) if math.isfinite(fix.margin) else None
        record["confidence"] = round(fix.confidence, 4)
        record["confident"] = fix.confident
        cov = noise_covariance(fix.noise)
        record["fix_cov_m2"] = [round(float(cov[0, 0]), 3), round(float(cov[0, 1]), 3), round(float(cov[1, 1]), 3)]
        return raw

    def _error_fields(self, record: Dict[str, Any], truth: Tuple[float, float], raw: Optional[Tuple[float, float]],
                      filtered: Optional[Tuple[float, float]], fix: Optional[Fix]) -> None:
        """Errors against the source's truth, per estimate, into the record and the run's stats."""
        record["truth_lon"], record["truth_lat"] = truth

        def error(lonlat: Tuple[float, float]) -> float:
            return round(geodesic_distance_m(lonlat[0], lonlat[1], truth[0], truth[1]), 2)

        if raw is not None:
            record["fix_error_m"] = error(raw)
            self.raw_errors.add(record["fix_error_m"])
            if fix is not None and fix.source == "geometric":
                record["fine_error_m"] = record["fix_error_m"]
                self.fine_errors.add(record["fine_error_m"])
        if record["retrieval_lon"] is not None:
            record["retrieval_error_m"] = error((record["retrieval_lon"], record["retrieval_lat"]))
            self.retrieval_errors.add(record["retrieval_error_m"])
        if filtered is not None:
            record["filt_error_m"] = error(filtered)
            self.filtered_errors.add(record["filt_error_m"])
        record["error_m"] = record["filt_error_m"] if self.config.use_filter else record["fix_error_m"]

    # -- the run ----------------------------------------------------------------------------
    def timed_frames(self, source: FrameSource) -> Iterator[Tuple[Frame, float]]:
        """(frame, seconds spent decoding it) for every frame of `source`."""
        iterator = iter(source)
        while True:
            start = self._clock()
            try:
                frame = next(iterator)
            except StopIteration:
                return
            yield frame, self._clock() - start

    def request_stop(self) -> None:
        """Finish the current frame, then stop (safe to call from a signal handler)."""
        self._stop_requested = True

    def run(self, source: FrameSource, max_frames: Optional[int] = None) -> Dict[str, Any]:
        """Process the source until it ends, `max_frames` were processed, `request_stop()` or Ctrl-C;
        every sink is closed (flushed, files renamed into place) whatever happens. Returns the summary."""
        self.stop_reason = "source ended"
        try:
            for frame, decode_s in self.timed_frames(source):
                if self._stop_requested:
                    self.stop_reason = "interrupted"
                    break
                if self.rate is not None and not self.rate.admit(frame.t):
                    self.counters.frames_dropped_rate += 1
                    continue
                record = self.process(frame, decode_s)
                if record is None:
                    continue
                start = self._clock()
                for sink in self.sinks:
                    sink.write(record)
                self.stage_means.add({"sinks": self._clock() - start})
                if max_frames is not None and self.counters.frames_processed >= max_frames:
                    self.stop_reason = "frame limit reached"
                    break
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
        except SourceLostError as exc:
            self.stop_reason = "source lost: {}".format(exc)
        except BrokenPipeError:
            self.stop_reason = "output closed"
        finally:
            source.close()
            self.close_sinks()
        return self.summary(source)

    def close_sinks(self) -> None:
        errors: List[str] = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close the others regardless; report all
                errors.append("{}: {}".format(type(sink).__name__, exc))
        self.sinks = []
        if errors:
            LOG.error("closing sinks failed: %s", "; ".join(errors))

    def summary(self, source: FrameSource) -> Dict[str, Any]:
        means = self.stage_means.means()
        per_frame = sum(means.get(stage, 0.0) for stage in (*STAGES, "sinks"))
        result: Dict[str, Any] = {
            "source": source.description,
            "stop_reason": self.stop_reason,
            "output": "filtered" if self.config.use_filter else "raw fix",
        }
        result.update(source.stats.to_dict())
        result.update(vars(self.counters))
        result["mean_ms"] = {name: round(seconds * 1000.0, 3) for name, seconds in means.items()}
        if per_frame > 0:
            result["non_inference_share"] = round(1.0 - means.get("embed", 0.0) / per_frame, 4)
        if self.raw_errors.n or self.filtered_errors.n:
            result["truth_point"] = TRUTH_POINT
            result["distance"] = DISTANCE_METHOD
            # The frame's fix (geometric where verified), each kind alone, and the filter's output.
            result["error_raw_fix"] = self.raw_errors.summary()
            result["error_retrieval_fix"] = self.retrieval_errors.summary()
            result["error_fine_fix"] = self.fine_errors.summary()
            result["error_filtered"] = self.filtered_errors.summary()
        return result
