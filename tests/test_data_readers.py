"""University-1652 / SUES-200 / synthetic-layout readers: pairs, labels, splits, bad input."""

import shutil
from pathlib import Path

import pytest
from data_support import make_sues_raw, make_sues_split, make_university

from meanloc.errors import MeanlocError
from meanloc.training.data.splits import load_eval_split, load_train_pairs


@pytest.fixture(scope="module")
def university(tmp_path_factory) -> Path:
    return make_university(tmp_path_factory.mktemp("u1652"))


def test_university_pairs_classes_and_skips(university):
    split = load_train_pairs(university, "university")
    assert split.class_ids == ["0001", "0002", "0003", "0004"]
    # every drone image of a class is paired with that class's satellite image
    assert len(split.pairs) == 3 + 4 + 3 + 3  # 0002 also lists its corrupt image (found lazily)
    for sat, drone, index in split.pairs:
        cid = split.class_ids[index]
        assert Path(sat) == university / "train" / "satellite" / cid / f"{cid}.jpg"
        assert Path(drone).parent.name == cid
    assert split.pair_classes == [p.class_index for p in split.pairs]
    drones = [p.drone_path for p in split.pairs]
    assert drones == sorted(drones)
    assert split.one_view_classes == {"satellite_only": ["0006"], "drone_only": ["0005"]}
    assert split.unreadable == [str(university / "train" / "satellite" / "0007" / "0007.jpg")]
    summary = split.summary()
    assert summary["skipped_unreadable_satellite_images"] == 1 and summary["classes"] == 4


def test_first_sorted_readable_satellite_is_chosen(tmp_path):
    root = make_university(tmp_path / "u")
    from data_support import write_corrupt, write_image

    write_corrupt(root / "train" / "satellite" / "0001" / "0000_a.jpg")  # sorts first, unreadable
    write_image(root / "train" / "satellite" / "0001" / "0001_b.png")  # sorts after 0001.jpg
    split = load_train_pairs(root, "university")
    first = split.pairs[0]
    assert Path(first.sat_path).name == "0001.jpg"
    assert str(root / "train" / "satellite" / "0001" / "0000_a.jpg") in split.unreadable


def test_university_eval_split_labels(university):
    d2s = load_eval_split(university, "university", "d2s", "test")
    assert d2s.class_ids == ["0000", "0001", "0002"]
    assert d2s.query_labels.tolist() == [0, 0, 1, 1, 1]  # the corrupt file is listed, found at read time
    assert d2s.gallery_labels.tolist() == [0, 1, 2]
    assert d2s.summary()["distractor_classes"] == 1
    s2d = load_eval_split(university, "university", "s2d", "test")
    assert [Path(p).parts[-3] for p in s2d.query_paths] == ["query_satellite"] * 2
    assert s2d.gallery_labels.tolist() == [0, 0, 1, 1, 2, 2]
    val = load_eval_split(university, "synthetic", "d2s", "val")
    assert all("/val/" in p for p in val.query_paths + val.gallery_paths)


def test_val_split_without_s2d_folders_is_one_line_error(university):
    with pytest.raises(MeanlocError, match=r"val/query_satellite folder not found"):
        load_eval_split(university, "university", "s2d", "val")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: shutil.rmtree(root), "dataset folder not found"),
        (lambda root: shutil.rmtree(root / "train" / "drone"), "train/drone folder not found"),
        (lambda root: [shutil.rmtree(p) for p in (root / "train" / "drone").iterdir()], "contains no images"),
    ],
)
def test_missing_or_empty_folders(tmp_path, mutate, message):
    root = make_university(tmp_path / "u")
    mutate(root)
    with pytest.raises(MeanlocError, match=message) as info:
        load_train_pairs(root, "university")
    assert "\n" not in str(info.value)


def test_unknown_dataset_direction_and_misplaced_altitude(university):
    with pytest.raises(MeanlocError, match="unknown dataset 'cvusa'"):
        load_train_pairs(university, "cvusa")
    with pytest.raises(MeanlocError, match="unknown direction"):
        load_eval_split(university, "university", "d2d")
    with pytest.raises(MeanlocError, match="SUES-200 only"):
        load_train_pairs(university, "university", altitude=150)


def test_sues_raw_split_is_sorted_first_60_percent(tmp_path):
    root = make_sues_raw(tmp_path / "sues", locations=5)
    split = load_train_pairs(root, "sues200", altitude=200)
    assert split.class_ids == ["0001", "0002", "0003"]  # int(5 * 0.6) = 3
    assert all("/drone-view/200/" in p.drone_path for p in split.pairs)
    assert len(split.pairs) == 3 * 2
    d2s = load_eval_split(root, "sues200", "d2s", altitude="200")
    assert sorted({Path(p).parent.name for p in d2s.query_paths}) == ["0004", "0005"]
    assert len(d2s.gallery_paths) == 5  # the gallery holds every location
    s2d = load_eval_split(root, "sues200", "s2d", altitude=200)
    assert len(s2d.query_paths) == 2 and len(s2d.gallery_paths) == 10


def test_sues_split_layout(tmp_path):
    root = make_sues_split(tmp_path / "sues", altitude=150)
    split = load_train_pairs(root, "sues200", altitude=150)
    assert split.class_ids == ["0001", "0002", "0003"] and len(split.pairs) == 6
    d2s = load_eval_split(root, "sues200", "d2s", "test", 150)
    assert len(d2s.query_paths) == 2 and len(d2s.gallery_paths) == 5
    with pytest.raises(MeanlocError, match=r"Training/250/satellite folder not found"):
        load_train_pairs(root, "sues200", altitude=250)


@pytest.mark.parametrize("altitude", [None, 100, "high"])
def test_sues_bad_altitude_lists_valid_ones(tmp_path, altitude):
    root = make_sues_raw(tmp_path / "sues", locations=3)
    with pytest.raises(MeanlocError, match="150, 200, 250, 300") as info:
        load_train_pairs(root, "sues200", altitude=altitude)
    assert "\n" not in str(info.value)


def test_sues_rejects_val_split_and_foreign_folder(tmp_path):
    root = make_sues_raw(tmp_path / "sues", locations=3)
    with pytest.raises(MeanlocError, match="only a test split"):
        load_eval_split(root, "sues200", "d2s", "val", 150)
    with pytest.raises(MeanlocError, match="is not a SUES-200 folder"):
        load_train_pairs(tmp_path, "sues200", altitude=150)
