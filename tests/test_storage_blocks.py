"""Blocks: self-describing gzip members of line protocol, read by any gzip reader."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable

import pytest
from mbostream.storage import blocks
from mbostream.storage.blocks import (
    HEADER_SIZE,
    BlockHeader,
    decode,
    encode_block,
    iter_blocks,
    parse_header,
)
from mbostream.storage.errors import BlockError


def lines(start: int, count: int) -> bytes:
    return b"".join(b"m,t=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(start, start + count))


PARTS = [lines(0, 1), lines(1, 500), b"", lines(501, 10_000)]


def test_concatenated_blocks_are_one_multi_member_gzip_file() -> None:
    data = b"".join(encode_block(part) for part in PARTS)
    assert gzip.decompress(data) == b"".join(PARTS)
    assert decode(data) == b"".join(PARTS)


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip binary")
def test_zcat_reads_a_file_of_blocks() -> None:
    data = b"".join(encode_block(part) for part in PARTS)
    done = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, timeout=30, check=True)
    assert done.stdout == b"".join(PARTS)


def test_the_header_is_exactly_the_documented_layout() -> None:
    text = lines(0, 7)
    block = encode_block(text)
    assert block[:16] == bytes.fromhex("1f8b0804 00000000 00ff 1000") + b"MB" + bytes.fromhex("0c00")
    assert struct.unpack_from("<III", block, 16) == (len(block), 7, len(text))
    assert parse_header(block) == BlockHeader(size=len(block), lines=7, raw_size=len(text))
    assert zlib.decompress(block[HEADER_SIZE:-8], -15) == text  # one raw deflate stream
    crc, isize = struct.unpack("<II", block[-8:])
    assert (crc, isize) == (zlib.crc32(text), len(text))


@pytest.mark.parametrize("level", [0, 1, 2, 3, 9])
def test_every_level_round_trips(level: int) -> None:
    text = lines(0, 2000)
    block = encode_block(text, level)
    assert decode(block) == text
    assert gzip.decompress(block) == text
    assert len(block) < len(text) or level == 0


def test_levels_above_the_compressors_are_capped() -> None:
    assert encode_block(lines(0, 100), 9) == encode_block(lines(0, 100), blocks.MAX_LEVEL)


def test_blocks_hold_whole_lines_only() -> None:
    with pytest.raises(ValueError, match="whole lines"):
        encode_block(b"m v=1i 1")


def test_iter_blocks_walks_whole_blocks_and_stops_at_a_cut_tail() -> None:
    encoded = [encode_block(part) for part in PARTS]
    data = b"".join(encoded)
    offsets = [sum(map(len, encoded[:i])) for i in range(len(encoded))]
    walked = list(iter_blocks(data))
    assert [offset for offset, _ in walked] == offsets
    assert [header.lines for _, header in walked] == [part.count(b"\n") for part in PARTS]
    assert [header.raw_size for _, header in walked] == [len(part) for part in PARTS]
    assert [offset for offset, _ in iter_blocks(data[:-1])] == offsets[:-1]
    assert [offset for offset, _ in iter_blocks(data[: offsets[-1] + HEADER_SIZE - 1])] == offsets[:-1]
    with pytest.raises(BlockError) as caught:
        list(iter_blocks(data[: offsets[2]] + b"\0" * 100))
    assert caught.value.offset == offsets[2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: HEADER_SIZE - 1],  # too short for a header
        lambda b: b"",
        lambda b: b"\0" * 64,
        lambda b: b"m,t=a v=1i 1\n" * 4,  # plain line protocol
        lambda b: gzip.compress(b"m v=1i 1\n"),  # a gzip member, but no MB subfield
        lambda b: b[:3] + b"\x00" + b[4:],  # FLG without FEXTRA
        lambda b: b[:3] + b"\x0c" + b[4:],  # FLG with FNAME too
        lambda b: b[:10] + b"\x11" + b[11:],  # XLEN
        lambda b: b[:12] + b"MC" + b[14:],  # another subfield
        lambda b: b[:14] + b"\x0d" + b[15:],  # subfield LEN
        lambda b: b[:16] + struct.pack("<I", 10) + b[20:],  # BSIZE smaller than any block
        lambda b: b[:20] + struct.pack("<II", 1000, 10) + b[28:],  # more lines than bytes
    ],
)
def test_the_header_parser_rejects_truncated_and_foreign_bytes(damage: Callable[[bytes], bytes]) -> None:
    assert parse_header(damage(encode_block(lines(0, 10)))) is None


def test_parse_header_reads_at_an_offset() -> None:
    first, second = encode_block(lines(0, 3)), encode_block(lines(3, 5))
    header = parse_header(first + second, len(first))
    assert header is not None and (header.size, header.lines) == (len(second), 5)
    assert parse_header(first + second, len(first) + 1) is None


def flip(block: bytes, at: int) -> bytes:
    return block[:at] + bytes([block[at] ^ 0x55]) + block[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:-8] + struct.pack("<II", zlib.crc32(b"other"), struct.unpack("<I", b[-4:])[0]), "CRC32"),
        (lambda b: b[:-4] + struct.pack("<I", 1), "ISIZE"),
        (lambda b: b[:24] + struct.pack("<I", 10_000) + b[28:], "RSIZE"),
        (lambda b: b[:20] + struct.pack("<I", 3) + b[24:], "LINES"),
        (lambda b: flip(b, HEADER_SIZE + 5), None),  # corrupt deflate data, or a CRC mismatch
        (lambda b: b[:-1], "after the last whole block"),
        (lambda b: b + b"\0", "after the last whole block"),
    ],
)
def test_decode_checks_every_block(damage: Callable[[bytes], bytes], reason: str | None) -> None:
    good = encode_block(lines(0, 100))
    with pytest.raises(BlockError, match=reason):
        decode(good + damage(good))


def test_decode_rejects_a_deflate_stream_that_ends_early_or_late() -> None:
    text = lines(0, 10)
    body = zlib.compress(text, 1, -15)
    for deflate in (body + b"\0\0", body[:-2]):
        size = HEADER_SIZE + len(deflate) + 8
        forged = encode_block(text)[:16] + struct.pack("<III", size, 10, len(text)) + deflate + struct.pack("<II", zlib.crc32(text), len(text))
        with pytest.raises(BlockError):
            decode(forged)
