"""Decoding room: DBN files (v1–v3, plain or zstd) to metadata and chunks of MBO records.

Records stay in their wire layout: each chunk is a numpy structured array over the file's bytes
(:data:`MBO_DTYPE`), so the hot path never creates a Python object per record. Metadata and
symbology come from ``databento-dbn``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import databento_dbn
import numpy as np
import zstandard

from mbostream_core import _engine
from mbostream_core.records import MBO_DTYPE, MBO_LENGTH_WORDS, MBO_RECORD_SIZE, RTYPE_MBO, concat_records
from mbostream_core.errors import (
    CorruptFileError,
    DataFileNotFoundError,
    NotDbnError,
    TruncatedFileError,
    UnreadableFileError,
    WrongSchemaError,
)

DEFAULT_CHUNK_RECORDS: Final = 1 << 16

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: Skippable zstd frames have magic numbers 0x184D2A50..0x184D2A5F (RFC 8878 §3.1.2).
_ZSTD_SKIPPABLE: Final = range(0x184D2A50, 0x184D2A60)
_ZSTD_BLOCK_RESERVED: Final = 3
_ZSTD_BLOCK_RLE: Final = 1
_DBN_MAGIC: Final = b"DBN"
_PREFIX: Final = struct.Struct("<3sBI")



@dataclass(frozen=True)
class FileInfo:
    """What a DBN file's metadata says."""

    path: str
    version: int
    dataset: str
    schema: str
    start: int
    end: int | None
    ts_out: bool
    compressed: bool
    #: instrument_id → symbol, from the file's symbology mappings.
    symbols: dict[int, str] = field(default_factory=dict)


def _symbols_from(metadata: databento_dbn.Metadata) -> dict[int, str]:
    stype_in = str(metadata.stype_in or "")
    stype_out = str(metadata.stype_out or "")
    symbols: dict[int, str] = {}
    for key, intervals in (metadata.mappings or {}).items():
        for interval in sorted(intervals, key=lambda i: str(i["start_date"])):
            value = str(interval["symbol"])
            if stype_out.endswith("instrument_id") and value.isdigit():
                symbols[int(value)] = key
            elif stype_in.endswith("instrument_id") and key.isdigit():
                symbols[int(key)] = value
    return symbols


def _open_raw(path: str) -> BinaryIO:
    """The file opened for reading, or the DataFileError that says why it cannot be."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataFileNotFoundError(path, "no such file") from None
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot read it: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DataFileNotFoundError(path, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise DataFileNotFoundError(path, "is not a regular file")
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot read it: {exc.strerror}") from None


def _open_stream(path: str) -> tuple[BinaryIO, bool]:
    raw = _open_raw(path)
    try:
        head = raw.read(4)
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise UnreadableFileError(path, f"cannot read it: {exc.strerror}") from None
    if head == _ZSTD_MAGIC:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20), True  # type: ignore[arg-type]
    return raw, False


def _read_exactly(stream: BinaryIO, n: int, path: str, what: str) -> bytes:
    try:
        data = stream.read(n)
    except zstandard.ZstdError as exc:
        raise TruncatedFileError(path, f"compressed stream is corrupt or truncated ({exc})") from exc
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot read it: {exc.strerror}") from exc
    if len(data) != n:
        raise TruncatedFileError(path, f"file ends inside the {what} ({len(data)} of {n} bytes)")
    return data


class DbnReader:
    """Reads one DBN MBO file: :attr:`info` on open, then :meth:`chunks` of records.

    Use as a context manager. Raises the :class:`~mbostream.errors.DataFileError` subclasses.
    """

    def __init__(self, path: str | os.PathLike[str], *, require_schema: str | None = "mbo") -> None:
        self.path = os.fspath(path)
        self._stream, compressed = _open_stream(self.path)
        try:
            self.info = self._read_metadata(compressed)
            if require_schema is not None and self.info.schema != require_schema:
                raise WrongSchemaError(self.path, self.info.schema, require_schema)
        except BaseException:
            self._stream.close()
            raise
        self.other_records: dict[int, int] = {}

    def _read_metadata(self, compressed: bool) -> FileInfo:
        try:
            prefix = self._stream.read(_PREFIX.size)
        except zstandard.ZstdError as exc:
            raise NotDbnError(self.path, f"not a DBN file (corrupt zstd stream: {exc})") from exc
        except OSError as exc:
            raise UnreadableFileError(self.path, f"cannot read it: {exc.strerror}") from exc
        if not prefix and compressed:
            raise NotDbnError(self.path, "not a DBN file (the zstd stream yields no data: it is truncated or corrupt)")
        if len(prefix) < _PREFIX.size or prefix[:3] != _DBN_MAGIC:
            if 0 < len(prefix) < _PREFIX.size and prefix[:3] == _DBN_MAGIC[: len(prefix)]:
                raise TruncatedFileError(self.path, "file ends inside the DBN prefix")
            raise NotDbnError(self.path, "not a DBN file (no 'DBN' signature)" if prefix else "not a DBN file (empty)")
        _, version, length = _PREFIX.unpack(prefix)
        if not 1 <= version <= 3:
            raise NotDbnError(self.path, f"unsupported DBN version {version}")
        body = _read_exactly(self._stream, length, self.path, "metadata")
        #: Bytes before the first record (prefix + metadata).
        self.header_size = _PREFIX.size + length
        try:
            metadata = databento_dbn.Metadata.decode(prefix + body)
        except Exception as exc:  # databento_dbn raises its own error types for bad metadata
            raise NotDbnError(self.path, f"invalid DBN metadata ({exc})") from exc
        schema = str(metadata.schema) if metadata.schema is not None else "mixed"
        return FileInfo(
            path=self.path,
            version=version,
            dataset=str(metadata.dataset),
            schema=schema,
            start=int(metadata.start),
            end=None if metadata.end is None else int(metadata.end),
            ts_out=bool(metadata.ts_out),
            compressed=compressed,
            symbols=_symbols_from(metadata),
        )

    def chunks(self, chunk_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[np.ndarray]:
        """Yields arrays of :data:`MBO_DTYPE`, at most ``chunk_records`` each, in file order.

        Non-MBO records (system messages, symbol mappings) are skipped and counted in
        :attr:`other_records`. A file that ends inside a record raises TruncatedFileError after the
        complete records have been yielded.
        """
        stride = MBO_RECORD_SIZE + (8 if self.info.ts_out else 0)
        want = chunk_records * stride
        carry = b""
        #: Offset of ``buf[0]`` in the (decompressed) DBN stream, for error messages.
        offset = self.header_size
        while True:
            try:
                data = self._stream.read(want - len(carry))
            except zstandard.ZstdError as exc:
                raise TruncatedFileError(self.path, f"compressed stream is corrupt or truncated ({exc})") from exc
            except OSError as exc:
                raise UnreadableFileError(self.path, f"cannot read it: {exc.strerror}") from exc
            if not data:
                break
            buf = carry + data if carry else data
            try:
                records, carry = self._records_of(buf, stride)
            except ValueError as exc:  # the native framing walk: a record length that cannot be
                raise CorruptFileError(self.path, _at_file_offset(str(exc), offset)) from None
            offset += len(buf) - len(carry)
            if len(records):
                yield records
        if carry:
            raise TruncatedFileError(self.path, f"file ends inside a record ({len(carry)} trailing bytes)")

    def _records_of(self, buf: bytes, stride: int) -> tuple[np.ndarray, bytes]:
        whole = len(buf) - len(buf) % stride
        if stride == MBO_RECORD_SIZE and whole:
            raw = np.frombuffer(buf, dtype=np.uint8, count=whole)
            if (raw[0::stride] == MBO_LENGTH_WORDS).all() and (raw[1::stride] == RTYPE_MBO).all():
                return np.frombuffer(buf, dtype=MBO_DTYPE, count=whole // stride), buf[whole:]
        compacted, others, consumed = _engine.compact_mbo(buf)
        for rtype, count in others:
            self.other_records[rtype] = self.other_records.get(rtype, 0) + count
        return np.frombuffer(compacted, dtype=MBO_DTYPE), buf[consumed:]

    def read_all(self) -> np.ndarray:
        """Every MBO record of the file in one array (for small files and tests)."""
        parts = list(self.chunks())
        return concat_records(parts) if parts else np.empty(0, dtype=MBO_DTYPE)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> DbnReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _at_file_offset(message: str, offset: int) -> str:
    """The framing walk's message with its buffer-relative ``at byte N`` made a file offset."""
    moved = re.sub(r"at byte (\d+)", lambda m: f"at byte {offset + int(m[1])}", message, count=1)
    return moved if moved != message else f"{message} (in the records from byte {offset})"


def verify_framing(path: str | os.PathLike[str]) -> None:
    """Checks that a whole file can be read, without applying it; raises the DataFileError that a
    replay would meet.

    Plain files: every record header is walked (the decoder's own path, ~1 GB/s), so a file cut
    inside a record or with a broken record length is found. Compressed files: the zstd frame and
    block headers are walked without decompressing (a seek per block), so a file cut short (a
    half download) is found; damage inside a compressed block only shows when it is decompressed.
    """
    with DbnReader(path) as reader:
        if not reader.info.compressed:
            for _ in reader.chunks():
                pass
            return
    _walk_zstd_frames(os.fspath(path))


def _walk_zstd_frames(path: str) -> None:
    """Walks the frame and block headers of a zstd file (RFC 8878); raises on a cut or bad one."""
    with _open_raw(path) as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0

        def read(at: int, n: int, what: str) -> bytes:
            f.seek(at)
            data = f.read(n)
            if len(data) < n:
                raise TruncatedFileError(path, f"compressed stream is truncated (it ends inside a {what} at byte {at})")
            return data

        while pos < size:
            magic = int.from_bytes(read(pos, 4, "frame header"), "little")
            if magic in _ZSTD_SKIPPABLE:
                pos += 8 + int.from_bytes(read(pos + 4, 4, "skippable frame"), "little")
                if pos > size:
                    raise TruncatedFileError(path, "compressed stream is truncated (inside a skippable frame)")
                continue
            if magic != int.from_bytes(_ZSTD_MAGIC, "little"):
                raise CorruptFileError(path, f"compressed stream is corrupt (no zstd frame at byte {pos})")
            descriptor = read(pos + 4, 1, "frame header")[0]
            fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
            checksum, dictionary_flag = (descriptor >> 2) & 1, descriptor & 3
            fcs_size = (single_segment, 2, 4, 8)[fcs_flag]
            pos += 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dictionary_flag] + fcs_size
            while True:
                header = int.from_bytes(read(pos, 3, "block header"), "little")
                last, kind, block_size = header & 1, (header >> 1) & 3, header >> 3
                if kind == _ZSTD_BLOCK_RESERVED:
                    raise CorruptFileError(path, f"compressed stream is corrupt (reserved block type at byte {pos})")
                pos += 3 + (1 if kind == _ZSTD_BLOCK_RLE else block_size)
                if pos > size:
                    raise TruncatedFileError(path, "compressed stream is truncated (it ends inside a block)")
                if last:
                    break
            pos += 4 * checksum
            if pos > size:
                raise TruncatedFileError(path, "compressed stream is truncated (it ends inside a frame checksum)")


def read_records(path: str | os.PathLike[str]) -> tuple[FileInfo, np.ndarray]:
    """Reads a whole MBO file: its metadata and every record."""
    with DbnReader(path) as reader:
        return reader.info, reader.read_all()
