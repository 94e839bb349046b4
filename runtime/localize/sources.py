"""Frame sources for the localization loop.

`open_source(spec)` understands:
  * a video file path                      -> OpenCV (FFmpeg) decoding
  * a camera index ("0", "1")               -> live camera
  * rtsp://, http(s)://, udp:// URLs        -> live network stream (FFmpeg)
  * a GStreamer pipeline (contains "!")     -> live, via cv2.CAP_GSTREAMER, e.g. the Jetson CSI camera
        nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 !
        nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1
  * an image folder                         -> the images in sorted file-name order
  * synthetic:ORTHO.tif                     -> a flight rendered from an orthophoto, with the true
                                               look-at point and a simulated noisy prior per frame

Every source yields `Frame`s, counts frames it had to skip because they could not be decoded,
and a live source that stops delivering is reopened with exponential backoff (a bounded number of
attempts per outage), so a loose cable does not end a flight. Python 3.8 compatible.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional

import numpy as np

from meanloc.errors import MeanlocError, MissingDependencyError

from ..images import (
    IMAGE_SUFFIXES,
    MIN_IMAGE_SIDE,
    ImageError,
    ImageMissingError,
    is_image_name,
    read_image,
)
from ..trt_env import opencv_has_gstreamer
from .frames import Frame, FrameSource, SourceLostError

if TYPE_CHECKING:  # the synthetic source pulls in the simulator: import it only when used
    from .synthetic import SyntheticFlightOptions

LOG = logging.getLogger("meanloc.localize")
LIVE_URL_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


def as_bgr_frame(image: Any) -> Optional[np.ndarray]:
    """A decodable BGR uint8 image, or None for a corrupt/empty one (gray and BGRA are converted)."""
    if not isinstance(image, np.ndarray) or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < MIN_IMAGE_SIDE:
        return None
    if image.shape[2] == 4:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_attempts: int = 8  # per outage; the source gives up after this many failed reopenings

    def delays(self) -> Iterator[float]:
        delay = self.initial_delay_s
        for _ in range(self.max_attempts):
            yield delay
            delay = min(delay * 2.0, self.max_delay_s)


class CaptureSource(FrameSource):
    """Anything cv2.VideoCapture-like: `open_capture()` returns an object with read/isOpened/release/get.

    A file ends at its last frame; a decode failure before the end is counted as corrupt and
    skipped (up to `max_consecutive_failures` in a row). A live source that fails is released and
    reopened with backoff from `reconnect`.
    """

    def __init__(self, open_capture: Callable[[], Any], description: str, live: bool,
                 reconnect: Optional[ReconnectPolicy] = None, fps_fallback: float = 30.0,
                 max_consecutive_failures: int = 25, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._open_capture = open_capture
        self.description = description
        self.live = live
        self.reconnect = reconnect or ReconnectPolicy()
        self._fps_fallback = fps_fallback
        self._max_failures = max_consecutive_failures
        self._sleep = sleep
        self._clock = clock
        self._capture: Any = None

    def _open(self) -> Any:
        capture = self._open_capture()
        if capture is None or not capture.isOpened():
            if capture is not None:
                capture.release()
            return None
        return capture

    def _reopen_with_backoff(self) -> Any:
        for delay in self.reconnect.delays():
            self._sleep(delay)
            capture = self._open()
            if capture is not None:
                self.stats.reconnects += 1
                return capture
        raise SourceLostError("{} lost: still unavailable after {} reconnection attempts".format(
            self.description, self.reconnect.max_attempts))

    def _file_has_more(self, capture: Any) -> bool:
        import cv2

        total = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        position = capture.get(cv2.CAP_PROP_POS_FRAMES)
        return total > 0 and position < total

    def _timestamp(self, capture: Any, index: int, start: float) -> float:
        if self.live:
            return self._clock() - start
        import cv2

        msec = capture.get(cv2.CAP_PROP_POS_MSEC)
        # Some containers report no timestamps: fall back to the nominal frame rate.
        return msec / 1000.0 if msec and msec > 0 else index / self._fps_fallback

    def __iter__(self) -> Iterator[Frame]:
        self._capture = self._open()
        if self._capture is None:
            if not self.live:
                raise MeanlocError("cannot open {}".format(self.description))
            self._capture = self._reopen_with_backoff()
        start = self._clock()
        index = 0
        failures = 0
        while True:
            ok, image = self._capture.read()
            frame = as_bgr_frame(image) if ok else None
            if frame is not None:
                failures = 0
                self.stats.frames += 1
                yield Frame(index, self._timestamp(self._capture, index, start), frame)
                index += 1
                continue
            if self.live:
                if ok:  # delivered garbage: skip it, the stream itself is alive
                    self.stats.corrupt += 1
                    index += 1
                    continue
                self._capture.release()
                self._capture = self._reopen_with_backoff()
                continue
            failures += 1
            if failures > self._max_failures or not (ok or self._file_has_more(self._capture)):
                return
            self.stats.corrupt += 1
            index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class ImageFolderSource(FrameSource):
    """Images of a folder in sorted file-name order, `period_s` apart. A bad file (damaged, too big,
    too small, not an image) is skipped and counted as corrupt, a file deleted since the folder was
    listed as missing; `stats.bad_images` names the first few for the end-of-run line."""

    def __init__(self, folder: str, period_s: float = 1.0) -> None:
        super().__init__()
        self.description = "image folder {}".format(folder)
        self.paths: List[str] = sorted(str(p) for p in Path(folder).iterdir() if p.is_file() and is_image_name(p))
        if not self.paths:
            raise MeanlocError("image folder {} holds no images ({})".format(folder, ", ".join(IMAGE_SUFFIXES)))
        self.period_s = period_s

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                frame = read_image(path)
            except ImageError as exc:
                self.stats.bad_images.add(exc)
                if isinstance(exc, ImageMissingError):
                    self.stats.missing += 1
                else:
                    self.stats.corrupt += 1
                LOG.warning("skipped frame %d: %s", index, exc)
                continue
            self.stats.frames += 1
            yield Frame(index, index * self.period_s, frame)


def _video_capture(target: Any, api: Optional[int] = None) -> Callable[[], Any]:
    import cv2

    def open_capture() -> Any:
        return cv2.VideoCapture(target) if api is None else cv2.VideoCapture(target, api)

    return open_capture


def open_source(spec: str, synthetic: Optional["SyntheticFlightOptions"] = None,
                folder_period_s: float = 1.0, reconnect: Optional[ReconnectPolicy] = None) -> FrameSource:
    """Turn a `--source` string into a FrameSource (see the module docstring for the forms)."""
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("reading frames needs OpenCV (pip install opencv-python-headless; on Jetson use "
                           "JetPack's python3-opencv, which has GStreamer)") from None
    if spec.startswith("synthetic:"):
        from .synthetic import SyntheticFlightOptions, SyntheticFlightSource

        return SyntheticFlightSource(spec[len("synthetic:"):], synthetic or SyntheticFlightOptions())
    if spec.isdigit():
        return CaptureSource(_video_capture(int(spec)), "camera {}".format(spec), live=True, reconnect=reconnect)
    if spec.lower().startswith(LIVE_URL_PREFIXES):
        return CaptureSource(_video_capture(spec, cv2.CAP_FFMPEG), "stream {}".format(spec), live=True,
                             reconnect=reconnect)
    if "!" in spec:
        if not opencv_has_gstreamer(cv2.getBuildInformation()):
            raise MeanlocError(
                "this OpenCV ({}) was built without GStreamer, so it cannot open a GStreamer pipeline; on Jetson "
                "use JetPack's python3-opencv and uninstall opencv-python from pip".format(cv2.__version__)
            )
        return CaptureSource(_video_capture(spec, cv2.CAP_GSTREAMER), "GStreamer pipeline", live=True,
                             reconnect=reconnect)
    if os.path.isdir(spec):
        return ImageFolderSource(spec, folder_period_s)
    if os.path.isfile(spec):
        return CaptureSource(_video_capture(spec), "video {}".format(spec), live=False)
    raise MeanlocError("source {!r} is not a video file, image folder, camera index, stream URL, GStreamer "
                       "pipeline or synthetic:ORTHO.tif".format(spec))
