"""Wire room: the gRPC layer's encoders, which the hub calls once per batch variant and per book.

The hub never knows what a payload is; these make them. Event batches become serialized
``StreamEventsResponse`` messages (native encoder, stamped with the run's epoch); books become the
two shared halves of ``StreamBookResponse`` (see :func:`~mbostream.server.convert.book_update_payload`).
Each payload is made once and the same bytes go to every subscriber that wants it.
"""

from __future__ import annotations

import time
from typing import Final

import numpy as np

from mbostream_core import _engine
from mbostream.feed import Batch
from mbostream.hub import BookPayload, Selection
from mbostream_core.market import BookKey, Market


class ProtobufEventEncoder:
    """Serialized ``StreamEventsResponse`` messages ``(last replay position, bytes)``.

    Parameters
    ----------
    epoch
        The server run's identity, stamped on every message.
    """

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch

    def encode(self, batch: Batch, selection: Selection, max_records: int) -> list[tuple[int, object]]:
        """The batch's records that ``selection`` wants, in messages of at most ``max_records``
        (0: one message); a snapshot batch's records all carry its position."""
        records = batch.records
        seqs = np.arange(batch.first_replay_seq, batch.first_replay_seq + len(records), dtype=np.uint64)
        if batch.snapshot:
            seqs[:] = batch.first_replay_seq
        mask = selection.mask(records)
        if mask is not None:
            records, seqs = records[mask], seqs[mask]
        if not len(records):
            return []
        step = max_records if max_records > 0 else len(records)
        out: list[tuple[int, object]] = []
        for start in range(0, len(records), step):
            part, part_seqs = np.ascontiguousarray(records[start : start + step]), seqs[start : start + step]
            last = int(part_seqs[-1])
            payload = _engine.encode_event_batch(
                part.view(np.uint8),
                np.ascontiguousarray(part_seqs).view(np.uint8),
                batch_sequence=last,
                snapshot=batch.snapshot,
                ts_out=batch.ts_out,
                epoch=self.epoch,
            )
            out.append((last, payload))
        return out


#: ``StreamBookResponse.ts_out``'s key (field 3, varint).
_TS_OUT_KEY: Final = bytes([3 << 3])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class ProtobufBookEncoder:
    """A book as the shared parts of ``StreamBookResponse``, stamped with the time it was taken.

    Encoded natively, straight from the engine (``mbostream_wire::book``: 4.8 µs a book through this
    encoder where the Python view and message took 106, docs/performance.md); the same message the Python path
    (:func:`~mbostream.server.convert.book_update_payload`, kept for reference and tests) makes.
    """

    def encode(self, market: Market, key: BookKey, depth: int, orders: bool, position: int) -> BookPayload:
        """The book now, cut to ``depth``, at replay ``position``."""
        ts_out = time.time_ns()
        single, multi = market.engine.book_payload(
            key.instrument_id,
            key.publisher_id,
            depth=depth,
            orders=orders,
            symbol=market.symbol(key.instrument_id),
            replay_sequence=position,
            ts_out=ts_out,
        )
        return BookPayload(single, multi, ts_out)

    def restamp(self, book: BookPayload, ts_out: int) -> BookPayload:
        """``book`` with ts_out (field 3) set to ``ts_out``: the field appended to the message as
        taken (a parser keeps a scalar's last occurrence; a previous restamp's is replaced)."""
        taken = book.single[: len(book.single) - book.stamp] if book.stamp else book.single
        stamp = _TS_OUT_KEY + _varint(ts_out)
        return BookPayload(taken + stamp, book.multi, ts_out, len(stamp))
