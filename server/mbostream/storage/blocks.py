"""Block room: the gzip members that carry line protocol from where it is made to InfluxDB.

A block is one gzip member (RFC 1952) holding whole lines of line protocol, compressed once when
the lines are made, then stored in the spool and sent to the database as they are. Its one FEXTRA
subfield (``MB``, like BGZF's ``BC``) makes it self-describing: the member's size, its number of
lines and its uncompressed size can be read without inflating it. Layout (integers little-endian)::

    0   1f 8b 08 04     ID1 ID2, CM = 8 (deflate), FLG = FEXTRA only
    4   00 00 00 00     MTIME = 0
    8   00 ff           XFL = 0, OS = 255 (unknown)
    10  10 00           XLEN = 16
    12  'M' 'B' 0c 00   SI1 SI2, LEN = 12
    16  u32 BSIZE       size of the whole member in bytes (header + deflate data + trailer)
    20  u32 LINES       lines (points) in the member
    24  u32 RSIZE       uncompressed size in bytes
    28  raw deflate     one complete stream, final block set
    BSIZE-8             u32 CRC32 of the uncompressed bytes, u32 ISIZE (= RSIZE)

Concatenated blocks are a multi-member gzip file: ``zcat`` reads them, and so does InfluxDB's Go
gzip reader, so several blocks are POSTed as one body with ``Content-Encoding: gzip``.

The native formatter makes these bytes where the lines are made; :func:`encode_block` is the
Python encoder (ISA-L's ``isal_zlib`` when the ``isal`` package is there, ~1.2 GB/s at level 1,
else the standard ``zlib``, ~4x slower; both release the GIL), used where Python holds plain
lines: narrowing down a refused request, tests.
"""

from __future__ import annotations

import struct
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from mbostream.storage.errors import BlockError

_deflate: types.ModuleType
try:
    from isal import isal_zlib

    _deflate = isal_zlib
except ImportError:  # no isal wheel for this platform: the standard zlib
    _deflate = zlib

#: The fixed header and its variable fields (BSIZE, LINES, RSIZE).
HEADER_SIZE: Final = 28
#: CRC32 and ISIZE after the deflate stream.
TRAILER_SIZE: Final = 8
#: The shortest deflate stream (an empty final block) is 2 bytes.
MIN_BLOCK_SIZE: Final = HEADER_SIZE + 2 + TRAILER_SIZE
#: BSIZE, LINES and RSIZE are u32.
MAX_BLOCK_SIZE: Final = 0xFFFF_FFFF
#: Highest level the compressor knows (ISA-L: 3, zlib: 9); higher levels are capped.
MAX_LEVEL: Final = 3 if _deflate is not zlib else 9
DEFAULT_LEVEL: Final = 1

_PREFIX: Final = bytes((0x1F, 0x8B, 8, 4, 0, 0, 0, 0, 0, 0xFF, 16, 0)) + b"MB" + bytes((12, 0))
_HEADER: Final = struct.Struct("<16sIII")
_TRAILER: Final = struct.Struct("<II")
_RAW_DEFLATE_WBITS: Final = -15


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What a block's header says about it."""

    #: Bytes of the whole member (BSIZE).
    size: int
    #: Lines (points) it holds (LINES).
    lines: int
    #: Bytes of line protocol once inflated (RSIZE).
    raw_size: int


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> BlockHeader | None:
    """The header of the block at ``offset``, or None.

    None when fewer than :data:`HEADER_SIZE` bytes are there, or when they are not a block header:
    other magic, flags, XLEN or subfield, or sizes no block can have.
    """
    if len(buf) - offset < HEADER_SIZE:
        return None
    prefix, size, lines, raw_size = _HEADER.unpack_from(buf, offset)
    # Every line ends with a newline, so a block holds at least as many bytes as lines.
    if prefix != _PREFIX or size < MIN_BLOCK_SIZE or lines > raw_size:
        return None
    return BlockHeader(size, lines, raw_size)


def encode_block(lines: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """One block holding ``lines`` (whole lines, each ending with a newline).

    ``level`` is the deflate level: 0 (the fastest the compressor has: stored with zlib, ISA-L's
    level 0) up to :data:`MAX_LEVEL`; higher levels are capped.

    Raises
    ------
    ValueError
        ``lines`` does not end with a newline, or is too large for one block (4 GiB).
    """
    if lines and not lines.endswith(b"\n"):
        raise ValueError("a block holds whole lines (the last one has no newline)")
    body = _deflate.compress(lines, min(max(level, 0), MAX_LEVEL), _RAW_DEFLATE_WBITS)
    size = HEADER_SIZE + len(body) + TRAILER_SIZE
    if size > MAX_BLOCK_SIZE or len(lines) > MAX_BLOCK_SIZE:
        raise ValueError(f"{len(lines)} bytes of lines do not fit in one block")
    header = _HEADER.pack(_PREFIX, size, lines.count(b"\n"), len(lines))
    trailer = _TRAILER.pack(_deflate.crc32(lines), len(lines))
    return b"".join((header, body, trailer))


def iter_blocks(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, BlockHeader]]:
    """Yields ``(offset, header)`` of each whole block in ``data``, from its start, in order.

    Stops at a block that ``data`` does not hold whole (a tail cut off by a read or a crash).

    Raises
    ------
    BlockError
        The bytes at a block boundary are not a block header.
    """
    offset = 0
    end = len(data)
    while end - offset >= HEADER_SIZE:
        header = parse_header(data, offset)
        if header is None:
            raise BlockError(offset, "no block header")
        if header.size > end - offset:
            return
        yield offset, header
        offset += header.size


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """The line protocol of every block in ``data``, inflated and concatenated in order.

    Every block is checked: its deflate stream ends exactly at its trailer, CRC32, ISIZE, RSIZE
    and LINES all match what it inflates to.

    Raises
    ------
    BlockError
        ``data`` is not a run of whole, intact blocks.
    """
    view = memoryview(data)
    parts: list[bytes] = []
    end = 0
    for offset, header in iter_blocks(view):
        parts.append(_inflate(view[offset : offset + header.size], offset, header))
        end = offset + header.size
    if end != len(view):
        raise BlockError(end, f"{len(view) - end} bytes after the last whole block")
    return b"".join(parts)


def _inflate(block: memoryview, offset: int, header: BlockHeader) -> bytes:
    """The checked contents of one block (``offset`` only names it in errors)."""
    inflater = _deflate.decompressobj(wbits=_RAW_DEFLATE_WBITS)
    try:
        raw: bytes = inflater.decompress(block[HEADER_SIZE : header.size - TRAILER_SIZE])
    except _deflate.error as exc:
        raise BlockError(offset, f"corrupt deflate data ({exc})") from None
    if not inflater.eof or inflater.unused_data:
        raise BlockError(offset, "the deflate stream does not end at the trailer")
    crc, isize = _TRAILER.unpack_from(block, header.size - TRAILER_SIZE)
    if len(raw) != header.raw_size or isize != header.raw_size:
        raise BlockError(offset, f"inflates to {len(raw)} bytes; RSIZE {header.raw_size}, ISIZE {isize}")
    if _deflate.crc32(raw) != crc:
        raise BlockError(offset, "CRC32 mismatch")
    lines = raw.count(b"\n")
    if lines != header.lines or (raw and not raw.endswith(b"\n")):
        raise BlockError(offset, f"holds {lines} whole lines; LINES says {header.lines}")
    return raw
