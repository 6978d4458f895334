"""Replica room: a local copy of the server's L3 books, kept from StreamEvents with the engine.

The replica follows the feed with :class:`~mbostream_client._follow.EventFollower`: it starts from
a snapshot (per book an ``R`` then one ``A`` per resting order), applies every live batch with
:class:`mbostream.market.Market`, and on a broken stream resumes after the last record it applied,
in the same server run (epoch). When resuming is impossible (the position is no longer buffered, the
server restarted and runs another epoch, or a gap) the follower starts over from a snapshot and the
replica replaces every book with it: it never guesses and never mixes two runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from mbostream_core.market import BookKey, BookView, Market

from mbostream_client._backoff import Backoff
from mbostream_client._decode import EventBatch
from mbostream_client._exceptions import DeadlineExceededError, ServerUnavailableError
from mbostream_client._follow import EventFollower, StreamStats
from mbostream_client._market_data import Instrument, MarketDataClient

log = logging.getLogger(__name__)


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
        self.market = Market()
        self._follower = EventFollower(client, instruments, with_snapshot=True, backoff=backoff)
        #: Replay position of the last record applied; None until the first snapshot arrived.
        self.last_sequence: int | None = None
        # New books whose symbols ListInstruments has not yet told us (the call failed in a drop).
        self._symbols_pending = False
        self._changed = asyncio.Condition()

    @property
    def stats(self) -> StreamStats:
        """Connections, resumes, rebuilds and records applied since the replica started."""
        return self._follower.stats

    @property
    def epoch(self) -> str:
        """The server run (epoch) the replica's books come from."""
        return self._follower.epoch

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
        self._follower.stop()

    async def run(self) -> None:
        """Keeps the replica current until :meth:`stop` or cancellation.

        Raises
        ------
        InvalidRequestError, InstrumentNotFoundError
            The selection itself is wrong: retrying cannot help.
        MessageTooLargeError
            A snapshot batch (one whole book) exceeds this client's size limit.
        """
        async for batch, new_snapshot in self._follower.follow():
            if new_snapshot:
                # A fresh snapshot replaces everything: books absent from it are gone.
                self.market = Market(self.market.symbols)
                self.last_sequence = None
            known = len(self.market.books())
            self._apply(batch)
            if len(self.market.books()) > known or self._symbols_pending:
                await self._learn_symbols()
            async with self._changed:
                self._changed.notify_all()

    def _apply(self, batch: EventBatch) -> None:
        self.market.apply(batch.records, complete_events=False)
        self.last_sequence = int(batch.replay_sequence[-1])

    async def _learn_symbols(self) -> None:
        """Instrument id → symbol from ListInstruments, so :meth:`view` accepts symbols.

        The books do not depend on it: when the connection drops during the call (the stream's
        follower reconnects on its own), the symbols are asked for again with the next batch.
        """
        try:
            infos = await self.client.list_instruments()
        except (ServerUnavailableError, DeadlineExceededError) as exc:
            self._symbols_pending = True
            log.info("symbols not learned (%s); asking again with the next batch", exc.code.name)
            return
        self._symbols_pending = False
        self.market.symbols.update({i.instrument_id: i.symbol for i in infos if i.symbol})
