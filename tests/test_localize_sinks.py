"""Sinks: the JSON Lines flight log as it goes, CSV and GeoJSON atomically; MAVLink GPS_INPUT decoded by pymavlink."""

import csv
import json
import os
import socket

import pytest
from pymavlink.dialects.v20 import common as mavlink2

from meanloc.errors import MeanlocError
from meanloc.runtime.artifacts import open_jsonl, read_jsonl
from meanloc.runtime.localize.loop import RECORD_FIELDS, STAGES
from meanloc.runtime.localize.mavlink_sink import FIX_NONE, MavlinkGpsInputSink, gps_week_and_ms
from meanloc.runtime.localize.sinks import CsvSink, GeoJsonTrackSink, JsonlSink


def _records(n):
    for i in range(n):
        record = dict.fromkeys(RECORD_FIELDS)
        record.update(frame=i, t=float(i), lat=47.0 + i * 1e-4, lon=8.0 + i * 2e-4, status="accepted",
                      confidence=0.5, search="global", trusted=True, accuracy_m=12.0,
                      timings_ms={"embed": 3.5, "search": 0.2})
        yield record
    yield dict(dict.fromkeys(RECORD_FIELDS), frame=n, t=float(n), status="no_fix", timings_ms={})


def test_flight_log_streams_and_summaries_appear_only_complete_at_close(tmp_path):
    paths = {name: tmp_path / name for name in ("out.jsonl", "out.csv", "track.geojson")}
    sinks = [JsonlSink(str(paths["out.jsonl"])), CsvSink(str(paths["out.csv"]), RECORD_FIELDS, STAGES),
             GeoJsonTrackSink(str(paths["track.geojson"]))]
    for count, record in enumerate(_records(5), 1):
        for sink in sinks:
            sink.write(record)
        # The flight log holds every record as soon as it is written (a crash loses none of them).
        assert len(paths["out.jsonl"].read_text().splitlines()) == count
    assert not paths["out.csv"].exists() and not paths["track.geojson"].exists()  # still temporary
    for sink in sinks:
        sink.close()
        sink.close()  # idempotent
    lines = [json.loads(line) for line in paths["out.jsonl"].read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(6)) and lines[-1]["lat"] is None
    rows = list(csv.DictReader(paths["out.csv"].open()))
    assert len(rows) == 6 and float(rows[2]["lat"]) == pytest.approx(47.0002) and rows[2]["ms_embed"] == "3.5"
    assert rows[5]["lat"] == "" and rows[5]["status"] == "no_fix"
    collection = json.loads(paths["track.geojson"].read_text())
    line, *points = collection["features"]
    assert line["geometry"]["type"] == "LineString" and len(line["geometry"]["coordinates"]) == 5
    assert line["geometry"]["coordinates"][3] == pytest.approx([8.0006, 47.0003])
    assert [p["properties"]["frame"] for p in points] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(paths)  # no temp or spool files left


def test_a_run_without_records_leaves_earlier_outputs_untouched(tmp_path):
    paths = {name: tmp_path / name for name in ("out.jsonl", "out.csv", "track.geojson")}
    for path in paths.values():
        path.write_text("earlier run\n")
    sinks = [JsonlSink(str(paths["out.jsonl"])), CsvSink(str(paths["out.csv"]), RECORD_FIELDS, STAGES),
             GeoJsonTrackSink(str(paths["track.geojson"]))]
    for sink in sinks:
        sink.close()
    assert all(path.read_text() == "earlier run\n" for path in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(paths)


def test_jsonl_reader_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"frame": 0}\n{"frame": 1}\n{"fra')
    assert [r["frame"] for r in read_jsonl(path)] == [0, 1]
    path.write_text('{"frame": 0}\n{"fra\n{"frame": 2}\n')
    with pytest.raises(MeanlocError, match="line 2 is not valid JSON"):
        list(read_jsonl(path))


def test_appending_to_a_log_first_cuts_its_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    fd = open_jsonl(path, append=True)
    os.write(fd, b'{"step": 3}\n')
    os.close(fd)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]


def test_gps_time_of_a_known_instant():
    # 2023-11-14T22:13:20Z was a Tuesday of GPS week 2288; GPS time runs 18 s ahead of UTC.
    week, week_ms = gps_week_and_ms(1700000000.0)
    assert week == 2288
    assert week_ms == (2 * 86400 + 22 * 3600 + 13 * 60 + 20 + 18) * 1000


def _receive(sock):
    parser = mavlink2.MAVLink(None)
    data, _ = sock.recvfrom(4096)
    messages = parser.parse_buffer(data)
    assert messages and len(messages) == 1
    return messages[0]


def test_mavlink_gps_input_reaches_a_pymavlink_parser_over_udp():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5.0)
    port = receiver.getsockname()[1]
    sink = MavlinkGpsInputSink(f"udpout:127.0.0.1:{port}", wall_clock=lambda: 1700000000.0)
    try:
        record = dict.fromkeys(RECORD_FIELDS)
        # An oblique camera: the look-at estimate (lat/lon) lies ahead of the vehicle, which is what is sent.
        record.update(lat=47.3789123, lon=8.5437456, vehicle_lat=47.3769123, vehicle_lon=8.5417456, trusted=True,
                      accuracy_m=20.0)
        sink.write(record)
        message = _receive(receiver)
        assert message.get_type() == "GPS_INPUT"
        assert message.lat == 473769123 and message.lon == 85417456
        assert message.fix_type == 2  # no altitude given: a 2-D fix
        assert message.horiz_accuracy == pytest.approx(20.0) and message.hdop == pytest.approx(4.0)
        assert message.time_week == 2288
        assert message.ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_ALT
        assert message.ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
        assert not message.ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY

        record.update(trusted=False)
        sink.write(record)
        untrusted = _receive(receiver)
        assert untrusted.fix_type == FIX_NONE and untrusted.lat == 0
    finally:
        sink.close()
        receiver.close()
