"""Where to search: a geographic window around the prediction, or the whole bank (§4.3).

The radius grows with the time since the last confident fix, R(t) = R0 + v_drift * (t - t_fix),
because the prediction drifts away from the truth while no good fix corrects it. The search goes
global when there is nothing to centre on, when R reaches R_max, or after `max_low_confidence`
consecutive unconfident frames (the window may simply be in the wrong place after a jump).
Python 3.8 compatible.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..bank.bank import SearchWindow


@dataclass(frozen=True)
class WindowConfig:
    # R0: None disables windowing (always global).
    radius_m: Optional[float] = None
    drift_mps: float = 5.0
    max_radius_m: float = 3000.0
    max_low_confidence: int = 10


class SearchWindowPolicy:
    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.t_fix: Optional[float] = None
        self.low_confidence_run = 0

    def choose(self, t: float, centre_xy: Optional[Tuple[float, float]]) -> Optional[SearchWindow]:
        """The bank search window for a frame at time `t`, centred on `centre_xy` in the bank's local
        metric frame (None: search globally)."""
        cfg = self.config
        if cfg.radius_m is None or centre_xy is None or self.low_confidence_run >= cfg.max_low_confidence:
            return None
        if self.t_fix is None:
            # Time only starts counting against the prior once the loop has seen a frame.
            self.t_fix = t
        radius = cfg.radius_m + cfg.drift_mps * max(t - self.t_fix, 0.0)
        if radius >= cfg.max_radius_m:
            return None
        return SearchWindow(radius, x=centre_xy[0], y=centre_xy[1])

    def observe(self, t: float, confident: bool) -> None:
        if confident:
            self.t_fix = t
            self.low_confidence_run = 0
        else:
            self.low_confidence_run += 1
