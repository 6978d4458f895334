"""Replica room: a local copy of the server's L3 books, kept from StreamEvents with the engine.

The replica subscribes with ``with_snapshot`` (per book an ``R`` then one ``A`` per resting order),
applies every live batch with :class:`mbostream.market.Market`, and remembers the replay position
of the last record it applied. When the stream breaks it reconnects with exponential backoff and
full jitter and resumes with ``start_after_sequence`` = that position, so nothing is applied twice
or skipped. When the server no longer buffers that position (OUT_OF_RANGE, e.g. after a server
restart) the replica is cleared and rebuilt from a fresh snapshot. A gap in ``replay_sequence`` on
an unfiltered stream is handled the same way: the replica never guesses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mbostream.market import BookKey, BookView, Market

from mbostream_client._backoff import Backoff
from mbostream_client._decode import EventBatch
from mbostream_client._exceptions import (
    InstrumentNotFoundError,
    InvalidRequestError,
    ReplicaGapError,
    ResumeOutOfRangeError,
    RpcError,
    SlowConsumerError,
)
from mbostream_client._market_data import Instrument, MarketDataClient

log = logging.getLogger(__name__)


@dataclass
class ReplicaStats:
    """What the replica went through since it started."""

    #: Streams opened (the first connection included).
    connections: int = 0
    #: Streams opened with ``with_snapshot`` (the first, and every rebuild).
    snapshots: int = 0
    #: Streams opened with ``start_after_sequence``.
    resumes: int = 0
    #: Times the replica was cleared because its resume point was gone (OUT_OF_RANGE or a gap).
    rebuilds: int = 0
    #: Times the server cut this reader off as too slow.
    slow_consumer_cutoffs: int = 0
    #: Live records applied.
    records_applied: int = 0


class BookReplica:
    """A local L3 replica of the server's books, kept current from ``StreamEvents``.

    Run :meth:`run` as a task; read books with :meth:`view` between awaits (the engine is
    synchronous and batches end at F_LAST boundaries, so a view is always a consistent book).

    Parameters
    ----------
    client
        The client whose channel the replica streams over.
    instruments
        Instruments to replicate; empty replicates every book (and enables gap detection, which
        needs the unfiltered, contiguous ``replay_sequence``).
    backoff
        Reconnection delays; reset after each connection that delivered data.
    """

    def __init__(
        self,
        client: MarketDataClient,
        instruments: Sequence[Instrument] = (),
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.instruments = tuple(instruments)
        self.backoff = backoff or Backoff()
        self.market = Market()
        self.stats = ReplicaStats()
        #: Replay position of the last record applied; None until the first snapshot arrived.
        self.last_sequence: int | None = None
        self._changed = asyncio.Condition()
        self._stopping = False

    # -- reading ----------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """True once a snapshot was applied (and not cleared since)."""
        return self.last_sequence is not None

    def books(self) -> list[BookKey]:
        """Every book the replica holds."""
        books: list[BookKey] = self.market.books()
        return books

    def view(self, instrument: Instrument, *, depth: int = 0, orders: bool = False, publisher_id: int = 0) -> BookView:
        """One book as the replica holds it (raises ``UnknownInstrumentError`` when absent)."""
        return self.market.view(self.market.resolve(instrument, publisher_id), depth=depth, orders=orders)

    async def wait_for_sequence(self, sequence: int, timeout: float) -> None:
        """Waits until the replica applied every record up to replay position ``sequence``.

        Raises
        ------
        TimeoutError
            When it has not within ``timeout`` seconds.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.last_sequence is not None and self.last_sequence >= sequence),
                    timeout,
                )
            except TimeoutError:
                raise TimeoutError(
                    f"replica at replay_sequence {self.last_sequence}, not {sequence}, after {timeout} s"
                ) from None

    # -- running ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Makes :meth:`run` return after the batch in hand (cancelling its task works too)."""
        self._stopping = True

    async def run(self) -> None:
        """Keeps the replica current until :meth:`stop` or cancellation.

        Raises
        ------
        InvalidRequestError, InstrumentNotFoundError
            The selection itself is wrong: retrying cannot help.
        """
        while not self._stopping:
            try:
                await self._follow()
            except (InvalidRequestError, InstrumentNotFoundError):
                raise
            except ResumeOutOfRangeError as exc:
                log.warning("resume point gone; rebuilding from a snapshot", extra={"details": exc.details})
                self._clear()
                continue
            except ReplicaGapError as exc:
                # Never seen from a sound server; back off in case it keeps happening.
                log.error("replay_sequence gap; rebuilding from a snapshot", extra={"gap": str(exc)})
                self._clear()
            except SlowConsumerError:
                self.stats.slow_consumer_cutoffs += 1
                log.warning("cut off as a slow reader; resuming", extra={"resume_after": self.last_sequence})
            except RpcError as exc:
                log.info("stream ended: %s; reconnecting", exc.code.name, extra={"details": exc.details})
            if self._stopping:
                break
            delay = self.backoff.next_delay()
            log.debug("reconnecting", extra={"delay_s": round(delay, 3), "attempt": self.backoff.attempt})
            await asyncio.sleep(delay)

    async def _follow(self) -> None:
        """One stream: snapshot or resume, then live batches until the stream ends."""
        self.stats.connections += 1
        if self.last_sequence is None:
            self.stats.snapshots += 1
            stream = self.client.stream_events(self.instruments, with_snapshot=True)
        else:
            self.stats.resumes += 1
            stream = self.client.stream_events(self.instruments, start_after_sequence=self.last_sequence)
        in_snapshot = False
        try:
            async for batch in stream:
                if batch.snapshot and not in_snapshot:
                    # A fresh snapshot replaces everything: books absent from it are gone.
                    self.market = Market(self.market.symbols)
                in_snapshot = batch.snapshot
                known = len(self.market.books())
                self._apply(batch)
                self.backoff.reset()
                if len(self.market.books()) > known:
                    await self._learn_symbols()
                async with self._changed:
                    self._changed.notify_all()
                if self._stopping:
                    return
        finally:
            await stream.aclose()

    def _apply(self, batch: EventBatch) -> None:
        if not len(batch):
            return
        if not batch.snapshot:
            self._check_contiguous(batch.replay_sequence)
            self.stats.records_applied += len(batch)
        self.market.apply(batch.records, complete_events=False)
        self.last_sequence = int(batch.replay_sequence[-1])

    def _check_contiguous(self, sequences: np.ndarray) -> None:
        """Live positions of an unfiltered stream must follow on from the last applied one."""
        if self.instruments or self.last_sequence is None:
            return
        expected = self.last_sequence + 1
        if int(sequences[0]) != expected:
            raise ReplicaGapError(expected, int(sequences[0]))
        if len(sequences) > 1 and int(sequences[-1]) - int(sequences[0]) != len(sequences) - 1:
            steps = np.flatnonzero(np.diff(sequences) != 1)
            raise ReplicaGapError(int(sequences[steps[0]]) + 1, int(sequences[steps[0] + 1]))

    async def _learn_symbols(self) -> None:
        """Instrument id → symbol from ListInstruments, so :meth:`view` accepts symbols."""
        infos = await self.client.list_instruments()
        self.market.symbols.update({i.instrument_id: i.symbol for i in infos if i.symbol})

    def _clear(self) -> None:
        self.stats.rebuilds += 1
        self.last_sequence = None
        self.market = Market(self.market.symbols)
