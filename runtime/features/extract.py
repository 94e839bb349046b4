"""Local features: detection and description of ground images at a known scale and orientation.

Both sides of a match are north-up images at the same metres per pixel (the bank's orthophoto
and the frame's rectified ground patch), so features are **upright**: orientation is fixed to
north instead of estimated, which keeps descriptors comparable where orientation assignment
would be noisy (COLMAP `SiftExtraction.upright`; openMVG/openMVG#653; OpenCV honours a preset
`KeyPoint.angle` in SIFT and ORB `compute()`, opencv/opencv#28089). Measured on the cross-source
synthetic world, upright SIFT gave ~3x the translation-vote peak of oriented SIFT
(bench/RESULTS.md, "local features").

Local contrast is equalised with CLAHE over tiles of a fixed ground size, so the bank and a query
see the same normalisation whatever their pixel extent. Descriptors are stored as uint8 (SIFT's
float values are already integers in 0..255 after OpenCV's scaling; RootSIFT is quantised) so a
feature layer stays within a few MB per km².

`FeatureExtractor` is the interface a learned extractor would implement; the OpenCV kinds are
`sift`, `rootsift` (Arandjelović & Zisserman, CVPR 2012), `orb` and `akaze`. OpenCV 5 wheels have
no AKAZE (opencv/opencv#25292): asking for it there is a one-line error.
Python 3.8 compatible, torch-free.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, NamedTuple, Optional

import numpy as np

from meanloc.errors import MeanlocError

from ..geo.orthophoto import require_cv2

FEATURE_KINDS = ("sift", "rootsift", "orb", "akaze")
# Chosen by measurement, within the fine stage's cost budget: bench/RESULTS.md, "Which local features".
DEFAULT_FEATURE_KIND = "sift"
NORM_L2 = "l2"
NORM_HAMMING = "hamming"


@dataclass(frozen=True)
class FeatureSpec:
    """How features are extracted; recorded in the bank manifest so queries use the same."""

    kind: str = DEFAULT_FEATURE_KIND
    # CLAHE clip limit (OpenCV's default is 40, far too strong for aerial texture) and tile side.
    clahe_clip: float = 2.0
    clahe_tile_px: int = 64

    def validate(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise MeanlocError("unknown local feature kind {!r} (choose {})".format(self.kind, ", ".join(FEATURE_KINDS)))
        if not self.clahe_clip >= 0 or self.clahe_tile_px < 8:
            raise MeanlocError("invalid CLAHE settings: clip {} tile {} px".format(self.clahe_clip, self.clahe_tile_px))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "FeatureSpec":
        try:
            spec = cls(str(payload["kind"]), float(payload["clahe_clip"]), int(payload["clahe_tile_px"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MeanlocError("invalid local feature spec {!r} ({})".format(dict(payload), exc)) from None
        spec.validate()
        return spec


class LocalFeatures(NamedTuple):
    """Features of one image. `xy` are pixel coordinates in the corner convention (pixel (c, r)
    spans c..c+1), `size` the keypoint diameter in pixels, `descriptors` uint8 rows."""

    xy: np.ndarray  # (N, 2) float32
    size: np.ndarray  # (N,) float32
    response: np.ndarray  # (N,) float32
    descriptors: np.ndarray  # (N, D) uint8

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.xy.shape[0])

    def take(self, rows: np.ndarray) -> "LocalFeatures":
        return LocalFeatures(self.xy[rows], self.size[rows], self.response[rows], self.descriptors[rows])


class FeatureExtractor:
    """Interface: north-up BGR or grey image at the layer's scale -> `LocalFeatures`."""

    spec: FeatureSpec
    norm: str  # NORM_L2 or NORM_HAMMING: how descriptors compare
    descriptor_size: int

    def detect_and_describe(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> LocalFeatures:
        raise NotImplementedError


def empty_features(descriptor_size: int) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                         np.zeros((0, descriptor_size), np.uint8))


class OpenCVFeatures(FeatureExtractor):
    """SIFT, RootSIFT, ORB or AKAZE from OpenCV's main modules, upright."""

    def __init__(self, spec: FeatureSpec) -> None:
        spec.validate()
        cv2 = require_cv2()
        self.spec = spec
        self._cv2 = cv2
        kind = spec.kind
        if kind in ("sift", "rootsift"):
            if not hasattr(cv2, "SIFT_create"):
                raise MeanlocError("this OpenCV ({}) has no cv2.SIFT_create (needs >= 4.4)".format(cv2.__version__))
            # A lower contrast threshold than Lowe's 0.04 keeps features on low-contrast ground
            # (dry fields, haze); grid bucketing then keeps the strongest per cell.
            self._detector = cv2.SIFT_create(nfeatures=0, contrastThreshold=0.02)
            self.norm, self.descriptor_size = NORM_L2, 128
        elif kind == "orb":
            self._detector = cv2.ORB_create(nfeatures=100000, fastThreshold=10)
            self.norm, self.descriptor_size = NORM_HAMMING, 32
        else:
            if not hasattr(cv2, "AKAZE_create"):
                raise MeanlocError("this OpenCV ({}) has no AKAZE (OpenCV 5 moved it to contrib); install "
                                   "opencv-python-headless<5 or choose --local-features sift".format(cv2.__version__))
            self._detector = cv2.AKAZE_create(descriptor_type=cv2.AKAZE_DESCRIPTOR_MLDB_UPRIGHT, threshold=0.0005)
            self.norm, self.descriptor_size = NORM_HAMMING, 61

    def grey(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if self.spec.clahe_clip <= 0:
            return grey
        tiles = (max(1, round(grey.shape[1] / self.spec.clahe_tile_px)), max(1, round(grey.shape[0] / self.spec.clahe_tile_px)))
        return cv2.createCLAHE(clipLimit=self.spec.clahe_clip, tileGridSize=tiles).apply(grey)

    def detect_and_describe(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> LocalFeatures:
        grey = self.grey(image)
        mask8 = None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8) * 255
        if self.spec.kind == "akaze":
            keypoints, descriptors = self._detector.detectAndCompute(grey, mask8)
        else:
            keypoints = _upright(self._detector.detect(grey, mask8))
            keypoints, descriptors = self._detector.compute(grey, keypoints)
        if descriptors is None or not keypoints:
            return empty_features(self.descriptor_size)
        # OpenCV puts pixel centres at integers; the corner convention at +0.5.
        xy = np.array([k.pt for k in keypoints], dtype=np.float32) + 0.5
        size = np.array([k.size for k in keypoints], dtype=np.float32)
        response = np.array([k.response for k in keypoints], dtype=np.float32)
        return LocalFeatures(xy, size, response, self._to_uint8(descriptors))

    def _to_uint8(self, descriptors: np.ndarray) -> np.ndarray:
        if self.spec.kind == "sift":
            return np.clip(np.round(descriptors), 0, 255).astype(np.uint8)
        if self.spec.kind == "rootsift":
            l1 = descriptors / (descriptors.sum(axis=1, keepdims=True) + 1e-7)
            return np.clip(np.round(np.sqrt(l1) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(descriptors, dtype=np.uint8)


def _upright(keypoints: Any) -> list:
    """One keypoint per location and scale, with its orientation fixed to north. SIFT's detector
    duplicates a keypoint for each dominant orientation; keep the strongest copy."""
    strongest: Dict[Any, Any] = {}
    for keypoint in keypoints:
        key = (round(keypoint.pt[0], 2), round(keypoint.pt[1], 2), round(keypoint.size, 2))
        if key not in strongest or strongest[key].response < keypoint.response:
            strongest[key] = keypoint
    upright = list(strongest.values())
    for keypoint in upright:
        keypoint.angle = 0.0
    return upright


def make_extractor(spec: FeatureSpec) -> FeatureExtractor:
    return OpenCVFeatures(spec)


def strongest_per_cell(xy: np.ndarray, response: np.ndarray, cell: float, per_cell: int,
                       origin: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows to keep: the `per_cell` strongest features in each square cell of side `cell`
    (grid bucketing: spread features over the image instead of clustering them where the
    texture is strongest; Bailo et al., Pattern Recognition Letters 2018). Ascending rows."""
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    base = xy.min(axis=0) if origin is None else origin
    cells = np.floor((xy - base) / cell).astype(np.int64)
    cell_id = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
    order = np.lexsort((-response, cell_id))  # by cell, strongest first within a cell
    sorted_cells = cell_id[order]
    first = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank = np.arange(len(order)) - first
    return np.sort(order[rank < per_cell])


def descriptors_for_matching(descriptors: np.ndarray, norm: str) -> np.ndarray:
    """What the matchers take: float32 for the L2 matrix product (OpenCV's uint8 L2 path was ~4x
    slower than its float32 one, measured), uint8 for OpenCV's Hamming matcher."""
    if norm == NORM_L2:
        return np.asarray(descriptors, dtype=np.float32)
    return np.ascontiguousarray(descriptors, dtype=np.uint8)
