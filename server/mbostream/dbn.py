"""Decoding room: DBN files (v1–v3, plain or zstd) to metadata and chunks of MBO records.

Records stay in their wire layout: each chunk is a numpy structured array over the file's bytes
(:data:`MBO_DTYPE`), so the hot path never creates a Python object per record. Metadata and
symbology come from ``databento-dbn``.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import databento_dbn
import numpy as np
import zstandard

from mbostream import _engine
from mbostream.errors import (
    DataFileNotFoundError,
    NotDbnError,
    TruncatedFileError,
    WrongSchemaError,
)

#: numpy layout of one DBN MBO record (56 bytes; identical in DBN v1, v2 and v3).
MBO_DTYPE: Final = np.dtype(databento_dbn.MBOMsg._dtypes)
MBO_RECORD_SIZE: Final = MBO_DTYPE.itemsize
RTYPE_MBO: Final = 0xA0
MBO_LENGTH_WORDS: Final = MBO_RECORD_SIZE // 4
DEFAULT_CHUNK_RECORDS: Final = 1 << 16

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_DBN_MAGIC: Final = b"DBN"
_PREFIX: Final = struct.Struct("<3sBI")

assert MBO_RECORD_SIZE == _engine.MBO_RECORD_SIZE


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


def _open_stream(path: str) -> tuple[BinaryIO, bool]:
    if not os.path.isfile(path):
        raise DataFileNotFoundError(path, "no such file")
    raw = open(path, "rb")  # noqa: SIM115 - closed by DbnReader
    head = raw.read(4)
    raw.seek(0)
    if head == _ZSTD_MAGIC:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20), True  # type: ignore[arg-type]
    return raw, False


def _read_exactly(stream: BinaryIO, n: int, path: str, what: str) -> bytes:
    try:
        data = stream.read(n)
    except zstandard.ZstdError as exc:
        raise TruncatedFileError(path, f"compressed stream is corrupt or truncated ({exc})") from exc
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
        while True:
            try:
                data = self._stream.read(want - len(carry))
            except zstandard.ZstdError as exc:
                raise TruncatedFileError(self.path, f"compressed stream is corrupt or truncated ({exc})") from exc
            if not data:
                break
            buf = carry + data if carry else data
            records, carry = self._records_of(buf, stride)
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
        return np.concatenate(parts) if parts else np.empty(0, dtype=MBO_DTYPE)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> DbnReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str]) -> tuple[FileInfo, np.ndarray]:
    """Reads a whole MBO file: its metadata and every record."""
    with DbnReader(path) as reader:
        return reader.info, reader.read_all()
