"""What a frame source delivers to the loop: `Frame`, the `FrameSource` interface and its counters.

Sources of every kind (`sources.py`: cameras, videos, streams, folders; `synthetic.py`: simulated
flights; the telemetry and DEM wrappers) build on this module alone. Python 3.8 compatible.
"""

from dataclasses import dataclass, field
from typing import Iterator, Optional, Tuple

import numpy as np

from meanloc.errors import MeanlocError

from ..images import BadImages


@dataclass
class Frame:
    index: int  # position in the source, counting frames that were skipped
    t: float  # seconds on the source's clock (video timestamp, capture time, or flight time)
    image: np.ndarray  # BGR uint8 (H, W, 3)
    truth_lonlat: Optional[Tuple[float, float]] = None
    prior_lonlat: Optional[Tuple[float, float]] = None  # the vehicle's own, drifting estimate (dead reckoning)
    heading_deg: Optional[float] = None  # of the optical axis, clockwise from north
    altitude_m: Optional[float] = None  # above ground
    pitch_deg: Optional[float] = None  # camera pitch from nadir
    roll_deg: Optional[float] = None
    hfov_deg: Optional[float] = None  # the lens's horizontal field of view
    altitude_amsl_m: Optional[float] = None  # barometric altitude above sea level (for --dem)


@dataclass
class SourceStats:
    frames: int = 0
    corrupt: int = 0  # frames that could not be decoded or were damaged
    missing: int = 0  # image files that disappeared before they were read
    reconnects: int = 0
    bad_images: BadImages = field(default_factory=BadImages)  # the skipped image files, by reason

    def to_dict(self) -> dict:
        return {"frames_read": self.frames, "frames_corrupt": self.corrupt, "frames_missing": self.missing,
                "reconnects": self.reconnects,
                "skipped_images": self.bad_images.summary() if self.bad_images else None}


class SourceLostError(MeanlocError):
    """A live source stayed unavailable through every reconnection attempt."""


class FrameSource:
    """Iterate to get frames; `stats` counts them; `live` sources run on wall-clock time."""

    description = "source"
    live = False

    def __init__(self) -> None:
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release devices and files."""
