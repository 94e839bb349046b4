"""Frames are turned north-up with their heading, like the bank tiles."""

import cv2
import numpy as np
import pytest
from localize_support import crop, world_image

from meanloc.runtime.localize.orient import rotate_to_north_up


def _correlation(a, b):
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


@pytest.mark.parametrize("heading", [30.0, 90.0, 135.0, 250.0])
def test_a_frame_along_the_heading_comes_back_north_up(heading):
    north_up = crop(world_image(), 0.0, 0.0, 128)
    # What a nadir camera flying `heading` sees: the heading direction at the top of the image.
    camera = cv2.warpAffine(north_up, cv2.getRotationMatrix2D((64.0, 64.0), heading, 1.0), (128, 128))
    restored = rotate_to_north_up(camera, heading)
    side = restored.shape[0]
    assert restored.shape == (side, side, 3) and side == int(128 / (abs(np.cos(np.radians(heading)))
                                                                     + abs(np.sin(np.radians(heading)))))
    start = 64 - side // 2
    reference = north_up[start : start + side, start : start + side]
    assert _correlation(restored, reference) > 0.99
    assert _correlation(camera[start : start + side, start : start + side], reference) < 0.9
