"""One writer per output folder: the lock that `train`, `bank build` and `data synth` hold while they
write, and the rules for starting in a folder that already holds something.

The lock is a file (`.meanloc.lock` in the folder, or next to a folder that does not exist yet)
holding the writer's pid, host, command and start time, with an exclusive `flock` on it. The
kernel drops that lock when its process dies, even by kill -9, so a lock file left behind by a
killed run is recognised as stale and taken over; a live holder makes the next writer exit with
`FolderInUseError` (exit code 75) naming its pid. On taking a folder, the temporary files of
killed writers (`artifacts.remove_orphan_temp_files`) are removed.

POSIX only (fcntl), like the Jetson and Linux hosts meanloc runs on. Python 3.8 compatible.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Union

from meanloc.errors import FolderInUseError, MeanlocError

from .artifacts import ensure_writable_dir, remove_orphan_temp_files

PathLike = Union[str, "os.PathLike[str]"]
LOCK_NAME = ".meanloc.lock"


def lock_path_for(folder: PathLike, inside: bool = True) -> Path:
    """`<folder>/.meanloc.lock`, or `<parent>/.<name>.meanloc.lock` for a folder that appears only at
    the end of a run (data synth writes `<out>.partial` and renames it)."""
    folder = Path(folder)
    return folder / LOCK_NAME if inside else folder.parent / ".{}{}".format(folder.name, LOCK_NAME)


def _read_holder(path: Path) -> Dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


@contextlib.contextmanager
def folder_lock(lock_path: PathLike, what: PathLike, command: str) -> Iterator[None]:
    """Hold the lock at `lock_path` for the block; `what` names the folder in messages."""
    import fcntl

    lock_path = Path(lock_path)
    created = not lock_path.parent.exists()
    ensure_writable_dir(lock_path.parent)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    while True:
        fd = os.open(str(lock_path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_holder(lock_path)
            raise FolderInUseError(
                "{} is in use by pid {} on {} ({}, started {}); wait for it to finish or choose another "
                "folder".format(what, holder.get("pid", "?"), holder.get("host", "?"),
                                holder.get("command", "meanloc"), holder.get("started_utc", "?"))
            ) from None
        # The previous holder may have unlinked the file between our open and our flock: then we
        # hold a lock on a deleted file, and must start again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(str(lock_path)))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = _read_holder(lock_path)  # a file whose flock was free: its writer is gone
    if stale:
        print("meanloc: {}: took over the lock of pid {} ({}), which is no longer running".format(
            what, stale.get("pid", "?"), stale.get("command", "?")), file=sys.stderr)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(str(lock_path))  # while still holding it, so no one can take a half-released lock
        os.close(fd)
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(str(lock_path.parent))


def folder_entries(folder: PathLike, ignore: Sequence[str] = (LOCK_NAME,)) -> List[Path]:
    """What a folder holds, leaving out meanloc's own lock file; empty if it does not exist."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.name not in ignore)
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def claim_run_folder(folder: PathLike, command: str, resuming: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Lock `folder` for one writer (`command`, e.g. "meanloc train") and refuse to mix runs in it.

    A folder that holds anything besides the lock and killed writers' temporary files (removed
    here) is refused unless the run is `resuming` or `overwrite` is given. Nothing is deleted here:
    the writer replaces the earlier run's outputs once it has produced its own.
    """
    folder = Path(folder)
    with folder_lock(lock_path_for(folder), folder, command):
        remove_orphan_temp_files(folder)
        present = folder_entries(folder)
        if present and not (resuming or overwrite):
            raise MeanlocError(
                "{} already holds {} (e.g. {}) from an earlier run; continue it with --resume CHECKPOINT, start "
                "over with --overwrite, or choose another folder".format(
                    folder, "{} entries".format(len(present)) if len(present) > 1 else "an entry", present[0].name)
            )
        yield folder
