"""One writer per output folder (`runtime/run_folder.py`) and the cleanup of killed writers'
temporary files (`runtime/artifacts.py`)."""

import json
import os
import subprocess
import sys

import pytest

from meanloc.cli import main
from meanloc.errors import EXIT_IN_USE, FolderInUseError, MeanlocError
from meanloc.runtime.artifacts import atomic_path, make_temp_file, remove_orphan_temp_files
from meanloc.runtime.run_folder import LOCK_NAME, claim_run_folder, folder_lock, lock_path_for


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has this pid now (until the system reuses it)


def test_a_second_writer_is_told_who_holds_the_folder(tmp_path):
    with folder_lock(lock_path_for(tmp_path), tmp_path, "meanloc train"):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with (pytest.raises(FolderInUseError, match=f"in use by pid {os.getpid()} on .*meanloc train") as info,
              folder_lock(lock_path_for(tmp_path), tmp_path, "meanloc bank build")):
            pass
        assert info.value.exit_code == EXIT_IN_USE
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed
    with folder_lock(lock_path_for(tmp_path / "new"), tmp_path / "new", "meanloc train"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # a folder the lock created and nothing used is removed again


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": "h", "command": "meanloc train"}))
    with folder_lock(lock_path_for(tmp_path), tmp_path, "meanloc train"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err


def test_orphan_temporary_files_of_dead_writers_only_are_removed(tmp_path):
    dead = tmp_path / f".last.pt.{_dead_pid()}.abc123.tmp"
    dead.write_bytes(b"half a checkpoint")
    fd, live = make_temp_file(tmp_path / "last.pt", ".tmp")  # ours: a writer still at work
    os.close(fd)
    user_file = tmp_path / ".notes.1.x.txt"
    user_file.write_text("not ours")
    assert remove_orphan_temp_files(tmp_path) == [dead]
    assert os.path.exists(live) and user_file.exists()
    with atomic_path(tmp_path / "best.pt") as tmp:
        assert str(os.getpid()) in tmp.name  # the writer's pid is in every temporary name


def test_a_used_run_folder_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(MeanlocError, match="already holds an entry"), claim_run_folder(tmp_path, "meanloc train"):
        pass
    for options in ({"resuming": True}, {"overwrite": True}):
        with claim_run_folder(tmp_path, "meanloc train", **options):
            pass
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"  # claiming deletes nothing


def test_data_synth_into_a_folder_being_written_exits_in_use(tmp_path, capsys):
    out = tmp_path / "dataset"
    with folder_lock(lock_path_for(out, inside=False), out, "meanloc data synth"):
        code = main(["data", "synth", "--preset", "tiny", "--out", str(out)])
    assert code == EXIT_IN_USE and f"in use by pid {os.getpid()}" in capsys.readouterr().err
    assert not out.exists()
