"""Feed room: what the replay publishes (:class:`Batch`), and to what (:class:`Publisher`).

A :class:`Batch` is one step of the replay: the records applied together, the F_LAST event rows
they produced (with each book's BBO at that moment), and the replay positions they occupy. It is
immutable and shared by every subscriber; nobody copies or mutates it.

The replay owns the replay positions and hands each batch to a :class:`Publisher` (the fan-out hub
today, a message bus next); it knows nothing of who consumes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Batch:
    """Records applied in one replay step, in replay order.

    Attributes
    ----------
    first_replay_seq
        Replay position of ``records[0]``. Positions start at 1 and increase by one per record for
        the life of the server (across loops and restarts), so they are resume points.
    records
        The MBO records (:data:`mbostream_core.records.MBO_DTYPE`), read-only.
    events
        One :data:`mbostream_core.records.EVENT_DTYPE` row per F_LAST among ``records`` (``index`` is
        relative to ``records``), carrying the book's BBO right after that record.
    ts_out
        Publication time, ns since the UNIX epoch.
    snapshot
        True when the records are a synthetic book snapshot (``R`` + ``A``… F_SNAPSHOT) rather
        than replayed feed records.
    books
        The books with a row in ``events``, each once, as ``instrument_id << 16 | publisher_id``
        (:attr:`mbostream_core.market.ApplyResult.books`); None when not given, and the hub finds
        them in ``events`` itself.
    """

    first_replay_seq: int
    records: np.ndarray
    events: np.ndarray
    ts_out: int
    snapshot: bool = False
    books: Sequence[int] | None = None

    @property
    def last_replay_seq(self) -> int:
        """Replay position of the last record (``first_replay_seq - 1`` for an empty batch)."""
        return self.first_replay_seq + len(self.records) - 1

    def __len__(self) -> int:
        return len(self.records)


class Publisher(Protocol):
    """Where the replay hands its batches; implemented by the hub."""

    def publish(self, batch: Batch) -> None:
        """Takes one applied batch; returns at once."""

    def backlogged(self) -> bool:
        """True while a consumer that must not lose anything (the storage) is behind."""

    async def wait_ready(self) -> None:
        """Returns once the publisher is no longer backlogged (backpressure for a fast replay)."""
