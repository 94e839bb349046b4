"""Atomic artifact writes: all or nothing, normal permissions, writable-folder probe."""

import os
import stat

import pytest

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import atomic_path, atomic_write_text, ensure_writable_dir


def test_failed_write_leaves_target_untouched_and_no_temp_files(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_written_file_has_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_unwritable_output_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(MeanlocError, match="cannot create output folder"):
        ensure_writable_dir("/proc/meanloc-test/out")
    # sysfs refuses new files even for root, so this holds whoever runs the tests.
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs here")
    with pytest.raises(MeanlocError, match="not writable"):
        ensure_writable_dir("/sys/kernel")
