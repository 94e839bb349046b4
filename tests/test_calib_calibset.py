"""The calibration set: stratified, deterministic draws, runtime preprocessing, clear errors."""

import itertools
from collections import Counter

import numpy as np
import pytest
from calib_support import write_folder_tree, write_university_tree

from meanloc.calibration.calibset import from_dataset, from_folder
from meanloc.errors import MeanlocError
from meanloc.runtime.images import read_image
from meanloc.runtime.preprocess import PreprocessSpec, preprocess_batch

SPEC = PreprocessSpec(size=32)


def test_folder_draw_covers_every_subfolder_evenly_and_is_seeded(tmp_path):
    write_folder_tree(tmp_path, {"a": 10, "b": 3, "c/deep": 5}, size=40)
    drawn = from_folder(tmp_path, SPEC, num_images=9, batch_size=3, seed=1)
    per_folder = Counter(path.parent.relative_to(tmp_path).as_posix() for path in drawn.paths)
    assert per_folder == {"a": 3, "b": 3, "c/deep": 3}
    assert from_folder(tmp_path, SPEC, num_images=9, batch_size=3, seed=1).paths == drawn.paths
    assert from_folder(tmp_path, SPEC, num_images=9, batch_size=3, seed=2).paths != drawn.paths


def test_only_whole_batches_are_used(tmp_path):
    write_folder_tree(tmp_path, {"a": 7}, size=40)
    drawn = from_folder(tmp_path, SPEC, num_images=256, batch_size=3)
    assert drawn.num_images == 6 and drawn.num_batches == 2
    assert [batch.shape for batch in drawn.batches()] == [(3, 3, 32, 32)] * 2


def test_batches_are_the_runtime_preprocessing_of_the_drawn_files(tmp_path):
    write_folder_tree(tmp_path, {"a": 4}, size=48)
    drawn = from_folder(tmp_path, SPEC, num_images=4, batch_size=2)
    expected = preprocess_batch([read_image(str(p)) for p in drawn.paths], SPEC)
    np.testing.assert_array_equal(np.concatenate(list(drawn.batches())), expected)


def test_dataset_draw_alternates_drone_and_satellite_over_all_classes(tmp_path):
    write_university_tree(tmp_path, classes=4, drones=3, size=40)
    drawn = from_dataset(tmp_path, SPEC, split="train", num_images=8, batch_size=4, seed=0)
    views = [path.parents[1].name for path in drawn.paths]
    assert Counter(views) == {"drone": 4, "satellite": 4}
    assert views[0] == "drone" and all(a != b for a, b in itertools.pairwise(views))
    assert len({path.parent.name for path in drawn.paths if path.parents[1].name == "drone"}) == 4
    val = from_dataset(tmp_path, SPEC, split="val", num_images=8, batch_size=4)
    assert {path.parents[1].name for path in val.paths} == {"query_drone", "gallery_satellite"}


def test_empty_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(MeanlocError, match="no images found") as info:
        from_folder(tmp_path / "empty", SPEC)
    assert "\n" not in str(info.value)
    with pytest.raises(MeanlocError, match="not found"):
        from_folder(tmp_path / "missing", SPEC)


def test_fewer_images_than_one_batch_is_an_error(tmp_path):
    write_folder_tree(tmp_path, {"a": 3}, size=40)
    with pytest.raises(MeanlocError, match=r"only 3 images.*fewer than one calibration batch of 16"):
        from_folder(tmp_path, SPEC, batch_size=16)
    with pytest.raises(MeanlocError, match="fewer than one calibration batch"):
        from_folder(tmp_path, SPEC, num_images=2, batch_size=3)


def test_unknown_split_is_refused(tmp_path):
    write_university_tree(tmp_path, classes=2, drones=1, size=40)
    with pytest.raises(MeanlocError, match="unknown split"):
        from_dataset(tmp_path, SPEC, split="holdout")
