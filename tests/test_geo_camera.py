"""Pinhole camera, pose -> homography, footprint and rendering geometry (datasets-and-metrics.md §5.2-§5.4)."""

import math

import numpy as np
import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.geo.camera import (
    CameraIntrinsics,
    Pose,
    camera_centre,
    footprint,
    footprint_inside,
    image_rays,
    max_pitch_for,
    project_ground,
)
from meanloc.runtime.geo.orthophoto import Orthophoto
from meanloc.runtime.sim.render import render_view

INTR = CameraIntrinsics(64, 48, 70.0)
X0, Y0, GSD = 400_000.0, 5_000_000.0, 1.0


def _flat_ortho(size=1200, value=90):
    image = np.full((size, size, 3), value, np.uint8)
    transform = np.array([[GSD, 0, X0], [0, -GSD, Y0], [0, 0, 1.0]])
    return Orthophoto(image, transform, "EPSG:32632")


def test_intrinsics_follow_the_spec():
    assert INTR.focal_px == pytest.approx(32 / math.tan(math.radians(35)))
    assert INTR.vfov_deg == pytest.approx(math.degrees(2 * math.atan(24 / INTR.focal_px)))
    assert np.allclose(INTR.K[:, 2], [32, 24, 1])


@pytest.mark.parametrize("pitch,yaw,roll", [(0, 0, 0), (30, 45, 0), (55, 200, 2.5), (40, 300, -3)])
def test_look_at_point_projects_to_the_image_centre(pitch, yaw, roll):
    pose = Pose((X0 + 600, Y0 - 600), 200.0, pitch, yaw, roll)
    uv = project_ground(INTR, pose, np.array([pose.target_xy]))[0]
    assert uv == pytest.approx([INTR.width / 2, INTR.height / 2], abs=1e-6)
    centre = camera_centre(pose)
    back = 200.0 * math.tan(math.radians(pitch))
    assert math.hypot(centre[0] - pose.target_xy[0], centre[1] - pose.target_xy[1]) == pytest.approx(back)


def test_near_and_far_edges_lie_at_h_tan_theta_minus_plus_half_vfov():
    h, theta = 150.0, 40.0
    pose = Pose((0.0, 0.0), h, theta, 0.0)  # yaw 0: looking north
    nadir = camera_centre(pose)
    rays = image_rays(INTR, pose, np.array([[INTR.width / 2, 0.0], [INTR.width / 2, INTR.height]]))
    s = -h / rays[:, 2]
    ground_y = nadir[1] + s * rays[:, 1] - nadir[1]
    half = INTR.vfov_deg / 2
    assert ground_y[0] == pytest.approx(h * math.tan(math.radians(theta + half)), rel=1e-9)
    assert ground_y[1] == pytest.approx(h * math.tan(math.radians(theta - half)), rel=1e-9)


def test_nadir_view_has_the_image_top_along_the_heading():
    for yaw in (0.0, 90.0, 225.0):
        pose = Pose((0.0, 0.0), 100.0, 0.0, yaw)
        ahead = np.array([[20 * math.sin(math.radians(yaw)), 20 * math.cos(math.radians(yaw))]])
        u, v = project_ground(INTR, pose, ahead)[0]
        assert u == pytest.approx(INTR.width / 2, abs=1e-6) and v < INTR.height / 2


def test_footprint_polygon_maps_back_to_the_image_corners():
    pose = Pose((10.0, 20.0), 250.0, 45.0, 130.0, 1.5)
    fp = footprint(INTR, pose)
    assert fp.ok
    uv = project_ground(INTR, pose, fp.polygon_xy)
    expected = [[0, 0], [INTR.width, 0], [INTR.width, INTR.height], [0, INTR.height]]
    assert uv == pytest.approx(np.array(expected, float), abs=1e-6)


def test_pitch_limit_and_horizon_are_enforced():
    cap = max_pitch_for(INTR, 80.0)
    assert footprint(INTR, Pose((0, 0), 100, cap - 0.1, 0)).ok
    assert not footprint(INTR, Pose((0, 0), 100, cap + 0.5, 0), 80.0).ok
    horizon = footprint(INTR, Pose((0, 0), 100, 80.0, 0), 89.0)
    assert horizon.polygon_xy is None and "horizon" in horizon.reason
    with pytest.raises(MeanlocError, match="horizon"):
        render_view(_flat_ortho(), INTR, Pose((X0 + 600, Y0 - 600), 100, 80.0, 0))


# Pitch 0 (nadir) takes the affine warp path, which once ignored the homography's scale.
@pytest.mark.parametrize("pitch", [0.0, 35.0])
def test_rendered_marker_lands_where_the_homography_says(pitch):
    ortho = _flat_ortho()
    marker = (X0 + 640.0, Y0 - 560.0)
    col, row = (int(v) for v in ortho.world_to_pixel(*marker))
    ortho.image[row - 3:row + 4, col - 3:col + 4] = 255  # a 7 m bright square
    pose = Pose((X0 + 600.0, Y0 - 600.0), 120.0, pitch, 20.0, 1.0)
    view = render_view(ortho, INTR, pose)
    assert view.valid_fraction == 1.0 and view.image_bgr.shape == (48, 64, 3)
    square_centre = np.array([ortho.pixel_to_world(col + 0.5, row + 0.5)])
    expected = project_ground(INTR, pose, square_centre)[0]
    grey = view.image_bgr[:, :, 0].astype(float) - 90
    ys, xs = np.nonzero(grey > 20)
    weights = grey[ys, xs]
    centroid = (np.average(xs + 0.5, weights=weights), np.average(ys + 0.5, weights=weights))
    assert centroid == pytest.approx(tuple(expected), abs=1.0)


def test_views_off_the_raster_are_invalid_and_rejected_by_the_footprint_check():
    ortho = _flat_ortho(size=400)
    pose = Pose((X0 + 200.0, Y0 - 200.0), 150.0, 45.0, 0.0)  # far edge runs north off the raster
    fp = footprint(INTR, pose)
    assert fp.ok and not footprint_inside(ortho, INTR, pose, fp.polygon_xy)
    view = render_view(ortho, INTR, pose)
    assert 0.0 < view.valid_fraction < 1.0
    assert not view.image_bgr[~view.valid_mask].any()
    assert view.valid_mask[-1].all() and not view.valid_mask[0].all()
