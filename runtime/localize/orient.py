"""Turn a drone frame north-up using the heading, before embedding.

Bank tiles are cut north-up and MEAN is only partly rotation-robust (§4.3 of
datasets-and-metrics.md), so a frame whose top points along the heading is rotated back by the
heading and cropped to the largest centred square that holds only image pixels (no black
corners). Exact for a nadir camera; for an oblique one it still aligns the dominant direction.
Python 3.8 compatible.
"""

import math

import numpy as np


def rotate_to_north_up(image: np.ndarray, heading_deg: float) -> np.ndarray:
    """`image` shows `heading_deg` (clockwise from north) at its top; return it north-up, square."""
    import cv2

    height, width = image.shape[:2]
    theta = math.radians(heading_deg)
    side = int(min(width, height) / (abs(math.cos(theta)) + abs(math.sin(theta))))
    # cv2 angles are counter-clockwise: turning clockwise by the heading brings north to the top.
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), -heading_deg, 1.0)
    matrix[:, 2] += (side - width) / 2.0, (side - height) / 2.0  # centre the output square
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
