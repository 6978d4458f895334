"""InfluxDB's WAL after a crash: the engine's loss of acknowledged points, and ``repair-wal``.

A ``kill -9`` in the middle of a WAL write leaves a torn last entry. InfluxDB (1.8.10 here; 2.7.12
has the same code) then loses every point acknowledged after the next start, at the start after
that (``mbostream.storage.influx_wal`` explains how). The torn entry is made here by appending the
first bytes of an entry to the last segment of a killed engine: exactly what a kill between the
writer's ``write`` calls leaves, made deterministic. The engine is real; nothing is mocked.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from influx.harness import InfluxEngine, influxd_binary
from mbostream.storage.influx_wal import HEADER_BYTES, repair_wal, whole_prefix

DATABASE = "wal"
POINTS = 500


def lines(start: int, count: int) -> bytes:
    """``count`` points of one series at distinct times (each point is one record)."""
    return b"".join(b"m,book=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(start, start + count))


def count(engine: InfluxEngine) -> int:
    series = engine.query('SELECT count("v") FROM "m"', DATABASE)
    return int(series[0]["values"][0][1]) if series else 0


def last_segment(engine: InfluxEngine) -> Path:
    segments = sorted((engine.directory / "wal" / DATABASE).rglob("_*.wal"))
    assert segments, "the engine wrote no WAL segment"
    return segments[-1]


def tear(segment: Path) -> None:
    """Appends a write entry's header and a third of the block it announces: a write cut by a kill."""
    with segment.open("ab") as f:
        f.write(bytes([1]) + struct.pack(">I", 300) + b"\x07" * 100)


def crash_twice(engine: InfluxEngine) -> tuple[int, int]:
    """Points A, kill -9 mid-write, start, points B (acknowledged), kill -9, start: (A, stored)."""
    engine.start()
    engine.query(f'CREATE DATABASE "{DATABASE}"')
    status, body = engine.write_v1(DATABASE, lines(0, POINTS))
    assert status == 204, body
    engine.kill()
    tear(last_segment(engine))
    engine.start()
    status, body = engine.write_v1(DATABASE, lines(POINTS, POINTS))
    assert status == 204, body
    assert count(engine) == 2 * POINTS, "the engine answers for both batches before the second crash"
    engine.kill()
    engine.start()
    try:
        return POINTS, count(engine)
    finally:
        engine.stop()


def test_the_engine_loses_acknowledged_points_after_two_crashes_without_the_repair(tmp_path: Path) -> None:
    influxd_binary()
    engine = InfluxEngine(tmp_path / "influx", repair_wal=False)
    engine.directory.mkdir()
    before, stored = crash_twice(engine)
    # The second batch was answered 204 and read back, then lost: this is the engine's bug, and
    # what this test pins (if a newer engine keeps the points, the repair may go).
    assert stored == before, f"{stored} points stored: the engine kept the second batch"
    assert b"File corrupt" in (engine.directory / "influxd.log").read_bytes()


def test_with_the_repair_before_each_start_every_acknowledged_point_stays(tmp_path: Path) -> None:
    influxd_binary()
    engine = InfluxEngine(tmp_path / "influx")
    engine.directory.mkdir()
    before, stored = crash_twice(engine)
    assert stored == 2 * before
    repaired = engine.wal_repairs()
    assert len(repaired) == 1 and "cut 105 torn bytes" in repaired[0], repaired


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x01", id="a lone type byte"),
        pytest.param(b"\x01\x00\x00", id="half a length"),
        pytest.param(b"\x01" + struct.pack(">I", 64) + b"x" * 10, id="part of the block"),
        pytest.param(b"\x00" * 4096, id="a hole of zeros"),
        pytest.param(b"\x09" + struct.pack(">I", 3) + b"abc", id="an unknown type"),
    ],
)
def test_a_torn_tail_is_cut_at_the_last_whole_entry(tmp_path: Path, tail: bytes) -> None:
    segment = tmp_path / "db" / "autogen" / "1" / "_00001.wal"
    segment.parent.mkdir(parents=True)
    whole = b"".join(bytes([kind]) + struct.pack(">I", len(block)) + block for kind, block in ((1, b"a" * 40), (2, b"key"), (3, b"r" * 9)))
    segment.write_bytes(whole + tail)
    (repair,) = repair_wal(tmp_path)
    assert (repair.size, repair.kept, repair.entries) == (len(whole) + len(tail), len(whole), 3)
    assert segment.read_bytes() == whole
    assert repair_wal(tmp_path) == [], "a second run finds nothing to cut"


def test_a_clean_wal_and_a_missing_directory_are_left_alone(tmp_path: Path) -> None:
    segment = tmp_path / "_00001.wal"
    entry = bytes([1]) + struct.pack(">I", 5) + b"hello"
    segment.write_bytes(entry * 3)
    assert repair_wal(tmp_path) == [] and segment.read_bytes() == entry * 3
    assert whole_prefix(segment) == (3 * (HEADER_BYTES + 5), 3)
    assert repair_wal(tmp_path / "absent") == []


def test_the_command_prints_what_it_cut(tmp_path: Path) -> None:
    segment = tmp_path / "_00007.wal"
    segment.write_bytes(bytes([1]) + struct.pack(">I", 2) + b"ok" + b"\x01\x00")
    run = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "storage", "repair-wal", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert f"{segment}: kept 1 whole entries (7 bytes), cut 2 torn bytes" in run.stdout
    assert run.stdout.rstrip().endswith("1 segment(s) repaired")
    refused = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "storage", "repair-wal", str(segment)], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and "is not a directory" in refused.stderr
