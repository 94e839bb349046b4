"""Where per-frame results go: JSON Lines, CSV, a GeoJSON track (and MAVLink, in mavlink_sink).

A record is a flat JSON-able dict built by the loop (see `loop.RECORD_FIELDS`).
  * The JSON Lines flight log is written under its real name as the flight goes: one `os.write`
    per record (a kill -9 loses nothing the kernel has; at most a power loss tears the last
    line, which readers skip: `artifacts.read_jsonl`), fsynced at least once a second. The file is created
    or truncated only when the first record exists, so a run that fails before producing anything
    leaves an earlier log intact.
  * CSV and GeoJSON are summaries: written under a temporary name and renamed over the target at
    `close()`, and only if the run produced at least one record.
None of them keeps records in memory: the GeoJSON track spools its points to disk and assembles
the FeatureCollection at close. Refusing to replace existing outputs is the command's job
(`artifacts.claim_output`). Python 3.8 compatible.
"""

import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

from ..artifacts import ensure_writable_dir, make_temp_file, publish_temp_file

# The flight log is fsynced at the first record after this many seconds.
FSYNC_INTERVAL_S = 1.0


class Sink:
    """Receives one record per processed frame."""

    def write(self, record: Dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish; must be safe to call twice."""


class _StagedTextFile:
    """A text file written under a temporary name next to `target`; `close()` renames it over the
    target if anything was written to it (`used`), and otherwise removes it, leaving the target as it was."""

    def __init__(self, target: str, suffix: str = ".tmp") -> None:
        self.target = target
        ensure_writable_dir(Path(target).parent if str(Path(target).parent) else Path("."))
        fd, self.path = make_temp_file(target, suffix)
        self.handle: IO[str] = os.fdopen(fd, "w+", encoding="utf-8", newline="")
        self.used = False

    def close(self, publish: bool = True) -> None:
        if self.handle.closed:
            return
        self.handle.close()
        if publish and self.used:
            publish_temp_file(self.path, self.target)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _json_line(record: Dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


class JsonlSink(Sink):
    """One JSON object per line, to stdout (`-`) or a file (see the module docstring)."""

    def __init__(self, target: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._target = target
        self._fd: Optional[int] = None
        self._clock = clock
        self._last_sync = 0.0
        if target != "-":
            ensure_writable_dir(Path(target).parent if str(Path(target).parent) else Path("."))

    def write(self, record: Dict[str, Any]) -> None:
        line = _json_line(record)
        if self._target != "-":
            self._write_file(line.encode("utf-8"))
            return
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): point stdout at /dev/null so that the interpreter's
            # final flush stays quiet, and let the loop stop (Python docs, "Note on SIGPIPE").
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self._target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            self._last_sync = self._clock()
        view = memoryview(data)
        while view:  # one write() for a regular file; the loop only guards against a short write
            written = os.write(self._fd, view)
            view = view[written:]
        now = self._clock()
        if now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._target == "-":
            with contextlib.suppress(ValueError, OSError):
                sys.stdout.flush()
            return
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class CsvSink(Sink):
    """Fixed columns; nested `timings_ms` become `ms_<stage>` columns; missing values are empty."""

    def __init__(self, target: str, columns: Sequence[str], timing_stages: Sequence[str]) -> None:
        self._file = _StagedTextFile(target)
        self._columns = list(columns)
        self._stages = list(timing_stages)
        self._writer = csv.writer(self._file.handle)
        self._writer.writerow(self._columns + ["ms_" + stage for stage in self._stages])

    def write(self, record: Dict[str, Any]) -> None:
        timings = record.get("timings_ms") or {}
        row: List[Any] = ["" if record.get(c) is None else record[c] for c in self._columns]
        row += ["" if timings.get(s) is None else timings[s] for s in self._stages]
        self._writer.writerow(row)
        self._file.used = True

    def close(self) -> None:
        self._file.close()


class GeoJsonTrackSink(Sink):
    """A FeatureCollection: the estimated track as a LineString plus one Point per estimate."""

    POINT_PROPERTIES = ("frame", "t", "status", "fix_source", "confidence", "search", "error_m")

    def __init__(self, target: str) -> None:
        self._target = target
        self._spool = _StagedTextFile(target, ".spool")
        self._closed = False

    def write(self, record: Dict[str, Any]) -> None:
        self._spool.used = True  # a run that processed frames without a fix still gets its (empty) track
        if record.get("lat") is None or record.get("lon") is None:
            return
        properties = {key: record.get(key) for key in self.POINT_PROPERTIES}
        self._spool.handle.write(json.dumps([record["lon"], record["lat"], properties], allow_nan=False) + "\n")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        spool = self._spool
        try:
            if not spool.used:
                return
            out = _StagedTextFile(self._target)
            try:
                out.handle.write('{"type":"FeatureCollection","features":[')
                out.handle.write('{"type":"Feature","properties":{"kind":"track"},"geometry":{"type":"LineString",'
                                 '"coordinates":[')
                spool.handle.seek(0)
                for i, line in enumerate(spool.handle):
                    lon, lat, _ = json.loads(line)
                    out.handle.write(("," if i else "") + json.dumps([lon, lat]))
                out.handle.write("]}}")
                spool.handle.seek(0)
                for line in spool.handle:
                    lon, lat, properties = json.loads(line)
                    feature = {"type": "Feature", "properties": properties,
                               "geometry": {"type": "Point", "coordinates": [lon, lat]}}
                    out.handle.write("," + json.dumps(feature))
                out.handle.write("]}\n")
                out.used = True
            finally:
                out.close(publish=out.used)
        finally:
            spool.close(publish=False)
