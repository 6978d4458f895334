"""Spool room: a durable, append-only queue of line protocol blocks on disk, with a checkpoint.

Layout of the spool directory::

    spool.lock                          flock'ed by the one process using the spool
    segment-000000000007-<ms>.lp.gz     whole blocks (gzip members of line protocol, see
    segment-000000000008-<ms>.lp.gz     :mod:`~mbostream.storage.blocks`), appended and fsync'ed
                                        (<ms>: creation time, UNIX milliseconds)
    checkpoint.json                     {"segment": 7, "offset": 1048576}: all before is in the database
    rejected.lp                         points the database refused as bad data, each after a
                                        ``#`` comment with the reason (plain text, importable once fixed)

A segment is a multi-member gzip file of line protocol, stored as it will be sent: it can also be
imported by hand (``influx write --file segment-….lp.gz``, the CLI inflates ``.gz`` files; or
``zcat segment-….lp.gz | influx write``). Checkpoint offsets are byte offsets in the compressed
segment, always at a block boundary, and :meth:`Spool.read` returns whole blocks only.

Appends reach the page cache at once (a crash of the process loses nothing appended) and are
fsync'ed as a group commit: at most ``sync_interval`` seconds apart, when a segment is full, on
:meth:`Spool.sync` and on close; so an fsync costs the feed nothing and a machine crash loses at
most that interval. The checkpoint moves only after the database acknowledged everything before
it, and is replaced atomically (write, fsync, rename); at worst a restart re-sends points the
database already has, which rewrites identical points (see the schema's timestamp rule).

On open, each segment's block headers are walked from its start and a torn tail (a crash in the
middle of an append) is cut after the last whole, valid block (the last block is also inflated
and its CRC checked); segments wholly before the checkpoint are deleted. A fully drained spool
keeps no segment.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mbostream.storage import blocks
from mbostream.storage.errors import BlockError, SpoolError, SpoolLockedError

log = logging.getLogger(__name__)

LOCK_NAME: Final = "spool.lock"
CHECKPOINT_NAME: Final = "checkpoint.json"
REJECTED_NAME: Final = "rejected.lp"
SEGMENT_SUFFIX: Final = ".lp.gz"
_SEGMENT_RE: Final = re.compile(r"^segment-(\d{12})-(\d+)\.lp\.gz$")
DEFAULT_SYNC_INTERVAL_SECONDS: Final = 1.0


@dataclass(frozen=True, order=True, slots=True)
class SpoolPosition:
    """A byte position in the spool: ``offset`` bytes into segment ``segment``."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolRead:
    """Whole blocks read from the spool, ``start`` (inclusive) to ``end`` (exclusive)."""

    data: bytes
    #: Lines (points) in those blocks, from their headers.
    lines: int
    start: SpoolPosition
    end: SpoolPosition


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int
    created_ms: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _segment_path(directory: Path, segment_id: int, created_ms: int) -> Path:
    return directory / f"segment-{segment_id:012d}-{created_ms}{SEGMENT_SUFFIX}"


class Spool:
    """The on-disk spool of one storage sink (or of ``mbostream storage drain``).

    Parameters
    ----------
    directory
        Where the spool lives; created if missing.
    segment_bytes
        Size after which appends go to a new segment file.
    sync_interval
        Longest time appended data waits for its fsync (0: fsync every append).

    All methods are thread-safe. Use :meth:`open` before anything else and :meth:`close` at the end.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20, sync_interval: float = DEFAULT_SYNC_INTERVAL_SECONDS) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.sync_interval = sync_interval
        self._unsynced = False
        self._last_sync = 0.0
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._checkpoint = SpoolPosition(1, 0)
        self._append_fd: int | None = None
        self._read_fds: dict[int, int] = {}

    # -- life cycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Locks the directory and recovers its state.

        Raises
        ------
        SpoolLockedError
            Another process uses this spool.
        SpoolError
            The directory cannot be created, read or written.
        """
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SpoolError(str(self.directory), f"cannot use the directory: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SpoolLockedError(str(self.directory), f"in use by another process (pid {holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            try:
                self._recover()
            except OSError as exc:
                self.close()
                raise SpoolError(str(self.directory), f"cannot recover: {exc}") from exc

    def close(self) -> None:
        """Closes every file and releases the lock (idempotent)."""
        with self._lock:
            if self._append_fd is not None:
                self._sync_locked()
                os.close(self._append_fd)
                self._append_fd = None
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def _require_open(self) -> None:
        if self._lock_fd is None:
            raise SpoolError(str(self.directory), "the spool is closed")

    def _recover(self) -> None:
        found: dict[int, _Segment] = {}
        for entry in self.directory.iterdir():
            match = _SEGMENT_RE.match(entry.name)
            if match:
                found[int(match[1])] = _Segment(int(match[1]), entry, entry.stat().st_size, int(match[2]))
        ids = sorted(found)
        checkpoint = self._read_checkpoint(ids[0] if ids else 1)
        kept: list[_Segment] = []
        head_ends: list[int] = []
        for segment_id in ids:
            segment = found[segment_id]
            if segment_id < checkpoint.segment:
                segment.path.unlink()
                continue
            ends = self._cut_after_last_block(segment)
            segment.size = ends[-1] if ends else 0
            if segment.size == 0:
                segment.path.unlink()
                continue
            if segment_id == checkpoint.segment:
                head_ends = ends
            kept.append(segment)
        self._segments = kept
        self._checkpoint = checkpoint
        head = self._segment(checkpoint.segment)
        if head is None:
            # The checkpoint's segment was drained and deleted: go on with the next one.
            later = [s.id for s in kept if s.id > checkpoint.segment]
            next_id = later[0] if later else checkpoint.segment + (1 if checkpoint.offset else 0)
            self._checkpoint = SpoolPosition(next_id, 0)
        elif checkpoint.offset > head.size:
            log.warning("spool checkpoint is past the end of its segment; re-sending that segment", extra={"segment": head.id})
            self._checkpoint = SpoolPosition(head.id, 0)
        elif checkpoint.offset and checkpoint.offset not in head_ends:
            log.warning("spool checkpoint is not at a block boundary; re-sending that segment", extra={"segment": head.id})
            self._checkpoint = SpoolPosition(head.id, 0)
        _fsync_dir(self.directory)
        if self.pending_bytes():
            log.info(
                "spool holds data from an earlier run",
                extra={"spool_dir": str(self.directory), "pending_bytes": self.pending_bytes(), "segments": len(kept)},
            )

    def _read_checkpoint(self, first_segment: int) -> SpoolPosition:
        path = self.directory / CHECKPOINT_NAME
        first = SpoolPosition(first_segment, 0)
        try:
            raw = json.loads(path.read_text())
            return SpoolPosition(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return first
        except (ValueError, KeyError, TypeError) as exc:
            # Re-sending from the start is safe: the same points overwrite themselves.
            log.warning("spool checkpoint is unreadable (%s); re-sending every segment", exc, extra={"path": str(path)})
            return first

    @staticmethod
    def _cut_after_last_block(segment: _Segment) -> list[int]:
        """Truncates a segment after its last whole, valid block; returns where each block ends.

        The headers are walked from the start: a block is kept when its header is one, it fits in
        the file, and its trailer's ISIZE matches its RSIZE. The last one kept is also inflated and
        its CRC checked (the unsynced end of a segment is where a machine crash leaves garbage).
        """
        ends: list[int] = []
        with open(segment.path, "r+b") as f:
            fd = f.fileno()
            offset = 0
            while True:
                header = blocks.parse_header(os.pread(fd, blocks.HEADER_SIZE, offset))
                if header is None or offset + header.size > segment.size:
                    break
                isize = int.from_bytes(os.pread(fd, 4, offset + header.size - 4), "little")
                if isize != header.raw_size:
                    break
                offset += header.size
                ends.append(offset)
            while ends:
                start = ends[-2] if len(ends) > 1 else 0
                try:
                    blocks.decode(os.pread(fd, ends[-1] - start, start))
                    break
                except BlockError:
                    ends.pop()
            keep = ends[-1] if ends else 0
            if keep != segment.size:
                log.warning("spool segment had a torn tail; cut it", extra={"segment": segment.id, "cut_bytes": segment.size - keep})
                f.truncate(keep)
                os.fsync(fd)
        return ends

    # -- state ------------------------------------------------------------------------------------
    def _segment(self, segment_id: int) -> _Segment | None:
        for segment in self._segments:
            if segment.id == segment_id:
                return segment
        return None

    def _next_id(self) -> int:
        ids = [s.id for s in self._segments] + [self._checkpoint.segment - 1]
        return max(ids) + 1

    @property
    def checkpoint(self) -> SpoolPosition:
        """Everything before this position has been acknowledged by the database."""
        with self._lock:
            return self._checkpoint

    def pending_bytes(self) -> int:
        """Bytes appended but not yet acknowledged."""
        with self._lock:
            total = 0
            for segment in self._segments:
                if segment.id > self._checkpoint.segment:
                    total += segment.size
                elif segment.id == self._checkpoint.segment:
                    total += segment.size - self._checkpoint.offset
            return total

    def oldest_age(self) -> float:
        """Seconds since the segment holding the oldest pending data was created (0 when empty)."""
        with self._lock:
            if not self.pending_bytes():
                return 0.0
            head = next(s for s in self._segments if s.id >= self._checkpoint.segment)
            return max(0.0, time.time() - head.created_ms / 1000)

    # -- writing ----------------------------------------------------------------------------------
    def append(self, payloads: Sequence[bytes]) -> int:
        """Appends blocks, each payload one whole block; returns the bytes.

        Raises
        ------
        ValueError
            A payload is not one whole block (no block header, or a size other than its own);
            nothing is appended then.
        SpoolError
            The spool is closed or the disk refused the write.
        """
        for payload in payloads:
            header = blocks.parse_header(payload)
            if header is None or header.size != len(payload):
                raise ValueError("spool payloads must be whole blocks, one block each")
        total = sum(len(p) for p in payloads)
        if not total:
            return 0
        with self._lock:
            self._require_open()
            try:
                active = self._segments[-1] if self._segments and self._append_fd is not None else None
                if active is None or (active.size and active.size + total > self.segment_bytes):
                    active = self._start_segment()
                assert self._append_fd is not None
                for payload in payloads:
                    _write_all(self._append_fd, payload)
                active.size += total
                self._unsynced = True
                if time.monotonic() - self._last_sync >= self.sync_interval:
                    self._sync_locked()
            except OSError as exc:
                raise SpoolError(str(self.directory), f"append failed: {exc.strerror}") from exc
            return total

    def sync(self, *, only_if_due: bool = False) -> None:
        """fsyncs what was appended (with ``only_if_due``: only when ``sync_interval`` has passed)."""
        with self._lock:
            if self._unsynced and (not only_if_due or time.monotonic() - self._last_sync >= self.sync_interval):
                try:
                    self._sync_locked()
                except OSError as exc:
                    raise SpoolError(str(self.directory), f"fsync failed: {exc.strerror}") from exc

    def _sync_locked(self) -> None:
        if self._unsynced and self._append_fd is not None:
            os.fdatasync(self._append_fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _start_segment(self) -> _Segment:
        if self._append_fd is not None:
            self._sync_locked()
            os.close(self._append_fd)
            self._append_fd = None
        segment_id = self._next_id()
        created_ms = time.time_ns() // 1_000_000
        path = _segment_path(self.directory, segment_id, created_ms)
        self._append_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        _fsync_dir(self.directory)
        segment = _Segment(segment_id, path, 0, created_ms)
        self._segments.append(segment)
        return segment

    def reject(self, line: bytes, reason: str) -> Path:
        """Sets a refused point aside in ``rejected.lp``, after a comment with the reason."""
        path = self.directory / REJECTED_NAME
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        comment = f"# {stamp} {' '.join(reason.split())}\n".encode()
        with self._lock, open(path, "ab") as f:
            f.write(comment + line.rstrip(b"\n") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return path

    # -- reading ----------------------------------------------------------------------------------
    def read(self, start: SpoolPosition, max_bytes: int) -> SpoolRead | None:
        """Reads whole blocks from ``start``: up to ``max_bytes`` (more only for one larger block).

        Returns None when nothing is pending at or after ``start``.

        Raises
        ------
        SpoolError
            The bytes at ``start`` are not whole blocks (the segment changed on disk since it was
            opened, or ``start`` is not a block boundary).
        """
        with self._lock:
            self._require_open()
            for segment in self._segments:
                if segment.id < start.segment:
                    continue
                offset = start.offset if segment.id == start.segment else 0
                if offset >= segment.size:
                    continue
                try:
                    data, lines = self._read_blocks(segment, offset, max_bytes)
                except BlockError as exc:
                    raise SpoolError(str(segment.path), f"byte {offset + exc.offset}: {exc.reason}") from None
                return SpoolRead(
                    data=data,
                    lines=lines,
                    start=SpoolPosition(segment.id, offset),
                    end=SpoolPosition(segment.id, offset + len(data)),
                )
            return None

    def _read_blocks(self, segment: _Segment, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """The whole blocks from ``offset`` that fit in ``max_bytes`` (at least one), and their lines."""
        fd = self._read_fds.get(segment.id)
        if fd is None:
            fd = self._read_fds[segment.id] = os.open(segment.path, os.O_RDONLY)
        data = os.pread(fd, min(max(max_bytes, blocks.HEADER_SIZE), segment.size - offset), offset)
        end = lines = 0
        for block_offset, header in blocks.iter_blocks(data):
            end = block_offset + header.size
            lines += header.lines
        if end:
            return (data if end == len(data) else data[:end]), lines
        # The first block alone is larger than max_bytes: read the rest of it.
        first = blocks.parse_header(data)
        if first is None or first.size > segment.size - offset:
            raise BlockError(0, "no whole block here")
        return data + os.pread(fd, first.size - len(data), offset + len(data)), first.lines

    def ack(self, end: SpoolPosition) -> None:
        """Moves the checkpoint to ``end`` (all before it is in the database); deletes drained segments."""
        with self._lock:
            self._require_open()
            if end <= self._checkpoint:
                return
            drained = [s for s in self._segments if s.id < end.segment]
            current = self._segment(end.segment)
            if current is not None and end.offset >= current.size:
                drained.append(current)
                end = SpoolPosition(end.segment + 1, 0)
            try:
                self._write_checkpoint(end)
                for segment in drained:
                    fd = self._read_fds.pop(segment.id, None)
                    if fd is not None:
                        os.close(fd)
                    if segment is self._segments[-1] and self._append_fd is not None:
                        os.close(self._append_fd)
                        self._append_fd = None
                        self._unsynced = False
                    segment.path.unlink()
                    self._segments.remove(segment)
                if drained:
                    _fsync_dir(self.directory)
            except OSError as exc:
                raise SpoolError(str(self.directory), f"checkpoint failed: {exc.strerror}") from exc

    def _write_checkpoint(self, position: SpoolPosition) -> None:
        path = self.directory / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"segment": position.segment, "offset": position.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self._checkpoint = position
