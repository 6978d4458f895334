"""MarketDataService room: the async client for instruments, books, book streams and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any

import grpc
from mbostream_core.v1 import book_pb2, market_data_pb2, market_data_pb2_grpc

from mbostream_client._channel import DEFAULT_TARGET, TlsConfig, open_channel
from mbostream_client._decode import EventBatch, decode_events
from mbostream_client._exceptions import EpochChangedError, PreconditionFailedError, error_from_rpc
from mbostream_client._tracing import Metadata, trace_metadata

#: An instrument as callers name it: a raw symbol (``"CLX5"``) or a numeric instrument id.
Instrument = str | int


def instrument_selector(instrument: Instrument, publisher_id: int = 0) -> market_data_pb2.InstrumentSelector:
    """The ``InstrumentSelector`` for a symbol or an instrument id."""
    if isinstance(instrument, bool) or not isinstance(instrument, str | int):
        raise TypeError(f"instrument must be a symbol (str) or an instrument id (int), not {instrument!r}")
    if isinstance(instrument, int):
        return market_data_pb2.InstrumentSelector(instrument_id=instrument, publisher_id=publisher_id)
    return market_data_pb2.InstrumentSelector(symbol=instrument, publisher_id=publisher_id)


class MarketDataClient:
    """Async client of ``mbostream.v1.MarketDataService``.

    Use it as an async context manager (or call :meth:`close`). Failed calls raise the
    :class:`~mbostream_client.RpcError` subclass of their status code.

    Parameters
    ----------
    target
        ``HOST:PORT`` of the server.
    timeout
        Deadline of each unary call, seconds (None: no deadline). Streams have none.
    own_connection
        Give this client its own TCP connection (see :func:`open_channel`).
    options
        Extra gRPC channel arguments.
    tls
        Connect over TLS (:class:`~mbostream_client.TlsConfig`); None: plaintext.
    trace
        Start a W3C trace per call (a fresh ``traceparent``) when no OpenTelemetry span is current
        in the caller (a current span's context is always sent); its id is logged on the
        ``mbostream_client.trace`` logger and kept in :attr:`last_trace_id`.
    receive_window
        Fix the connection's HTTP/2 receive windows (each stream's and the connection's) at this
        many bytes, 64 KiB at least; None: gRPC's own, 4 MiB a stream and grown by its bandwidth
        probe. They bound what the server sends ahead of the application's reading: a book stream
        read slower than the server publishes holds at most a window of old books, and the server
        conflates the rest into the newest. A client of book streams that may fall behind should
        open a small window (64 KiB) with ``own_connection``; event streams want the default,
        where the window is what lets a reader catch up without being cut off.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 10.0,
        own_connection: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        tls: TlsConfig | None = None,
        trace: bool = False,
        receive_window: int | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.trace = trace
        #: The trace id of the last call that started its own trace (``trace=True``), else None.
        self.last_trace_id: str | None = None
        self._channel = open_channel(
            target, own_connection=own_connection, options=options, tls=tls, receive_window=receive_window
        )
        self._stub = market_data_pb2_grpc.MarketDataServiceStub(self._channel)

    async def __aenter__(self) -> MarketDataClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; open streams end with CANCELLED."""
        await self._channel.close()

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected.

        Raises
        ------
        TimeoutError
            When the server is not reachable within ``timeout`` seconds.
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.target} not reachable within {timeout} s") from None

    def _metadata(self, method: str) -> Metadata:
        metadata, trace_id = trace_metadata(method, start=self.trace)
        if trace_id is not None:
            self.last_trace_id = trace_id
        return metadata

    async def list_instruments(self) -> list[market_data_pb2.InstrumentInfo]:
        """Every book the replay has seen so far, ordered by instrument then publisher."""
        try:
            response = await self._stub.ListInstruments(
                market_data_pb2.ListInstrumentsRequest(),
                timeout=self.timeout,
                metadata=self._metadata("ListInstruments"),
            )
        except grpc.RpcError as exc:
            raise error_from_rpc("ListInstruments", exc) from exc
        return list(response.instruments)

    async def get_book(
        self, instrument: Instrument, *, depth: int = 0, include_orders: bool = False, publisher_id: int = 0
    ) -> book_pb2.BookSnapshot:
        """One book as of its most recent F_LAST boundary.

        Parameters
        ----------
        instrument
            Raw symbol or numeric instrument id.
        depth
            Levels per side; 0 returns the full book.
        include_orders
            List each level's orders in queue-priority order.
        publisher_id
            Publisher whose book to return; 0 picks the instrument's first publisher.
        """
        request = market_data_pb2.GetBookRequest(depth=depth, include_orders=include_orders, publisher_id=publisher_id)
        if isinstance(instrument, int) and not isinstance(instrument, bool):
            request.instrument_id = instrument
        elif isinstance(instrument, str):
            request.symbol = instrument
        else:
            raise TypeError(f"instrument must be a symbol (str) or an instrument id (int), not {instrument!r}")
        try:
            response = await self._stub.GetBook(request, timeout=self.timeout, metadata=self._metadata("GetBook"))
        except grpc.RpcError as exc:
            raise error_from_rpc("GetBook", exc) from exc
        return response.book

    async def stream_book(
        self,
        instruments: Sequence[Instrument] = (),
        *,
        depth: int = 10,
        include_orders: bool = False,
        max_updates_per_second: float = 0.0,
        combine_books: bool = False,
    ) -> AsyncGenerator[market_data_pb2.StreamBookResponse, None]:
        """Conflated top-N book updates: a snapshot per book first, then the latest at each change.

        Parameters
        ----------
        instruments
            Books to stream; empty streams every book, including ones first seen later.
        depth
            Levels per side; 0 sends full books.
        include_orders
            List each level's orders.
        max_updates_per_second
            Upper bound on messages per second per book (0: every change the server publishes).
        combine_books
            After each book's first message (``book``), receive every changed book of a refresh
            in one message (``books``).
        """
        request = market_data_pb2.StreamBookRequest(
            instruments=[instrument_selector(i) for i in instruments],
            depth=depth,
            include_orders=include_orders,
            max_updates_per_second=max_updates_per_second,
            combine_books=combine_books,
        )
        call = self._stub.StreamBook(request, metadata=self._metadata("StreamBook"))
        try:
            async for update in call:
                yield update
        except grpc.RpcError as exc:
            raise error_from_rpc("StreamBook", exc) from exc
        finally:
            call.cancel()

    async def stream_events(
        self,
        instruments: Sequence[Instrument] = (),
        *,
        with_snapshot: bool = False,
        start_after_sequence: int | None = None,
        resume_epoch: str = "",
        max_batch_records: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        """The raw MBO records in replay order, as decoded :class:`EventBatch` es.

        Parameters
        ----------
        instruments
            Instruments to stream; empty streams every instrument.
        with_snapshot
            Start with snapshot batches that rebuild each selected book.
        start_after_sequence
            Resume after this replay position (from the server's replay buffer).
        resume_epoch
            The epoch of the batch ``start_after_sequence`` came from; the server refuses a resume
            into another run with FAILED_PRECONDITION (:class:`EpochChangedError`).
        max_batch_records
            Upper bound on records per batch; 0 lets the server choose.

        Raises
        ------
        SlowConsumerError
            The reader fell behind the server's buffer; resume with ``start_after_sequence``.
        ResumeOutOfRangeError
            ``start_after_sequence`` is no longer buffered; resubscribe with ``with_snapshot``.
        EpochChangedError
            The server runs another epoch than ``resume_epoch`` (it restarted): resubscribe with
            ``with_snapshot`` and rebuild.
        """
        request = market_data_pb2.StreamEventsRequest(
            instruments=[instrument_selector(i) for i in instruments],
            with_snapshot=with_snapshot,
            max_batch_records=max_batch_records,
            resume_epoch=resume_epoch,
        )
        if start_after_sequence is not None:
            request.start_after_sequence = start_after_sequence
        call = self._stub.StreamEvents(request, metadata=self._metadata("StreamEvents"))
        try:
            async for message in call:
                batch = decode_events(message)
                if resume_epoch and batch.epoch and batch.epoch != resume_epoch:
                    call.cancel()
                    raise EpochChangedError(
                        "StreamEvents",
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"resumed into epoch {batch.epoch!r}, asked for {resume_epoch!r}",
                    )
                yield batch
        except grpc.RpcError as exc:
            error = error_from_rpc("StreamEvents", exc)
            if resume_epoch and type(error) is PreconditionFailedError:
                raise EpochChangedError("StreamEvents", error.code, error.details) from exc
            raise error from exc
        finally:
            call.cancel()
