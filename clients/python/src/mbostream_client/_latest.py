"""Latest room: the newest version of each book of a StreamBook subscription, however slowly it is read.

A book stream read slower than the server publishes fills its HTTP/2 windows with books that age
while they wait: the reader gets them first, and the server conflates only what does not fit (gRPC
core's own windows hold seconds of whole books). :class:`LatestBooks` reads the stream in a task of
its own as fast as messages arrive and keeps only each book's newest version, so what the
application takes is as fresh as that task's decoding can keep it, whatever the application's own
pace. The cost: every message is decoded, also those whose books nobody takes before the next.

It reconnects by itself, with backoff: a new stream starts with a snapshot of every selected book,
so nothing needs resuming. Books of another server run (another epoch: the server restarted) are
dropped when the first message of the new run arrives, so what it holds never mixes two runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from mbostream_core.v1 import book_pb2, market_data_pb2

from mbostream_client._backoff import Backoff
from mbostream_client._exceptions import (
    InstrumentNotFoundError,
    InvalidRequestError,
    MessageTooLargeError,
    RpcError,
)
from mbostream_client._market_data import Instrument, MarketDataClient

log = logging.getLogger(__name__)

#: One book: ``(instrument_id, publisher_id)``.
BookKey = tuple[int, int]

#: Errors that come again on every reconnection: they end the subscription.
_PERMANENT = (InvalidRequestError, InstrumentNotFoundError, MessageTooLargeError)


@dataclass(frozen=True, slots=True)
class LatestBook:
    """The newest version of one book that a :class:`LatestBooks` holds."""

    #: The book, cut to the subscription's depth (never changed after it is handed out).
    book: book_pb2.BookSnapshot
    #: The server's publication time of the message that carried it, ns since the UNIX epoch (with
    #: ``combine_books``, that of the message's oldest book).
    ts_out: int
    #: The server run the book's ``replay_sequence`` belongs to.
    epoch: str


@dataclass
class LatestBooksStats:
    """What a :class:`LatestBooks` went through since it started."""

    #: Streams opened, the first included.
    connections: int = 0
    #: Messages read.
    messages: int = 0
    #: Book versions received.
    books: int = 0
    #: Versions replaced by a newer one before :meth:`LatestBooks.take` handed them out: conflated
    #: here, in the client.
    superseded: int = 0
    #: Book states the server skipped for this stream (the sum of the messages' ``conflated``).
    server_conflated: int = 0
    #: Times the server turned out to run another epoch than the books held (it restarted).
    epoch_changes: int = 0


class LatestBooks:
    """The newest version of every book of a ``StreamBook`` subscription, read ahead in a task.

    Use it as an async context manager (or :meth:`start` and :meth:`close`). :meth:`get` and
    :meth:`books` read what it holds; :meth:`take` hands out the books that changed since the
    previous take, :meth:`wait` waits for some, :meth:`changes` iterates over them.

    The reading task runs on the caller's event loop: it reads while the application awaits. Code
    that holds the loop without awaiting (CPU work) stops it too; run such work in a thread
    (``asyncio.to_thread``).

    Parameters
    ----------
    client
        The client whose channel the stream uses.
    instruments
        Books to follow; empty follows every book, also ones first seen later.
    depth
        Levels per side; 0 keeps whole books.
    include_orders
        Keep each level's orders.
    max_updates_per_second
        The server's bound on messages per second per book (0: every refresh in which it changed).
    combine_books
        Ask for every changed book of a refresh in one message: fewer messages to decode.
    backoff
        Reconnection delays; reset after each message.
    reconnect
        When false, the first error ends the subscription (raised by :meth:`wait`).
    """

    def __init__(
        self,
        client: MarketDataClient,
        instruments: Sequence[Instrument] = (),
        *,
        depth: int = 10,
        include_orders: bool = False,
        max_updates_per_second: float = 0.0,
        combine_books: bool = True,
        backoff: Backoff | None = None,
        reconnect: bool = True,
    ) -> None:
        self.client = client
        self.instruments = tuple(instruments)
        self.depth = depth
        self.include_orders = include_orders
        self.max_updates_per_second = max_updates_per_second
        self.combine_books = combine_books
        self.backoff = backoff or Backoff()
        self.reconnect = reconnect
        self.stats = LatestBooksStats()
        #: The server run of the books held ("" before the first message).
        self.epoch = ""
        self._books: dict[BookKey, LatestBook] = {}
        #: For :meth:`get`: each symbol's instrument id, and each instrument's publishers held.
        self._ids: dict[str, int] = {}
        self._publishers: dict[int, set[int]] = {}
        self._changed: dict[BookKey, LatestBook] = {}
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> LatestBooks:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Starts reading; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._read(), name="mbostream-latest-books")

    async def close(self) -> None:
        """Stops reading (the books held stay readable); :meth:`wait` then returns what changed,
        and :meth:`changes` ends."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._woken.set()

    @property
    def running(self) -> bool:
        """True while the reading task runs."""
        return self._task is not None and not self._task.done()

    # -- reading what it holds ----------------------------------------------------------------------
    def get(self, instrument: Instrument, publisher_id: int = 0) -> LatestBook | None:
        """The newest version of one book, or None while it has not come.

        ``instrument`` is a raw symbol or an instrument id; ``publisher_id`` 0 picks the
        instrument's book of the lowest publisher id held.
        """
        if isinstance(instrument, bool) or not isinstance(instrument, str | int):
            raise TypeError(f"instrument must be a symbol (str) or an instrument id (int), not {instrument!r}")
        instrument_id = instrument if isinstance(instrument, int) else self._ids.get(instrument)
        if instrument_id is None:
            return None
        if not publisher_id:
            publishers = self._publishers.get(instrument_id)
            if not publishers:
                return None
            publisher_id = min(publishers)
        return self._books.get((instrument_id, publisher_id))

    def books(self) -> dict[BookKey, LatestBook]:
        """Every book held, each at its newest version (a copy)."""
        return dict(self._books)

    def take(self) -> dict[BookKey, LatestBook]:
        """The books that changed since the previous take, each at its newest version; empty when
        none did."""
        changed, self._changed = self._changed, {}
        if not (self._task is None or self._task.done()):
            self._woken.clear()
        return changed

    async def wait(self) -> dict[BookKey, LatestBook]:
        """Waits until a book changed, then :meth:`take` s. After :meth:`close` it returns what
        changed, possibly nothing, without waiting.

        Raises
        ------
        RuntimeError
            Not started.
        InvalidRequestError, InstrumentNotFoundError, MessageTooLargeError
            The subscription cannot be served: retrying cannot help.
        RpcError
            Any other failure, when ``reconnect`` is false.
        """
        if self._task is None:
            raise RuntimeError("LatestBooks is not started: use it as an async context manager, or call start()")
        while not self._changed and not self._task.done():
            self._woken.clear()  # set with nothing changed: the books were dropped (another epoch)
            await self._woken.wait()
        if self._error is not None and not self._changed:
            raise self._error
        return self.take()

    async def changes(self) -> AsyncIterator[dict[BookKey, LatestBook]]:
        """Yields the books that changed since the previous yield (:meth:`wait`), until
        :meth:`close`; raises what ended the subscription otherwise."""
        while True:
            changed = await self.wait()
            if not changed and not self.running:
                return
            if changed:
                yield changed

    # -- the reading task -------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                try:
                    await self._connection()
                    if not self.reconnect:
                        return
                    log.info("the server ended the book stream; reconnecting")
                except _PERMANENT:
                    raise
                except RpcError as exc:
                    if not self.reconnect:
                        raise
                    log.info("book stream ended: %s; reconnecting", exc.code.name, extra={"details": exc.details})
                await asyncio.sleep(self.backoff.next_delay())
        except Exception as exc:  # handed to the reader by wait(); a cancellation is not one
            self._error = exc
        finally:
            self._woken.set()

    async def _connection(self) -> None:
        """One stream: every message's books stored, replacing older versions."""
        self.stats.connections += 1
        stream = self.client.stream_book(
            self.instruments,
            depth=self.depth,
            include_orders=self.include_orders,
            max_updates_per_second=self.max_updates_per_second,
            combine_books=self.combine_books,
        )
        try:
            async for update in stream:
                self.backoff.reset()
                self._store(update)
        finally:
            await stream.aclose()

    def _store(self, update: market_data_pb2.StreamBookResponse) -> None:
        stats = self.stats
        stats.messages += 1
        stats.server_conflated += update.conflated
        if update.epoch and update.epoch != self.epoch:
            if self.epoch:
                # Another server run: its positions start over, and its books need not include ours.
                stats.epoch_changes += 1
                log.info("the server runs another epoch; dropping the books of the old one")
                self._books.clear()
                self._changed.clear()
                self._ids.clear()
                self._publishers.clear()
            self.epoch = update.epoch
        books = list(update.books)
        if update.HasField("book"):
            books.append(update.book)
        for book in books:
            key = (book.instrument_id, book.publisher_id)
            latest = LatestBook(book, update.ts_out, update.epoch)
            stats.books += 1
            if key in self._changed:
                stats.superseded += 1
            if key not in self._books:
                self._publishers.setdefault(key[0], set()).add(key[1])
                if book.symbol:
                    self._ids[book.symbol] = key[0]
            self._books[key] = self._changed[key] = latest
        if books:
            self._woken.set()
