"""The one definition of image preprocessing, shared by training evaluation, calibration and
the onboard runtime.

An image enters as an OpenCV BGR uint8 array (H, W, 3), as `runtime.images.read_image` and
`cv2.VideoCapture` deliver it. It leaves as float32 NCHW: RGB order, resized to size x size with
`cv2.INTER_LINEAR_EXACT` (bit-exact across platforms, as the MEAN reference uses), scaled to
[0, 1], then ImageNet mean/std normalised.

The spec travels inside every artifact's manifest so that a consumer can refuse a model or bank
built with different preprocessing. Python 3.8 compatible.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from meanloc.errors import ArtifactMismatchError, MeanlocError, MissingDependencyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 384
    color_order: str = "RGB"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "INTER_LINEAR_EXACT"
    layout: str = "NCHW"
    input_format: str = "BGR uint8 (OpenCV)"

    def to_dict(self) -> Dict[str, Any]:
        payload = asdict(self)
        payload["mean"] = list(self.mean)
        payload["std"] = list(self.std)
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "PreprocessSpec":
        try:
            return cls(
                size=int(payload["size"]),
                color_order=str(payload.get("color_order", "RGB")),
                mean=tuple(float(v) for v in payload.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                std=tuple(float(v) for v in payload.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
                interpolation=str(payload.get("interpolation", "INTER_LINEAR_EXACT")),
                layout=str(payload.get("layout", "NCHW")),
                input_format=str(payload.get("input_format", "BGR uint8 (OpenCV)")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MeanlocError("invalid preprocessing spec {!r}: {}".format(dict(payload), exc)) from None

    def check_same(self, other: "PreprocessSpec", what: str) -> None:
        """Refuse to combine artifacts whose preprocessing differs."""
        if self != other:
            mine, theirs = self.to_dict(), other.to_dict()
            diffs = ["{}: {} vs {}".format(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]
            raise ArtifactMismatchError("{}: preprocessing differs ({})".format(what, "; ".join(diffs)))


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "OpenCV is needed for preprocessing: pip install opencv-python-headless "
            "(on Jetson use JetPack's python3-opencv)"
        ) from None
    return cv2


def resize_bgr(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one BGR uint8 image to size x size exactly as training and deployment do."""
    cv2 = _cv2()
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)


def normalize_rgb_uint8(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HWC RGB uint8 (already at size) -> CHW float32 normalised."""
    scaled = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) * inv_std).transpose(2, 0, 1))


def preprocess_bgr(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One BGR uint8 image (H, W, 3) -> (3, size, size) float32."""
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MeanlocError(
            "expected a BGR uint8 image of shape (H, W, 3), got {}".format(
                None if image is None else "{} {}".format(image.dtype, image.shape)
            )
        )
    resized = resize_bgr(image, spec.size)
    return normalize_rgb_uint8(resized[:, :, ::-1], spec)


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """A list of BGR uint8 images -> (N, 3, size, size) float32, contiguous."""
    out = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for index, image in enumerate(images):
        out[index] = preprocess_bgr(image, spec)
    return out

