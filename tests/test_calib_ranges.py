"""amax from ONNX Runtime's (min, max) ranges: the symmetric range TensorRT scales need."""

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationMethod, TensorsData

from meanloc.calibration.ranges import TensorRanges, check_method
from meanloc.errors import MeanlocError
from meanloc.runtime.calibration_cache import build_cache


def _ranges(pairs):
    data = TensorsData(
        CalibrationMethod.MinMax, {name: (np.float32(lo), np.float32(hi)) for name, (lo, hi) in pairs.items()}
    )
    return TensorRanges("minmax", data, num_images=4)


def test_amax_is_the_larger_magnitude_of_min_and_max():
    # ORT's own calibration table would store the range max (2.0 and -0.5 here): deployment.md §5.2.
    ranges = _ranges({"mostly_negative": (-5.0, 2.0), "positive": (0.25, 3.0), "negative_only": (-4.0, -0.5)})
    assert ranges.amax() == {"mostly_negative": 5.0, "positive": 3.0, "negative_only": 4.0}
    cache = build_cache(ranges.amax(), "10.3")
    assert cache.amax()["mostly_negative"] == pytest.approx(5.0)


def test_unknown_method_is_refused():
    with pytest.raises(MeanlocError, match="unknown calibration method 'kl'"):
        check_method("kl")
