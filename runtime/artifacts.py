"""Writing artifacts safely and describing them with manifests.

Every artifact meanloc writes (checkpoint, ONNX, calibration cache, engine, bank) is written
to a temporary file in the destination folder, fsynced, then renamed over the target, so a
crash or Ctrl-C never leaves a half-written file under the final name. Each artifact also
carries a manifest: a JSON-able dict with at least `kind`, `format_version` and
`meanloc_version`, which consumers check before use.

Python 3.8 compatible (onboard code).
"""

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from meanloc import __version__
from meanloc.errors import ArtifactMismatchError, MeanlocError

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST_FORMAT_VERSION = 1


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable_dir(path: PathLike) -> Path:
    """Create `path` (a folder) if needed and fail with one line if it cannot be written."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeanlocError("cannot create output folder {}: {}".format(folder, exc.strerror or exc)) from None
    # Probe with a real file: os.access() says "writable" to root even on read-only mounts.
    try:
        with tempfile.TemporaryFile(dir=str(folder)):
            pass
    except OSError as exc:
        raise MeanlocError("output folder {} is not writable ({})".format(folder, exc.strerror or exc)) from None
    return folder


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success fsync it and rename it over `target`.

    Use for writers that want a path (torch.save, onnx.save, np.save). On any exception the
    temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    ensure_writable_dir(target.parent if str(target.parent) else Path("."))
    fd, tmp_name = make_temp_file(target, ".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish_temp_file(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def publish_temp_file(tmp: PathLike, target: PathLike) -> None:
    """fsync a finished temporary file (`make_temp_file`) and rename it over `target`, durably."""
    # mkstemp creates 0600 files; give the artifact the permissions a plain open() would.
    os.chmod(str(tmp), 0o666 & ~_current_umask())
    with open(str(tmp), "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(str(tmp), str(target))
    _fsync_dir(Path(target).parent)


def make_temp_file(target: PathLike, suffix: str) -> Tuple[int, str]:
    """(fd, path) of a new hidden file next to `target`, named `.<name>.<pid>.<random><suffix>`: the
    writer's pid in the name lets `remove_orphan_temp_files` tell a killed writer's leftovers from
    a live writer's work in progress."""
    target = Path(target)
    return tempfile.mkstemp(prefix=".{}.{}.".format(target.name, os.getpid()), suffix=suffix,
                            dir=str(target.parent if str(target.parent) else "."))


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(tmp|spool)$")


def remove_orphan_temp_files(folder: PathLike, target_name: Optional[str] = None) -> List[Path]:
    """Delete the temporary files (`make_temp_file`) in `folder` whose writer is no longer running on
    this machine, e.g. a `.last.pt.<pid>.<random>.tmp` left by a kill during a checkpoint write;
    only those of `target_name` if given. Returns what was removed."""
    removed = []  # type: List[Path]
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _TEMP_NAME.match(path.name)
        if not match or (target_name is not None and match.group("target") != target_name):
            continue
        if process_alive(int(match.group("pid"))) or not path.is_file():
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a pid we may not signal still runs)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def claim_output(path: PathLike, overwrite: bool, option: str = "--overwrite") -> Path:
    """Refuse to replace an existing output file unless `overwrite`; create its folder and remove the
    temporary files a killed run left of it. Commands call this before any work, so a refusal costs
    nothing and an existing file is never touched."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise MeanlocError(
            "{} already exists; pass {} to replace it (it is replaced only once the new run has produced "
            "its output), or choose another name".format(path, option)
        )
    if path.is_dir():
        raise MeanlocError("{} is a folder; the output must be a file".format(path))
    folder = ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    remove_orphan_temp_files(folder, path.name)  # what a killed earlier run left of this output
    return path


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and restore it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets you open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(str(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: PathLike, payload: Any) -> None:
    atomic_write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError("not JSON serialisable: {!r}".format(type(value)))


def write_json_with_markdown(json_path: PathLike, payload: Any, markdown: str) -> Tuple[Path, Path]:
    """A JSON report plus its Markdown rendering next to it (`<name>.md`), both atomic."""
    json_path = Path(json_path)
    table_path = json_path.with_suffix(".md")
    atomic_write_json(json_path, payload)
    atomic_write_text(table_path, markdown)
    return json_path, table_path


def read_json(path: PathLike, what: str = "file") -> Dict[str, Any]:
    """Read a JSON object, turning every way it can be wrong into a one-line error."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MeanlocError("{} not found: {}".format(what, path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MeanlocError("{} {} is not valid JSON ({})".format(what, path, exc)) from None
    if not isinstance(payload, dict):
        raise MeanlocError("{} {} must hold a JSON object".format(what, path))
    return payload


def open_jsonl(path: PathLike, append: bool) -> int:
    """A file descriptor for a JSON Lines log written one `os.write` per record. Appending first
    cuts a torn last line (a crash in the middle of a write), so new records start on their own line."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
    end = os.fstat(fd).st_size
    if not append or end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return fd
    while end > 0:  # back to the last complete line
        start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    return fd


def read_jsonl(path: PathLike) -> Iterator[Dict[str, Any]]:
    """The records of a JSON Lines file; a torn last line (a crash mid-write) is skipped, a bad line
    anywhere else is an error naming the file and line."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw.decode("utf-8"))
        except ValueError:
            if number == last:  # no newline after it: a write that a crash cut short
                return
            raise MeanlocError("{} line {} is not valid JSON".format(path, number + 1)) from None


def new_manifest(kind: str, **fields: Any) -> Dict[str, Any]:
    manifest = {"kind": kind, "format_version": MANIFEST_FORMAT_VERSION, "meanloc_version": __version__}
    manifest.update(fields)
    return manifest


def check_manifest_kind(manifest: Mapping[str, Any], kind: str, source: str) -> None:
    if manifest.get("kind") != kind:
        raise ArtifactMismatchError(
            "{} is a '{}' artifact, expected '{}'".format(source, manifest.get("kind", "unknown"), kind)
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_FORMAT_VERSION:
        raise ArtifactMismatchError(
            "{} has manifest format {} but this meanloc reads up to {}; upgrade meanloc".format(
                source, version, MANIFEST_FORMAT_VERSION
            )
        )
