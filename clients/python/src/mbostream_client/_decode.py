"""Wire room: ``StreamEventsResponse`` column batches to numpy MBO record arrays, vectorized.

Measured on a 4,096-record batch (``mbostream-client`` README, "Decoding"): the upb repeated
containers implement ``__array__``, so ``np.asarray(column, dtype)`` copies a packed column in C
(9 columns: ~47 µs), while ``np.fromiter`` walks Python ints (~1,080 µs) and ``np.array(list(col))``
is slower still (~1,210 µs). The bytes columns are wrapped with ``np.frombuffer`` (no copy).
Parsing the message itself (~170 µs) dominates; the whole decode runs at ~18 M records/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from mbostream_core.records import MBO_DTYPE, MBO_LENGTH_WORDS, RTYPE_MBO
from mbostream_core.v1 import market_data_pb2


_U64_COLUMNS: Final = ("ts_event", "ts_recv", "order_id")
_U32_COLUMNS: Final = ("size", "sequence", "instrument_id", "publisher_id")
_BYTE_COLUMNS: Final = ("action", "side", "flags")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One decoded ``StreamEventsResponse``.

    Attributes
    ----------
    records
        The records as an :data:`mbostream_core.records.MBO_DTYPE` array (``length`` 14, ``rtype`` 0xA0,
        ``channel_id`` and ``ts_in_delta`` 0: the wire does not carry them).
    replay_sequence
        The server replay position of each record (``uint64``); in a snapshot batch every entry is
        the position the live stream continues after.
    batch_sequence
        Replay position of the last record: the resume point after this batch.
    snapshot
        True for the book-snapshot batches sent first on a ``with_snapshot`` stream.
    ts_out
        Server publication time, ns since the UNIX epoch.
    epoch
        The server run the replay positions belong to ("" from servers that predate epochs).
    """

    records: np.ndarray
    replay_sequence: np.ndarray
    batch_sequence: int
    snapshot: bool
    ts_out: int
    epoch: str = ""

    def __len__(self) -> int:
        return len(self.records)


def decode_events(message: market_data_pb2.StreamEventsResponse) -> EventBatch:
    """Decodes one parsed batch into an :class:`EventBatch`.

    Raises
    ------
    ValueError
        When the columns do not all have the same length (a malformed batch).
    """
    n = len(message.replay_sequence)
    records = np.zeros(n, dtype=MBO_DTYPE)
    records["length"] = MBO_LENGTH_WORDS
    records["rtype"] = RTYPE_MBO
    for name in _U64_COLUMNS:
        records[name] = _column(message, name, np.uint64, n)
    records["price"] = _column(message, "price", np.int64, n)
    for name in _U32_COLUMNS:
        records[name] = _column(message, name, np.uint32, n)
    for name in _BYTE_COLUMNS:
        raw = getattr(message, name)
        if len(raw) != n:
            raise ValueError(f"column {name} has {len(raw)} entries, expected {n}")
        # The dtype's action/side fields are 1-byte strings (S1); flags is uint8: same bytes either way.
        records[name] = np.frombuffer(raw, dtype=records.dtype.fields[name][0])
    return EventBatch(
        records=records,
        replay_sequence=np.asarray(message.replay_sequence, dtype=np.uint64),
        batch_sequence=message.batch_sequence,
        snapshot=message.snapshot,
        ts_out=message.ts_out,
        epoch=message.epoch,
    )


def _column(message: market_data_pb2.StreamEventsResponse, name: str, dtype: type, n: int) -> np.ndarray:
    values: np.ndarray = np.asarray(getattr(message, name), dtype=dtype)
    if len(values) != n:
        raise ValueError(f"column {name} has {len(values)} entries, expected {n}")
    return values
