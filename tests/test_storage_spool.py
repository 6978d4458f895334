"""The on-disk spool: ordered reads, checkpoints, rotation, crash recovery, one user at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mbostream.storage.errors import SpoolError, SpoolLockedError
from mbostream.storage.spool import CHECKPOINT_NAME, REJECTED_NAME, Spool, SpoolPosition

SEGMENT_BYTES = 64 << 10


def lines(start: int, count: int) -> bytes:
    return b"".join(b"m,t=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(start, start + count))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", segment_bytes=SEGMENT_BYTES)
    s.open()
    yield s
    s.close()


def drain(spool: Spool, max_bytes: int = 10_000) -> bytes:
    out = b""
    while (read := spool.read(spool.checkpoint, max_bytes)) is not None:
        assert read.start == spool.checkpoint
        assert read.data.endswith(b"\n")
        assert read.lines == read.data.count(b"\n")
        out += read.data
        spool.ack(read.end)
    return out


def segments(spool: Spool) -> list[Path]:
    return sorted(spool.directory.glob("segment-*.lp"))


def test_reads_come_back_in_order_and_whole_lines(spool: Spool) -> None:
    data = [lines(0, 10), lines(10, 500), lines(510, 3)]
    assert spool.append(data) == sum(map(len, data))
    assert spool.pending_bytes() == sum(map(len, data))
    assert drain(spool, max_bytes=777) == b"".join(data)
    assert spool.pending_bytes() == 0
    assert spool.read(spool.checkpoint, 100) is None


def test_rotates_segments_and_deletes_drained_ones(spool: Spool) -> None:
    for i in range(40):
        spool.append([lines(i * 100, 100)])
    assert len(segments(spool)) >= 3
    assert spool.oldest_age() >= 0
    expected = b"".join(lines(i * 100, 100) for i in range(40))
    assert drain(spool) == expected
    assert segments(spool) == []
    assert spool.oldest_age() == 0.0
    spool.append([lines(0, 1)])
    assert drain(spool) == lines(0, 1)


def test_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([lines(0, 100), lines(100, 100)])
    read = first.read(first.checkpoint, len(lines(0, 100)))
    assert read is not None and read.data == lines(0, 100)
    first.ack(read.end)
    first.close()
    second = Spool(directory, segment_bytes=SEGMENT_BYTES)
    second.open()
    try:
        assert json.loads((directory / CHECKPOINT_NAME).read_text()) == {"segment": read.end.segment, "offset": read.end.offset}
        assert drain(second) == lines(100, 100)
        second.append([lines(200, 5)])
        assert drain(second) == lines(200, 5)
    finally:
        second.close()


def test_a_torn_tail_is_cut_back_to_the_last_whole_line(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([lines(0, 10)])
    first.close()
    (segment,) = segments(first)
    with open(segment, "ab") as f:
        f.write(b"m,t=a v=99i 17000")  # a crash in the middle of an append
    second = Spool(directory, segment_bytes=SEGMENT_BYTES)
    second.open()
    try:
        assert drain(second) == lines(0, 10)
    finally:
        second.close()


def test_an_unreadable_checkpoint_resends_everything(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([lines(0, 10), lines(10, 10)])
    read = first.read(first.checkpoint, len(lines(0, 10)))
    assert read is not None
    first.ack(read.end)
    first.close()
    (directory / CHECKPOINT_NAME).write_text("{not json")
    second = Spool(directory, segment_bytes=SEGMENT_BYTES)
    second.open()
    try:
        assert drain(second) == lines(0, 20)  # resending is safe: the same points overwrite themselves
    finally:
        second.close()


def test_one_user_at_a_time(spool: Spool) -> None:
    other = Spool(spool.directory)
    with pytest.raises(SpoolLockedError, match="in use by another process"):
        other.open()


def test_a_closed_spool_refuses_appends(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    s.open()
    s.close()
    with pytest.raises(SpoolError, match="closed"):
        s.append([lines(0, 1)])


def test_payloads_must_be_whole_lines(spool: Spool) -> None:
    with pytest.raises(ValueError, match="whole lines"):
        spool.append([b"m v=1i 1"])


def test_an_unusable_directory_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot use the directory"):
        Spool(blocker / "spool").open()


def test_rejected_points_are_set_aside_with_their_reason(spool: Spool) -> None:
    path = spool.reject(b"trades,instrument=X price=\"oops\" 1\n", "HTTP 400: field type\nconflict")
    assert path == spool.directory / REJECTED_NAME
    comment, line = path.read_text().splitlines()
    assert comment.startswith("# ") and comment.endswith("HTTP 400: field type conflict")
    assert line == 'trades,instrument=X price="oops" 1'


def test_acks_never_move_the_checkpoint_back(spool: Spool) -> None:
    spool.append([lines(0, 10)])
    read = spool.read(spool.checkpoint, 10_000)
    assert read is not None
    spool.ack(read.end)
    spool.ack(SpoolPosition(read.start.segment, 0))
    assert spool.checkpoint >= read.end
