"""The on-disk spool: ordered reads, checkpoints, rotation, crash recovery, one user at a time."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mbostream.storage import blocks
from mbostream.storage.errors import SpoolError, SpoolLockedError
from mbostream.storage.spool import (
    CHECKPOINT_NAME,
    REJECTED_NAME,
    Spool,
    SpoolPosition,
)

SEGMENT_BYTES = 4 << 10


def lines(start: int, count: int) -> bytes:
    return b"".join(b"m,t=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(start, start + count))


def block(start: int, count: int) -> bytes:
    return blocks.encode_block(lines(start, count))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", segment_bytes=SEGMENT_BYTES)
    s.open()
    yield s
    s.close()


def drain(spool: Spool, max_bytes: int = 2_000) -> bytes:
    """Every pending line, read and acknowledged stretch by stretch; checks each read is whole blocks."""
    out = b""
    while (read := spool.read(spool.checkpoint, max_bytes)) is not None:
        assert read.start == spool.checkpoint
        walked = list(blocks.iter_blocks(read.data))
        assert walked and sum(header.size for _, header in walked) == len(read.data)
        assert len(read.data) <= max_bytes or len(walked) == 1
        text = blocks.decode(read.data)
        assert read.lines == sum(header.lines for _, header in walked) == text.count(b"\n")
        out += text
        spool.ack(read.end)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*"))


def test_reads_come_back_in_order_and_whole_blocks(spool: Spool) -> None:
    data = [block(0, 10), block(10, 500), block(510, 3), block(513, 40)]
    assert spool.append(data) == sum(map(len, data))
    assert spool.pending_bytes() == sum(map(len, data))
    # The 500-line block alone is larger than a read: it comes back whole, on its own.
    assert len(data[1]) > 777 > len(data[2]) + len(data[3])
    first = spool.read(spool.checkpoint, 777)
    assert first is not None and first.data == data[0] and first.lines == 10
    assert drain(spool, max_bytes=777) == lines(0, 553)
    assert spool.pending_bytes() == 0
    assert spool.read(spool.checkpoint, 100) is None


def test_reads_gather_small_blocks_up_to_max_bytes(spool: Spool) -> None:
    data = [block(i, 1) for i in range(20)]
    spool.append(data)
    read = spool.read(spool.checkpoint, 5 * len(data[0]) + 10)
    assert read is not None and read.data == b"".join(data[:5]) and read.lines == 5


def test_rotates_segments_and_deletes_drained_ones(spool: Spool) -> None:
    before = time.time()
    for i in range(40):
        spool.append([block(i * 100, 100)])
    after = time.time()
    assert len(segments(spool.directory)) >= 3
    assert all(path.name.endswith(".lp.gz") for path in segments(spool.directory))
    # The oldest pending data is in the first segment, made during the first append (its name
    # keeps the creation time in whole milliseconds).
    asked = time.time()
    age = spool.oldest_age()
    assert asked - after <= age <= time.time() - before + 0.001
    assert drain(spool) == lines(0, 4000)
    assert segments(spool.directory) == []
    assert spool.oldest_age() == 0.0
    spool.append([block(0, 1)])
    assert drain(spool) == lines(0, 1)


def test_a_segment_is_a_gzip_file_of_line_protocol(spool: Spool) -> None:
    spool.append([block(0, 100), block(100, 5)])
    spool.sync()
    (segment,) = segments(spool.directory)
    assert gzip.decompress(segment.read_bytes()) == lines(0, 105)


def test_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([block(0, 100), block(100, 100)])
    read = first.read(first.checkpoint, len(block(0, 100)))
    assert read is not None and read.data == block(0, 100) and read.lines == 100
    first.ack(read.end)
    first.close()
    second = Spool(directory, segment_bytes=SEGMENT_BYTES)
    second.open()
    try:
        assert json.loads((directory / CHECKPOINT_NAME).read_text()) == {"segment": read.end.segment, "offset": read.end.offset}
        assert drain(second) == lines(100, 100)
        second.append([block(200, 5)])
        assert drain(second) == lines(200, 5)
    finally:
        second.close()


@pytest.mark.parametrize(
    "tail",
    [
        lambda b: b[: len(b) // 2],  # a crash in the middle of an append
        lambda b: b[:10],  # ... in the middle of its header
        lambda b: b[:-4] + b"\0\0\0\0",  # its trailer never reached the disk
        lambda b: b[:40] + b"\0" * (len(b) - 40),  # its pages never reached the disk
        lambda b: b"\0" * 100,  # the file grew, nothing was written
    ],
)
def test_a_torn_tail_is_cut_after_the_last_whole_block(tmp_path: Path, tail: Callable[[bytes], bytes]) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([block(0, 10), block(10, 10)])
    first.close()
    (segment,) = segments(directory)
    size = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(tail(block(20, 50)))
    second = Spool(directory, segment_bytes=SEGMENT_BYTES)
    second.open()
    try:
        assert segment.stat().st_size == size
        assert drain(second) == lines(0, 20)
        second.append([block(20, 5)])
        assert drain(second) == lines(20, 5)
    finally:
        second.close()


def test_a_segment_of_nothing_but_a_torn_block_is_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "segment-000000000003-1700000000000.lp.gz").write_bytes(block(0, 10)[:-1])
    spool = Spool(directory)
    spool.open()
    try:
        assert segments(directory) == [] and spool.pending_bytes() == 0
    finally:
        spool.close()


def test_a_checkpoint_between_blocks_is_kept_and_one_inside_a_block_resends_its_segment(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([block(0, 10), block(10, 10), block(20, 10)])
    first.close()
    segment_id = first.checkpoint.segment
    boundary = len(block(0, 10))
    cases = ((boundary, boundary, lines(10, 20)), (boundary + 3, 0, lines(0, 30)))
    for offset, kept_offset, expected in cases:
        (directory / CHECKPOINT_NAME).write_text(json.dumps({"segment": segment_id, "offset": offset}))
        spool = Spool(directory, segment_bytes=SEGMENT_BYTES)
        spool.open()
        try:
            assert spool.checkpoint == SpoolPosition(segment_id, kept_offset)
            read = spool.read(spool.checkpoint, 1 << 20)
            assert read is not None and blocks.decode(read.data) == expected
        finally:
            spool.close()


def test_oldest_age_is_that_of_the_segment_holding_the_oldest_pending_data(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    now_ms = int(time.time() * 1000)
    # Segments left by an earlier run, made two hours and one minute ago (the name keeps the time).
    created_ms = {3: now_ms - 7_200_000, 4: now_ms - 60_000}
    for segment_id, ms in created_ms.items():
        (directory / f"segment-{segment_id:012d}-{ms}.lp.gz").write_bytes(block(segment_id * 10, 10))
    spool = Spool(directory)
    spool.open()
    try:

        def assert_age_since(ms: int) -> None:
            asked = time.time()
            age = spool.oldest_age()
            assert asked - ms / 1000 <= age <= time.time() - ms / 1000

        assert_age_since(created_ms[3])
        read = spool.read(spool.checkpoint, len(block(30, 10)))
        assert read is not None and read.lines == 10 and read.end.segment == 3
        spool.ack(read.end)
        assert_age_since(created_ms[4])
        assert drain(spool) == lines(40, 10)
        assert spool.oldest_age() == 0.0
    finally:
        spool.close()


def test_an_unreadable_checkpoint_resends_everything(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=SEGMENT_BYTES)
    first.open()
    first.append([block(0, 10), block(10, 10)])
    read = first.read(first.checkpoint, len(block(0, 10)))
    assert read is not None and read.lines == 10
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
        s.append([block(0, 1)])


@pytest.mark.parametrize(
    "payload",
    [
        lines(0, 3),  # plain line protocol
        gzip.compress(lines(0, 3)),  # gzip, but not a block
        block(0, 3)[:-1],  # a block cut short
        block(0, 3) + block(3, 1),  # two blocks in one payload
    ],
)
def test_payloads_must_be_one_whole_block_each(spool: Spool, payload: bytes) -> None:
    with pytest.raises(ValueError, match="whole blocks"):
        spool.append([block(0, 1), payload])
    assert spool.pending_bytes() == 0  # nothing of the call was appended


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
    spool.append([block(0, 10)])
    read = spool.read(spool.checkpoint, 10_000)
    assert read is not None
    spool.ack(read.end)
    # The read took the whole segment: it is drained, so the checkpoint is the next segment's start.
    acked = spool.checkpoint
    assert acked == SpoolPosition(read.end.segment + 1, 0) and segments(spool.directory) == []
    spool.ack(SpoolPosition(read.start.segment, 0))
    assert spool.checkpoint == acked
    assert json.loads((spool.directory / CHECKPOINT_NAME).read_text()) == {"segment": acked.segment, "offset": acked.offset}


def test_bytes_changed_under_an_open_spool_are_a_spool_error(spool: Spool) -> None:
    spool.append([block(0, 10), block(10, 10)])
    spool.sync()
    (segment,) = segments(spool.directory)
    with open(segment, "r+b") as f:
        f.write(b"\0" * 16)
    with pytest.raises(SpoolError, match="no block header"):
        spool.read(spool.checkpoint, 1 << 20)
