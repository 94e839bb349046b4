"""Frame sources: real video and image folders, corrupt frames, live reconnection with backoff."""

import cv2
import numpy as np
import pytest
from localize_support import write_video

from meanloc.errors import MeanlocError
from meanloc.runtime.localize.frames import SourceLostError
from meanloc.runtime.localize.sources import (
    CaptureSource,
    ImageFolderSource,
    ReconnectPolicy,
    open_source,
)
from meanloc.runtime.trt_env import opencv_has_gstreamer


def _frames(n, size=48):
    return [np.full((size, size, 3), 20 * i, dtype=np.uint8) for i in range(n)]


def test_video_file_yields_every_frame_with_increasing_timestamps(tmp_path):
    path = write_video(tmp_path / "clip.avi", _frames(12), fps=10.0)
    source = open_source(str(path))
    frames = list(source)
    source.close()
    assert len(frames) == 12 and source.stats.frames == 12 and source.stats.corrupt == 0
    times = [f.t for f in frames]
    assert times == sorted(times) and times[-1] == pytest.approx(1.1, abs=0.11)
    assert frames[5].image.shape == (48, 48, 3)
    assert abs(int(frames[5].image.mean()) - 100) <= 3  # the frame written 6th


def test_image_folder_is_sorted_and_skips_unreadable_files(tmp_path):
    for i, image in enumerate(_frames(4)):
        cv2.imwrite(str(tmp_path / f"img_{3 - i:02d}.png"), image)
    (tmp_path / "img_99.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path), folder_period_s=0.5)
    assert isinstance(source, ImageFolderSource)
    frames = list(source)
    assert [int(f.image.mean()) for f in frames] == [60, 40, 20, 0]  # file-name order
    assert [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5]
    assert source.stats.corrupt == 1 and source.stats.frames == 4


class FakeCapture:
    """A cv2.VideoCapture stand-in: plays `script` ('f' frame, 'x' failed read, 'g' garbage)."""

    def __init__(self, script, opened=True, total=None):
        self.script = list(script)
        self.opened = opened
        self.total = total if total is not None else len(script)
        self.position = 0
        self.released = False

    def isOpened(self):
        return self.opened

    def read(self):
        if not self.script:
            return False, None
        step = self.script.pop(0)
        self.position += 1
        if step == "f":
            return True, np.zeros((16, 16, 3), np.uint8)
        if step == "g":
            return True, np.zeros((0,), np.uint8)
        return False, None

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(self.total)
        if prop == cv2.CAP_PROP_POS_FRAMES:
            return float(self.position)
        return 0.0

    def release(self):
        self.released = True


def test_live_source_reconnects_with_exponential_backoff_then_gives_up():
    captures = iter([
        FakeCapture("ffgx"),  # 2 frames, one garbage frame, then the link drops
        FakeCapture("", opened=False),  # reopening fails twice...
        FakeCapture("", opened=False),
        FakeCapture("fff"),  # ...then succeeds: 3 more frames, then the link drops for good
    ])
    sleeps = []
    policy = ReconnectPolicy(initial_delay_s=0.1, max_delay_s=0.3, max_attempts=4)
    source = CaptureSource(lambda: next(captures, FakeCapture("", opened=False)), "camera 0", live=True,
                           reconnect=policy, sleep=sleeps.append)
    frames = []
    with pytest.raises(SourceLostError, match="camera 0 lost"):
        for frame in source:
            frames.append(frame)
    assert len(frames) == 5 and source.stats.corrupt == 1 and source.stats.reconnects == 1
    # First outage: 3 attempts (0.1, 0.2, 0.3 s); second: all 4 fail (0.1, 0.2, 0.3, 0.3 capped).
    assert sleeps == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.3])


def test_file_source_skips_undecodable_frames_before_the_end():
    source = CaptureSource(lambda: FakeCapture("fxfgf"), "video clip", live=False)
    assert len(list(source)) == 3 and source.stats.corrupt == 2


@pytest.mark.parametrize("spec, message", [
    ("/no/such/file.mp4", "not a video file"),
    ("nvarguscamerasrc ! appsink", "GStreamer"),
])
def test_bad_sources_fail_with_one_line(spec, message):
    if "!" in spec and opencv_has_gstreamer(cv2.getBuildInformation()):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(MeanlocError, match=message) as info:
        open_source(spec)
    assert "\n" not in str(info.value)


def test_unopenable_video_file_is_an_error(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(MeanlocError, match="cannot open"):
        list(open_source(str(broken)))
