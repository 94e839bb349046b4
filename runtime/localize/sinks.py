"""Where per-frame results go: JSON Lines, CSV, a GeoJSON track (and MAVLink, in mavlink_sink).

A record is a flat JSON-able dict built by the loop (see `loop.RECORD_FIELDS`). File sinks
write into a temporary file next to the target and rename it at `close()`, so the final name
only ever holds a complete file, also after Ctrl-C (the loop closes every sink in `finally`).
None of them keeps records in memory: the GeoJSON track spools its points to disk and
assembles the FeatureCollection at close. Python 3.8 compatible.
"""

import contextlib
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

from ..artifacts import atomic_path, ensure_writable_dir


class Sink:
    """Receives one record per processed frame."""

    def write(self, record: Dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish; must be safe to call twice."""


class _CommittedTextFile:
    """A text file written under a temporary name and renamed over `target` by `commit()`."""

    def __init__(self, target: str) -> None:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(target))
        self.handle: IO[str] = open(str(tmp), "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by commit()

    def commit(self) -> None:
        if self.handle.closed:
            return
        self.handle.close()
        self._stack.close()


def _json_line(record: Dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


class JsonlSink(Sink):
    """One JSON object per line, to stdout (`-`) or a file; stdout is flushed every frame."""

    def __init__(self, target: str) -> None:
        self._file: Optional[_CommittedTextFile] = None
        if target == "-":
            self._handle: IO[str] = sys.stdout
        else:
            self._file = _CommittedTextFile(target)
            self._handle = self._file.handle

    def write(self, record: Dict[str, Any]) -> None:
        if self._file is not None:
            self._handle.write(_json_line(record))
            return
        try:
            self._handle.write(_json_line(record))
            self._handle.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): point stdout at /dev/null so that the interpreter's
            # final flush stays quiet, and let the loop stop (Python docs, "Note on SIGPIPE").
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._handle.fileno())
            os.close(devnull)
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.commit()
        else:
            with contextlib.suppress(ValueError, OSError):
                self._handle.flush()


class CsvSink(Sink):
    """Fixed columns; nested `timings_ms` become `ms_<stage>` columns; missing values are empty."""

    def __init__(self, target: str, columns: Sequence[str], timing_stages: Sequence[str]) -> None:
        self._file = _CommittedTextFile(target)
        self._columns = list(columns)
        self._stages = list(timing_stages)
        self._writer = csv.writer(self._file.handle)
        self._writer.writerow(self._columns + ["ms_" + stage for stage in self._stages])

    def write(self, record: Dict[str, Any]) -> None:
        timings = record.get("timings_ms") or {}
        row: List[Any] = ["" if record.get(c) is None else record[c] for c in self._columns]
        row += ["" if timings.get(s) is None else timings[s] for s in self._stages]
        self._writer.writerow(row)

    def close(self) -> None:
        self._file.commit()


class GeoJsonTrackSink(Sink):
    """A FeatureCollection: the estimated track as a LineString plus one Point per estimate."""

    POINT_PROPERTIES = ("frame", "t", "status", "confidence", "search", "error_m")

    def __init__(self, target: str) -> None:
        self._target = target
        folder = ensure_writable_dir(Path(target).parent if str(Path(target).parent) else Path("."))
        fd, spool_name = tempfile.mkstemp(prefix="." + Path(target).name + ".", suffix=".spool", dir=str(folder))
        self._spool_path = spool_name
        self._spool: IO[str] = os.fdopen(fd, "w+", encoding="utf-8")
        self._closed = False

    def write(self, record: Dict[str, Any]) -> None:
        if record.get("lat") is None or record.get("lon") is None:
            return
        properties = {key: record.get(key) for key in self.POINT_PROPERTIES}
        self._spool.write(json.dumps([record["lon"], record["lat"], properties], allow_nan=False) + "\n")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with atomic_path(self._target) as tmp, open(str(tmp), "w", encoding="utf-8") as out:
                out.write('{"type":"FeatureCollection","features":[')
                out.write('{"type":"Feature","properties":{"kind":"track"},"geometry":{"type":"LineString","coordinates":[')
                self._spool.seek(0)
                for i, line in enumerate(self._spool):
                    lon, lat, _ = json.loads(line)
                    out.write(("," if i else "") + json.dumps([lon, lat]))
                out.write("]}}")
                self._spool.seek(0)
                for line in self._spool:
                    lon, lat, properties = json.loads(line)
                    feature = {"type": "Feature", "properties": properties,
                               "geometry": {"type": "Point", "coordinates": [lon, lat]}}
                    out.write("," + json.dumps(feature))
                out.write("]}\n")
        finally:
            self._spool.close()
            with contextlib.suppress(OSError):
                os.unlink(self._spool_path)
