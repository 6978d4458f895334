"""InfluxDB WAL room: cut a torn last entry off InfluxDB's write-ahead log before ``influxd`` starts.

Why this exists: InfluxDB's TSM engine loses *acknowledged* writes after two unclean stops in a
row. Read in ``tsdb/engine/tsm1`` of InfluxDB 1.8.10 and of 2.7.12 (the same code in both):

1. A ``kill -9`` (or OOM kill, or power loss) in the middle of a WAL write leaves a torn last
   entry in the shard's last segment (``_NNNNN.wal``): the type byte, part of the length, or part
   of the compressed block.
2. At the next start, ``WAL.Open`` opens that last segment for writing and seeks to its end, the
   torn bytes included; only afterwards does the cache loader (``reloadCache``) read the segment,
   stop at the torn entry ("File corrupt" in the log) and truncate the file there. The writer's
   file offset still points past the old end, so every entry written from then on lands behind a
   hole of zeros.
3. At the start after that, the loader reads up to the hole, calls it corrupt and truncates it
   again: every point written since the previous start that was not yet snapshotted into a TSM
   file is gone, although each write was answered 204.

The fault test (``tests/test_faults.py``) lost 20,628 stored MBO records this way in one CI run
(positions published over 47 s of a run with nine ``kill -9`` of ``influxd``). The fix belongs in
InfluxDB (truncate before opening for writing); until then, run this before every ``influxd``
start: it walks each segment's entries (1 type byte, a 4-byte big-endian length, the block) and
truncates a segment at its first entry that is not whole, which is exactly where the engine's own
loader would cut it, but before the writer opens it. A clean WAL is not touched.

What it cannot see: an entry whose length is whole but whose bytes are damaged (a disk fault, not
a kill). The engine's loader still catches that one, with the loss described above.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The entry types of ``tsm1`` WAL segments: write, delete, delete range.
ENTRY_TYPES: Final = frozenset({1, 2, 3})
#: Type byte + big-endian uint32 length.
HEADER_BYTES: Final = 5


@dataclass(frozen=True, slots=True)
class Repair:
    """One segment cut back to its whole entries."""

    path: Path
    size: int
    kept: int
    entries: int

    def describe(self) -> str:
        return f"{self.path}: kept {self.entries} whole entries ({self.kept} bytes), cut {self.size - self.kept} torn bytes"


def whole_prefix(path: Path) -> tuple[int, int]:
    """(bytes, entries) of the segment's leading whole entries: where a torn one would be cut."""
    size = path.stat().st_size
    offset = entries = 0
    with path.open("rb") as f:
        while offset + HEADER_BYTES <= size:
            f.seek(offset)
            header = f.read(HEADER_BYTES)
            kind, length = header[0], struct.unpack(">I", header[1:])[0]
            if kind not in ENTRY_TYPES or length == 0 or offset + HEADER_BYTES + length > size:
                break
            offset += HEADER_BYTES + length
            entries += 1
    return offset, entries


def repair_wal(wal_dir: Path) -> list[Repair]:
    """Truncates every ``*.wal`` segment under ``wal_dir`` to its whole entries; returns the cuts.

    Run it while ``influxd`` is stopped (it is the writer's file being cut). A directory that does
    not exist yet (a first start) has nothing to repair.
    """
    repairs: list[Repair] = []
    if not wal_dir.is_dir():
        return repairs
    for path in sorted(wal_dir.rglob("_*.wal")):
        size = path.stat().st_size
        kept, entries = whole_prefix(path)
        if kept == size:
            continue
        with path.open("r+b") as f:
            f.truncate(kept)
            f.flush()
            os.fsync(f.fileno())
        repairs.append(Repair(path, size, kept, entries))
    return repairs
