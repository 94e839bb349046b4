"""Tile metadata of a bank: one record per embedding, stored as `tiles.npy`.

A numpy structured array (no pickle, memory-mapped on load), because a bank of a million tiles
must open in milliseconds: parsing the same table from CSV takes minutes and gigabytes of
Python strings. `meanloc bank info BANK --tiles-csv FILE` exports it as CSV for people and GIS.

Fields (record i describes embedding row i):
  id                   0..count-1, the row of the tile's embedding
  name                 a stable label: `s<scale>_r<row>_c<col>` for orthophoto grids, the input id otherwise
  scale                zoom multiplier of the base tile side (1, 2, ...)
  side_m               tile side in metres
  grid_row, grid_col   position in its scale's grid, row 0 = north (-1 for tiles given as files)
  center_e, center_n   tile centre in `crs` (metres)
  crs                  the projected CRS the tile was cut in (e.g. EPSG:32632)
  center_lat, center_lon
  tl_lat, tl_lon, tr_lat, tr_lon, br_lat, br_lon, bl_lat, bl_lon   corners clockwise from top-left
  gsd                  source imagery resolution in m/px (NaN if unknown)
  north_up             1 if the tile was cut north-up
  valid_fraction       share of the tile covered by valid source pixels
  source               index into the manifest's `sources` list (id and sha256 of the orthophoto
                       or tile file the tile was cut from)
  path                 the tile image file, for tiles given as files (empty otherwise)
Python 3.8 compatible; needs only numpy.
"""

import csv
import io
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from .frame import LocalFrame

CORNER_NAMES = ("tl", "tr", "br", "bl")
CORNER_COLUMNS = tuple(c + suffix for c in CORNER_NAMES for suffix in ("_lat", "_lon"))
NUMERIC_FIELDS = [
    ("id", "<i8"),
    ("scale", "<f8"),
    ("side_m", "<f8"),
    ("grid_row", "<i4"),
    ("grid_col", "<i4"),
    ("center_e", "<f8"),
    ("center_n", "<f8"),
    ("center_lat", "<f8"),
    ("center_lon", "<f8"),
    *[(name, "<f8") for name in CORNER_COLUMNS],
    ("gsd", "<f8"),
    ("north_up", "u1"),
    ("valid_fraction", "<f4"),
    ("source", "<i4"),
]  # type: List[Tuple[str, str]]
TEXT_FIELDS = ("name", "crs", "path")
FIELD_NAMES = tuple(name for name, _ in NUMERIC_FIELDS) + TEXT_FIELDS
# CSV export: the record fields with the source resolved to its id and hash.
CSV_COLUMNS = tuple(n for n in FIELD_NAMES if n != "source") + ("source_id", "source_sha256")


def tile_dtype(text_widths: Mapping[str, int]) -> np.dtype:
    return np.dtype(
        NUMERIC_FIELDS + [(name, "<U{}".format(max(1, int(text_widths[name])))) for name in TEXT_FIELDS]
    )


def check_tile_dtype(dtype: np.dtype) -> None:
    """Raise ValueError unless `dtype` is a tile record (numeric fields exact, text fields unicode)."""
    names = dtype.names or ()
    if tuple(names) != FIELD_NAMES:
        raise ValueError("fields {} instead of {}".format(list(names), list(FIELD_NAMES)))
    for name, kind in NUMERIC_FIELDS:
        if dtype[name] != np.dtype(kind):
            raise ValueError("field {} is {} instead of {}".format(name, dtype[name], kind))
    for name in TEXT_FIELDS:
        if dtype[name].kind != "U":
            raise ValueError("field {} is not text".format(name))


def records_from_rows(
    rows: Sequence[Mapping[str, Any]], source_index: Mapping[Tuple[str, str], int]
) -> np.ndarray:
    """Tile dicts (from a tile source; `source_id`/`source_sha256` instead of `source`) to records."""
    widths = {name: max([len(str(row[name])) for row in rows] or [1]) for name in TEXT_FIELDS}
    records = np.zeros(len(rows), dtype=tile_dtype(widths))
    for name, _ in NUMERIC_FIELDS:
        if name not in ("id", "source"):  # ids are assigned when the bank is written
            records[name] = [row[name] for row in rows]
    for name in TEXT_FIELDS:
        records[name] = [str(row[name]) for row in rows]
    records["source"] = [source_index[(row["source_id"], row["source_sha256"])] for row in rows]
    return records


def concatenate_records(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Join record arrays whose text fields may have different widths."""
    widths = {name: max(p.dtype[name].itemsize // 4 for p in parts) for name in TEXT_FIELDS}
    out = np.zeros(sum(len(p) for p in parts), dtype=tile_dtype(widths))
    start = 0
    for part in parts:
        for name in FIELD_NAMES:
            out[name][start : start + len(part)] = part[name]
        start += len(part)
    return out


class TileTable:
    """Tile records plus centre x/y (metres) in the bank's local frame.

    Every record field is available as an array attribute (`table.side_m`, `table.grid_row`, ...);
    `lat`/`lon` alias the centre, `x`/`y` are the centre in `frame`, `corners_latlon` is (N, 4, 2)
    and `sources` the list of {"id", "sha256"} that `source` indexes.
    """

    def __init__(self, records: np.ndarray, sources: Sequence[Mapping[str, str]], frame: LocalFrame) -> None:
        self.records = records
        self.sources = [dict(s) for s in sources]
        self.frame = frame
        self.lat = np.asarray(records["center_lat"], dtype=np.float64)
        self.lon = np.asarray(records["center_lon"], dtype=np.float64)
        self.x, self.y = frame.to_xy(self.lat, self.lon)
        self.side_m = np.asarray(records["side_m"], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.records)

    def __getattr__(self, name: str) -> Any:
        records = self.__dict__.get("records")
        if records is not None and name in FIELD_NAMES:
            return records[name]
        raise AttributeError(name)

    @property
    def corners_latlon(self) -> np.ndarray:
        return np.stack(
            [np.stack([self.records[c + "_lat"], self.records[c + "_lon"]], axis=-1) for c in CORNER_NAMES],
            axis=1,
        )

    def row(self, index: int) -> Dict[str, Any]:
        """One tile as a plain dict (for logs and JSON sinks), its source resolved."""
        record = self.records[index]
        out = {name: record[name].item() for name in FIELD_NAMES if name != "source"}
        source = self.sources[int(record["source"])]
        out.update(
            source_id=source["id"],
            source_sha256=source["sha256"],
            x=float(self.x[index]),
            y=float(self.y[index]),
        )
        return out


def tiles_csv_text(table: TileTable, chunk: int = 65536) -> str:
    """The whole table as CSV text (CSV_COLUMNS), for export."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    source_ids = [s["id"] for s in table.sources]
    source_hashes = [s["sha256"] for s in table.sources]
    for start in range(0, len(table), chunk):
        part = table.records[start : start + chunk]
        columns = [part[name].tolist() for name in FIELD_NAMES if name != "source"]
        sources = part["source"].tolist()
        columns += [[source_ids[s] for s in sources], [source_hashes[s] for s in sources]]
        writer.writerows(zip(*columns))
    return out.getvalue()
