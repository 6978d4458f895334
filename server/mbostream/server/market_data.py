"""MarketDataService: thin servicers that validate, delegate to the market and hub, and yield."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from grpc import aio as grpc_aio

from mbostream.config import MAX_UPDATES_PER_SECOND
from mbostream.errors import InvalidArgumentError, ReplayPositionError
from mbostream.feed import Batch
from mbostream.metrics import METRICS
from mbostream.hub import BookChannel, BookSubscriber, EventSubscriber, Hub, Selection
from mbostream_core.market import BookKey, Market
from mbostream.server.convert import book_snapshot, instrument_info, per_client_suffix
from mbostream.server.peers import peer_address
from mbostream_core.v1 import market_data_pb2 as pb

#: Largest depth a request may ask for (a guard against absurd values, far above any real book).
MAX_DEPTH = 100_000


def _selection(market: Market, selectors: list[pb.InstrumentSelector], field: str) -> Selection:
    """Resolves selectors; unknown ones are NOT_FOUND, empty ones INVALID_ARGUMENT."""
    any_publisher: set[int] = set()
    exact: set[BookKey] = set()
    for i, sel in enumerate(selectors):
        which = sel.WhichOneof("selector")
        if which is None:
            raise InvalidArgumentError(f"{field}[{i}]", "set instrument_id or symbol")
        target = sel.instrument_id if which == "instrument_id" else sel.symbol
        if isinstance(target, str) and not target:
            raise InvalidArgumentError(f"{field}[{i}].symbol", "must not be empty")
        iid = market.instrument_id(target)
        if sel.publisher_id:
            exact.add(BookKey(iid, sel.publisher_id))
        else:
            any_publisher.add(iid)
    return Selection(frozenset(any_publisher), frozenset(exact))


def book_message(sub: BookSubscriber, channels: list[BookChannel], first: bool, conflated: int, epoch: str) -> bytes:
    """One StreamBook message (a ``StreamBookResponse``) from what :meth:`BookSubscriber.take`
    gives: a book on its own (and every first message), or several books combined."""
    books = [c.book for c in channels if c.book is not None]
    if len(books) == 1 and not sub.combine or first:
        return books[0].single + per_client_suffix(first, conflated, epoch=epoch)
    oldest = min(b.ts_out for b in books)
    return b"".join(b.multi for b in books) + per_client_suffix(False, conflated, oldest, epoch)


def _depth(value: int) -> int:
    if value > MAX_DEPTH:
        raise InvalidArgumentError("depth", f"must be at most {MAX_DEPTH}, got {value}")
    return value


class EventHistory(Protocol):
    """Batches older than the hub's memory (a gateway reads them from the bus)."""

    def batches(self, after: int) -> AsyncIterator[Batch]:
        """Batches from replay position ``after + 1`` on; ReplayPositionError when not held."""
        ...


class CatchUp(Protocol):
    """A resume ahead of the hub's position (a gateway still applying what the bus holds)."""

    async def __call__(self, position: int) -> bool:
        """True once the hub is at ``position``; False when no source holds it (OUT_OF_RANGE);
        raises CatchingUpError (UNAVAILABLE) when it is held but not reached in time."""
        ...


class MarketDataService:
    """Implements ``mbostream.v1.MarketDataService``; streaming methods yield serialized bytes.

    ``history``: where a resume older than the hub's replay buffer is served from (None: such a
    resume is OUT_OF_RANGE, as in the embedded server). ``catch_up``: what a resume ahead of the
    hub's position waits on (None: OUT_OF_RANGE at once, as in the embedded server).
    """

    def __init__(
        self, market: Market, hub: Hub, dataset: str, history: EventHistory | None = None, catch_up: CatchUp | None = None
    ) -> None:
        self.market = market
        self.hub = hub
        self.dataset = dataset
        self.history = history
        self.catch_up = catch_up

    async def ListInstruments(self, request: pb.ListInstrumentsRequest, context: grpc_aio.ServicerContext) -> pb.ListInstrumentsResponse:
        """Every book with its identity and live statistics."""
        keys = sorted(self.market.books(), key=lambda k: (k.instrument_id, k.publisher_id))
        return pb.ListInstrumentsResponse(instruments=[instrument_info(self.market, key, self.dataset) for key in keys])

    async def GetBook(self, request: pb.GetBookRequest, context: grpc_aio.ServicerContext) -> pb.GetBookResponse:
        """One consistent book (as of its last F_LAST), the "order book as JSON" endpoint."""
        which = request.WhichOneof("instrument")
        if which is None:
            raise InvalidArgumentError("instrument", "set instrument_id or symbol")
        target = request.instrument_id if which == "instrument_id" else request.symbol
        if which == "symbol" and not request.symbol:
            raise InvalidArgumentError("symbol", "must not be empty")
        key = self.market.resolve(target, request.publisher_id)
        view = self.market.view(key, depth=_depth(request.depth), orders=request.include_orders)
        return pb.GetBookResponse(book=book_snapshot(view, self.hub.position), epoch=self.hub.epoch)

    async def StreamBook(self, request: pb.StreamBookRequest, context: grpc_aio.ServicerContext) -> AsyncIterator[bytes]:
        """A full snapshot per book first, then the latest consistent book at each refresh (the
        native transport, :mod:`mbostream.server.native_books`, has the hub deliver the same)."""
        sub = self.open_books(request, peer_address(context.peer()))
        epoch = self.hub.epoch
        try:
            async for channels, first, conflated in sub.updates():
                yield book_message(sub, channels, first, conflated, epoch)
        finally:
            self.hub.unsubscribe_books(sub)

    def open_books(self, request: pb.StreamBookRequest, peer: str) -> BookSubscriber:
        """Validates a StreamBook request and subscribes it, for a client at ``peer`` (an address
        without its port); the caller unsubscribes (``hub.unsubscribe_books``)."""
        try:
            MAX_UPDATES_PER_SECOND.check(request.max_updates_per_second)
        except ValueError as exc:
            raise InvalidArgumentError("max_updates_per_second", str(exc)) from None
        selection = _selection(self.market, list(request.instruments), "instruments")
        return self.hub.subscribe_books(
            selection,
            depth=_depth(request.depth),
            orders=request.include_orders,
            max_rate=request.max_updates_per_second,
            combine=request.combine_books,
            peer=peer,
        )

    async def StreamEvents(self, request: pb.StreamEventsRequest, context: grpc_aio.ServicerContext) -> AsyncIterator[bytes]:
        """Column-wise MBO batches: optional snapshot or backlog first, then live; never lossy."""
        start_after = request.start_after_sequence if request.HasField("start_after_sequence") else None
        if request.with_snapshot and start_after is not None:
            raise InvalidArgumentError("start_after_sequence", "cannot be combined with with_snapshot")
        selection = _selection(self.market, list(request.instruments), "instruments")
        subscribed: list[EventSubscriber] = []
        async for payload in self._older_than_memory(selection, start_after, request, subscribed, peer_address(context.peer())):
            yield payload
        sub = subscribed[0]
        try:
            async for payload in sub.payloads():
                yield payload
        finally:
            self.hub.unsubscribe_events(sub)

    async def _older_than_memory(
        self, selection: Selection, start_after: int | None, request: pb.StreamEventsRequest, subscribed: list[EventSubscriber], peer: str
    ) -> AsyncIterator[bytes]:
        """Subscribes (into ``subscribed``); a resume older than the hub's buffer first gets the
        batches from the history up to where the buffer takes over, encoded as the hub would."""
        position, older = start_after, None
        try:
            while True:
                try:
                    subscribed.append(
                        self.hub.subscribe_events(
                            selection,
                            with_snapshot=request.with_snapshot,
                            start_after=position,
                            max_records=request.max_batch_records,
                            resume_epoch=request.resume_epoch,
                            peer=peer,
                        )
                    )
                    if start_after is not None:
                        METRICS.resumes.labels("bus" if older is not None else "memory").inc()
                    return
                except ReplayPositionError:
                    if older is None and position is not None and position > self.hub.position and self.catch_up:
                        if await self.catch_up(position):
                            continue  # the hub reached the resume point: subscribe again
                        raise
                    if self.history is None or position is None or position >= self.hub.position:
                        raise
                older = older or self.history.batches(position)
                batch = await anext(older)
                for _, payload in self.hub.event_encoder.encode(batch, selection, request.max_batch_records):
                    yield payload  # type: ignore[misc]
                position = batch.last_replay_seq
        finally:
            if older is not None:
                await older.aclose()  # type: ignore[attr-defined]


def handler(service: MarketDataService) -> grpc.GenericRpcHandler:
    """Registers the service; stream responses are pre-serialized bytes (shared between clients)."""

    def passthrough(payload: bytes) -> bytes:
        return payload

    return grpc.method_handlers_generic_handler(
        "mbostream.v1.MarketDataService",
        {
            "ListInstruments": grpc.unary_unary_rpc_method_handler(
                service.ListInstruments,
                request_deserializer=pb.ListInstrumentsRequest.FromString,
                response_serializer=pb.ListInstrumentsResponse.SerializeToString,
            ),
            "GetBook": grpc.unary_unary_rpc_method_handler(
                service.GetBook,
                request_deserializer=pb.GetBookRequest.FromString,
                response_serializer=pb.GetBookResponse.SerializeToString,
            ),
            "StreamBook": grpc.unary_stream_rpc_method_handler(
                service.StreamBook,
                request_deserializer=pb.StreamBookRequest.FromString,
                response_serializer=passthrough,
            ),
            "StreamEvents": grpc.unary_stream_rpc_method_handler(
                service.StreamEvents,
                request_deserializer=pb.StreamEventsRequest.FromString,
                response_serializer=passthrough,
            ),
        },
    )


