"""Training queries and flight queries cover the same ground at the same poses, and the uncovered
part is filled the same way: both go through `prepare_query` with the model's recorded fill.

At 100 m altitude and 35 deg pitch a 4:3, 70 deg frame does not reach the near side of a 200 m
ground square (coverage ~0.8), so the comparison is not trivially 1 = 1. The user's report was
training queries 37 % black next to full flight frames: a narrowed 40 deg lens in the dataset and
the flight's fixed 70 deg. Now both default to 70 deg, 4:3, and the flight takes `--flight-hfov`.
"""

import numpy as np
import pytest

from meanloc.runtime.geo.rectify import ground_coverage
from meanloc.runtime.localize.loop import CameraDefaults
from meanloc.runtime.localize.synthetic import SyntheticFlightOptions, SyntheticFlightSource
from meanloc.runtime.query_view import FILLS, QueryView, prepare_query
from meanloc.training.data.query_images import read_query_image, read_view_attitude
from meanloc.training.data.synth.writer import preset_config, synthetic_sources, write_dataset
from meanloc.training.data.university import university_train_views

ALTITUDE, PITCH, SIDE = 100.0, 35.0, 200.0


def _covered(image: np.ndarray, view: QueryView, attitude, size: int = 64) -> tuple[float, float]:
    """(share of the query patch showing the white frame, share filled with the view's fill colour)."""
    white = np.full(image.shape, 255, dtype=np.uint8)
    patch = prepare_query(white, view, attitude, size).astype(np.int64)
    fill = np.round(FILLS[view.fill]).astype(np.int64)
    shown = (patch == 255).all(axis=2)
    filled = (patch == fill).all(axis=2)
    return float(shown.mean()), float(filled.mean())


@pytest.fixture(scope="module")
def world_and_views(tmp_path_factory):
    config = preset_config("tiny", seed=4, altitude_m=(ALTITUDE, ALTITUDE), pitch_deg=(PITCH, PITCH))
    out = tmp_path_factory.mktemp("coverage") / "data"
    write_dataset(out, config, *synthetic_sources(config))
    _, drone = university_train_views(out)
    return out, [path for paths in drone.classes.values() for path in paths]


def test_training_and_flight_queries_cover_the_same_share_of_the_ground_square(world_and_views):
    out, view_paths = world_and_views
    view = QueryView(SIDE, "mean")
    training = []
    for path in view_paths:
        image = read_query_image(path, QueryView(), 64)  # the frame as written (no rectification)
        coverage, filled = _covered(image, view, read_view_attitude(path))
        training.append(coverage)
        assert coverage + filled > 0.95  # the uncovered part is the recorded fill (edge pixels blend)
    options = SyntheticFlightOptions(frames=12, altitude_m=ALTITUDE, pitch_deg=PITCH, pattern="straight", seed=3,
                                     appearance=False, query_side_m=SIDE)
    flight = []
    for frame in SyntheticFlightSource(str(out / "world" / "drone.tif"), options):
        attitude = CameraDefaults().attitude(frame)
        coverage, filled = _covered(frame.image, view, attitude)
        flight.append(coverage)
        assert coverage + filled > 0.95
        assert coverage == pytest.approx(ground_coverage(attitude, frame.image.shape[1::-1], SIDE), abs=0.03)
    training, flight = np.array(training), np.array(flight)
    assert 0.6 < flight.mean() < 0.95  # the near side really is cut at this pose
    # Same pose distribution (training adds +-3 deg roll and +-10 m look-at jitter): same coverage.
    assert training.mean() == pytest.approx(flight.mean(), abs=0.02)
    assert np.percentile(training, 10) == pytest.approx(np.percentile(flight, 10), abs=0.04)


def test_a_narrower_lens_shows_up_as_lower_coverage_in_the_same_statistic():
    from meanloc.runtime.geo.rectify import CameraAttitude

    wide = ground_coverage(CameraAttitude(ALTITUDE, PITCH, 0.0, 70.0), (640, 480), SIDE)
    narrow = ground_coverage(CameraAttitude(ALTITUDE, PITCH, 0.0, 40.0), (640, 480), SIDE)
    assert narrow < 0.6 * wide  # what the user's 40 deg dataset did next to a 70 deg flight
