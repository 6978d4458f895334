"""The Python client against a real ``mbostream serve`` subprocess on a free port.

No part of the client or server is mocked: books come over gRPC from a real server, the replica is
built by the real engine from real ``StreamEvents`` batches, a forced disconnect is a real TCP
proxy dropping its connections, and a server restart is a real SIGTERM and a new process on the
same port. Comparisons are made with the replay paused (through ReplayService) so both sides are
read at the same replay position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import pytest
from conftest import shared_file
from server_harness import ServeProcess, longest_event_records, paced_records_slack
from slow_reader import LIVE_WITHIN_NS, OldBooks, old_books_after_a_pause
from mbostream_core.dbn import read_records
from mbostream_core.prices import format_price
from mbostream_core.v1 import book_pb2, market_data_pb2, market_data_pb2_grpc, replay_pb2

client_pkg = pytest.importorskip(
    "mbostream_client", reason="the Python client is not installed: pip install -e clients/python"
)
from mbostream_client import (  # noqa: E402
    AuthenticationError,
    Backoff,
    BookReplica,
    InstrumentNotFoundError,
    InvalidRequestError,
    LatestBook,
    LatestBooks,
    MAX_RECEIVE_WINDOW,
    MIN_RECEIVE_WINDOW,
    MarketDataClient,
    ReplayClient,
    ResumeOutOfRangeError,
    SlowConsumerError,
    levels,
)

TOKEN: Final = "client-test-operator-token"
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 30.0
#: Upper bound of any single await in these tests.
STEP: Final = 20.0
#: Upper bound of a whole scenario.
SCENARIO: Final = 120.0

T = TypeVar("T")


# -- a real server ----------------------------------------------------------------------------------
Server = ServeProcess


class Servers:
    """Servers a test starts, each logging under the test's own tmp_path (pytest keeps the last
    few runs' and removes older ones); each is stopped by PID at the end, even when the test fails."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def start(self, files: list[Path], *args: str, port: int = 0) -> Server:
        """Starts ``mbostream serve`` (storage off: these tests are about the gRPC API) and waits
        until it is SERVING."""
        log_path = self.log_dir / f"serve-{len(self.started)}.log"
        server = ServeProcess(*map(str, files), "--no-store", *args, port=port, log_path=log_path, token=TOKEN)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def small_server(servers: Servers, generated_small: Path) -> Server:
    """The 60,000-record generated file replayed at 20,000 records/s, looping."""
    return servers.start([generated_small], "--rate", "20000", "--loop")


# -- helpers ----------------------------------------------------------------------------------------
def run(coro: Awaitable[T], timeout: float = SCENARIO) -> T:
    """Runs one async scenario with an overall deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def within(awaitable: Awaitable[T], seconds: float = STEP) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def same_book(streamed: book_pb2.BookSnapshot, got: book_pb2.BookSnapshot) -> bool:
    """The same book, streamed and from GetBook. Each says the replay position it is consistent
    as of: GetBook the position now, a stream the one at the refresh that last rebuilt the book, so
    a book that did not change since (a burst on another instrument, then a pause) streams an
    older one. Everything else is equal."""
    if streamed.replay_sequence > got.replay_sequence:
        return False
    return _without_position(streamed) == _without_position(got)


def book_difference(held: LatestBook | None, got: book_pb2.BookSnapshot) -> str:
    """What differs between a held book and GetBook's ("" when they are the same book)."""
    if held is None:
        return "not held"
    if same_book(held.book, got):
        return ""
    fields = {f.name for f, _ in held.book.ListFields()} | {f.name for f, _ in got.ListFields()}
    return ", ".join(
        f"{name}: {getattr(held.book, name)!r:.200} against {getattr(got, name)!r:.200}"
        for name in sorted(fields)
        if getattr(held.book, name) != getattr(got, name)
    )


def _without_position(book: book_pb2.BookSnapshot) -> book_pb2.BookSnapshot:
    copy = book_pb2.BookSnapshot()
    copy.CopyFrom(book)
    copy.replay_sequence = 0
    return copy


async def paused_position(replay: ReplayClient) -> int:
    """Pauses the replay and returns its position once it no longer moves.

    A step already past its pause check may still publish one event after Pause returns.
    """
    await within(replay.pause())
    last = -1
    async with asyncio.timeout(STEP):
        while (position := (await replay.status()).replay_sequence) != last:
            last = position
            await asyncio.sleep(0.2)
    return position


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = STEP) -> None:
    """Polls ``predicate`` until true; TimeoutError naming ``what`` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"no {what} within {seconds} s") from None


async def instruments_seen(client: MarketDataClient, count: int) -> list[Any]:
    """ListInstruments once the replay has reached ``count`` books (the data opens with snapshots)."""
    async with asyncio.timeout(STEP):
        while len(found := await client.list_instruments()) < count:
            await asyncio.sleep(0.05)
    return found


async def raw_get_book(target: str, **request: Any) -> Any:
    """GetBook through the generated stub only (the reference the client is checked against)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
        response = await stub.GetBook(market_data_pb2.GetBookRequest(**request), timeout=STEP)
    return response.book


async def assert_replica_matches_server(replica: BookReplica, client: MarketDataClient, position: int) -> int:
    """Every book of the replica equals GetBook (every level and L3 queue) at ``position``.

    A book's sequence and timestamps only match once a live record followed the snapshot (snapshot
    records carry the server's snapshot time, flagged F_BAD_TS_RECV): callers wait for that.
    """
    await replica.wait_for_sequence(position, STEP)
    assert replica.last_sequence == position
    server_books = {(i.instrument_id, i.publisher_id) for i in await within(client.list_instruments())}
    assert {(k.instrument_id, k.publisher_id) for k in replica.books()} == server_books
    orders = 0
    for key in replica.books():
        book = await within(client.get_book(key.instrument_id, publisher_id=key.publisher_id, include_orders=True))
        view = replica.market.view(key, orders=True)
        assert book.replay_sequence == position
        assert view.bids == levels(book.bids, with_orders=True), f"bids differ for {key}"
        assert view.asks == levels(book.asks, with_orders=True), f"asks differ for {key}"
        assert (view.bid_levels, view.ask_levels) == (book.bid_level_count, book.ask_level_count)
        assert (view.sequence, view.ts_event, view.ts_recv) == (book.sequence, book.ts_event, book.ts_recv)
        assert (view.crossed, view.locked) == (book.crossed, book.locked)
        orders += sum(level.count for level in view.bids + view.asks)
    return orders


@contextlib.asynccontextmanager
async def running(replica: BookReplica) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(replica.run())
    try:
        yield task
    finally:
        replica.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(task)


class Http2Calls:
    """Counts the calls a client opens on one HTTP/2 connection from the bytes it sends."""

    PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    HEADERS: Final = 0x1

    def __init__(self) -> None:
        self.pending = bytearray()
        self.skip = len(self.PREFACE)
        self.streams: set[int] = set()

    def feed(self, data: bytes) -> int:
        """Takes the next bytes the client sent; returns how many calls it has opened so far."""
        self.pending += data
        while True:
            if self.skip:
                taken = min(self.skip, len(self.pending))
                del self.pending[:taken]
                self.skip -= taken
                if self.skip:
                    break
            if len(self.pending) < 9:
                break
            length = int.from_bytes(self.pending[:3], "big")
            if self.pending[3] == self.HEADERS:
                self.streams.add(int.from_bytes(self.pending[5:9], "big") & 0x7FFF_FFFF)
            del self.pending[:9]
            self.skip = length
        return len(self.streams)


class DroppingProxy:
    """A real TCP proxy in front of the server whose connections can all be cut at once.

    With ``cut_second_calls=N`` it also cuts a connection (both sides) when the client opens a
    second call on it, the first N times: it reads the frame headers of the client's HTTP/2
    stream as they pass (RFC 9113 §4.1) and sees each call's opening HEADERS frame.
    """

    def __init__(self, upstream: str, *, cut_second_calls: int = 0) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.transports: set[asyncio.WriteTransport] = set()
        self.server: asyncio.Server | None = None
        self.cut_second_calls = cut_second_calls
        self.second_calls_cut = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await within(asyncio.open_connection(self.host, self.upstream_port))
        for w in (writer, up_writer):
            self.transports.add(w.transport)  # type: ignore[arg-type]
        calls = Http2Calls()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(1 << 16):
                    if upstream and self.second_calls_cut < self.cut_second_calls and calls.feed(data) > 1:
                        self.second_calls_cut += 1
                        writer.transport.abort()
                        break
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def drop_all(self) -> int:
        """Resets every proxied connection (both sides); returns how many were cut."""
        cut = 0
        for transport in list(self.transports):
            if not transport.is_closing():
                cut += 1
            transport.abort()
        self.transports.clear()
        return cut

    async def close(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()
            await within(self.server.wait_closed())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream_client", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


# -- get_book ---------------------------------------------------------------------------------------
def test_get_book_matches_the_getbook_rpc(small_server: Server) -> None:
    async def scenario() -> None:
        async with (
            MarketDataClient(small_server.address) as client,
            ReplayClient(small_server.address, token=TOKEN) as replay,
        ):
            instruments = await instruments_seen(client, 3)
            assert len(instruments) == 3 and all(i.symbol for i in instruments)
            position = await paused_position(replay)
            for info in instruments:
                for depth, orders in ((0, True), (5, False)):
                    by_symbol = await within(client.get_book(info.symbol, depth=depth, include_orders=orders))
                    by_id = await within(client.get_book(info.instrument_id, depth=depth, include_orders=orders))
                    reference = await raw_get_book(
                        small_server.address, symbol=info.symbol, depth=depth, include_orders=orders
                    )
                    assert by_symbol == reference == by_id
                    assert by_symbol.replay_sequence == position
                    assert depth == 0 or len(by_symbol.bids) <= depth
            with pytest.raises(InstrumentNotFoundError) as not_found:
                await within(client.get_book("NOPE"))
            assert not_found.value.code is grpc.StatusCode.NOT_FOUND
            with pytest.raises(InvalidRequestError):
                await within(client.get_book(""))

    run(scenario())


def test_replay_client_needs_the_right_token(small_server: Server) -> None:
    async def scenario() -> None:
        async with ReplayClient(small_server.address, token="not-the-operator-token") as replay:
            with pytest.raises(AuthenticationError):
                await within(replay.status())
        async with ReplayClient(small_server.address, token=TOKEN) as replay:
            assert (await within(replay.pause())).state == replay_pb2.REPLAY_STATE_PAUSED
            assert (await within(replay.resume())).state == replay_pb2.REPLAY_STATE_RUNNING

    run(scenario())


# -- the replica ------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["generated", "clx5"])
def test_replica_equals_getbook_at_the_same_sequence(servers: Servers, generated_small: Path, data: str) -> None:
    path = generated_small if data == "generated" else shared_file("CLX5_mbo.dbn")
    server = servers.start([path], "--rate", "20000", "--loop")

    async def scenario() -> None:
        async with MarketDataClient(server.address) as client, ReplayClient(server.address, token=TOKEN) as replay:
            replica = BookReplica(client)
            async with running(replica):
                await wait_until(lambda: replica.stats.records_applied > 20_000, "live records on every book")
                position = await paused_position(replay)
                orders = await assert_replica_matches_server(replica, client, position)
                assert orders > 0
                assert replica.stats.snapshots == 1 and replica.stats.rebuilds == 0

    run(scenario())


def test_replica_survives_a_drop_during_its_symbol_lookup(small_server: Server) -> None:
    """A connection cut during the replica's ListInstruments costs a reconnect, never the run.

    CI caught a drop landing on the ListInstruments the replica makes when new books appear: its
    UNAVAILABLE ended ``run``. The proxy here cuts the connection on the first call a connection
    opens after its StreamEvents, which is that ListInstruments, so the drop lands on it every time.
    """

    async def scenario() -> None:
        proxy = DroppingProxy(small_server.address, cut_second_calls=1)
        proxied = await proxy.start()
        try:
            async with (
                MarketDataClient(proxied) as via_proxy,
                MarketDataClient(small_server.address) as client,
                ReplayClient(small_server.address, token=TOKEN) as replay,
            ):
                infos = await instruments_seen(client, 3)
                replica = BookReplica(via_proxy, backoff=Backoff(base=0.05, cap=0.5))
                async with running(replica) as task:
                    await wait_until(lambda: replica.stats.records_applied > 2_000, "live records after the cut")
                    assert not task.done()
                    assert proxy.second_calls_cut == 1
                    assert replica.market.symbols == {i.instrument_id: i.symbol for i in infos}
                    symbol = infos[0].symbol
                    assert replica.view(symbol, orders=True) == replica.view(infos[0].instrument_id, orders=True)
                    position = await paused_position(replay)
                    await assert_replica_matches_server(replica, client, position)
                # The cut came mid-snapshot: the replica started over from a second one, no rebuild.
                assert replica.stats.connections == replica.stats.snapshots == 2
                assert replica.stats.rebuilds == 0
        finally:
            await proxy.close()

    run(scenario())


def test_replica_resumes_after_a_forced_disconnect(small_server: Server) -> None:
    async def scenario() -> None:
        proxy = DroppingProxy(small_server.address)
        proxied = await proxy.start()
        try:
            async with MarketDataClient(proxied) as client, ReplayClient(small_server.address, token=TOKEN) as replay:
                replica = BookReplica(client, backoff=Backoff(base=0.05, cap=0.5))
                async with running(replica):
                    await wait_until(lambda: replica.stats.records_applied > 2_000, "live records")
                    for _ in range(2):
                        applied = replica.stats.records_applied
                        assert proxy.drop_all() >= 2
                        await wait_until(
                            lambda before=applied: replica.stats.records_applied > before + 2_000,
                            "records after the drop",
                        )
                    position = await paused_position(replay)
                    await assert_replica_matches_server(replica, client, position)
                # Resumed in place both times: no second snapshot, and no gap (a gap forces a rebuild).
                assert replica.stats.resumes >= 2
                assert replica.stats.snapshots == 1 and replica.stats.rebuilds == 0
        finally:
            await proxy.close()

    run(scenario())


def test_replica_rebuilds_after_the_server_restarts_on_the_same_port(
    servers: Servers, generated_small: Path
) -> None:
    first = servers.start([generated_small], "--rate", "50000", "--loop")

    async def scenario() -> None:
        async with MarketDataClient(first.address) as client:
            replica = BookReplica(client, backoff=Backoff(base=0.1, cap=0.5))
            async with running(replica):
                # Far enough that the new server's position is behind the resume point.
                await wait_until(lambda: (replica.last_sequence or 0) > 100_000, "100,000 records", seconds=30)
                assert first.stop() == 0
                second = servers.start([generated_small], "--rate", "20000", "--loop", port=first.port)
                # Past the file's opening snapshots, so every book's last record is a live one.
                await wait_until(
                    lambda: replica.stats.rebuilds >= 1 and (replica.last_sequence or 0) > 30_000,
                    "a rebuilt replica past the opening snapshots",
                    seconds=30,
                )
                async with ReplayClient(second.address, token=TOKEN) as replay:
                    position = await paused_position(replay)
                    await assert_replica_matches_server(replica, client, position)
                assert replica.stats.snapshots == 2

    run(scenario())


# -- resuming the event stream ----------------------------------------------------------------------
def test_resume_with_start_after_sequence_is_contiguous(small_server: Server) -> None:
    async def scenario() -> None:
        async with MarketDataClient(small_server.address) as client:
            seen: list[int] = []
            stream = client.stream_events()
            async with asyncio.timeout(STEP):
                async for batch in stream:
                    seen.extend(batch.replay_sequence.tolist())
                    if len(seen) > 3_000:
                        break
            await within(stream.aclose())
            resume_after = seen[-1]
            await asyncio.sleep(0.5)  # the replay moves on meanwhile; the buffer keeps it
            resumed: list[int] = []
            stream = client.stream_events(start_after_sequence=resume_after)
            async with asyncio.timeout(STEP):
                async for batch in stream:
                    assert not batch.snapshot
                    resumed.extend(batch.replay_sequence.tolist())
                    if len(resumed) > 20_000:
                        break
            await within(stream.aclose())
            assert resumed == list(range(resume_after + 1, resume_after + 1 + len(resumed)))
            assert seen == list(range(seen[0], seen[0] + len(seen)))
            with pytest.raises(ResumeOutOfRangeError):
                await within(client.stream_events(start_after_sequence=resumed[-1] + 10_000_000).__anext__())

    run(scenario())


def test_a_slow_reader_is_cut_off_and_resumes_where_it_stopped(
    servers: Servers, generated_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MBOSTREAM_SUBSCRIBER_BUFFER_BATCHES", "4")
    server = servers.start([generated_small], "--rate", "100000", "--loop")

    async def scenario() -> None:
        # Without BDP probing the receive window stays small, so falling behind reaches the server.
        async with MarketDataClient(server.address, options=[("grpc.http2.bdp_probe", 0)]) as client:
            last = None
            stream = client.stream_events()
            with pytest.raises(SlowConsumerError) as cut:
                async with asyncio.timeout(STEP):
                    async for batch in stream:
                        if last is None:
                            # Fall behind: the server queues 4 batches beyond what the transport holds.
                            await asyncio.sleep(3.0)
                        last = int(batch.replay_sequence[-1])
            assert cut.value.resume_after == last
            resumed = client.stream_events(start_after_sequence=last)
            batch = await within(resumed.__anext__())
            await within(resumed.aclose())
            assert int(batch.replay_sequence[0]) == last + 1

    run(scenario())


def test_a_small_receive_window_bounds_the_old_books_a_slow_reader_holds(small_server: Server) -> None:
    """A book stream not read for a while holds at most its receive window of old books (and the
    message the server had begun): the server conflates the rest into the newest, so the reader is
    back at live books after reading about a window. With gRPC's own windows (4 MiB, grown by its
    probe) the same pause leaves seconds of old books to read first."""
    window, pause = MIN_RECEIVE_WINDOW, 3.0

    async def scenario() -> tuple[OldBooks, OldBooks]:
        small, default = await asyncio.gather(
            old_books_after_a_pause(small_server.address, window, pause, STEP),
            old_books_after_a_pause(small_server.address, None, pause, STEP),
        )
        return small, default

    small, default = run(scenario())
    bound = window + 2 * small.largest  # a message begun in the window, and one the server had queued
    assert small.read <= bound, small
    assert default.read > 4 * bound, (default, bound)


def test_a_receive_window_outside_http2s_range_is_refused() -> None:
    for bad in (MIN_RECEIVE_WINDOW - 1, MAX_RECEIVE_WINDOW + 1, MIN_RECEIVE_WINDOW + 0.5, float("nan"), True):
        with pytest.raises(ValueError, match="receive_window"):
            MarketDataClient("127.0.0.1:1", receive_window=bad)


# -- the newest books, read ahead ------------------------------------------------------------------
def test_latest_books_hands_out_live_books_to_an_application_that_stopped_reading(small_server: Server) -> None:
    """LatestBooks reads the stream while the application does not, keeping each book's newest
    version: after a 3 s pause every book it hands out was published within LIVE_WITHIN_NS, where a
    plain book stream paused as long, beside it on the same server, first reads old books."""
    pause = 3.0

    async def scenario() -> None:
        async with (
            MarketDataClient(small_server.address, own_connection=True) as client,
            LatestBooks(client, depth=0, include_orders=True) as latest,
        ):
            await within(latest.wait())
            plain = asyncio.create_task(old_books_after_a_pause(small_server.address, None, pause, STEP))
            await asyncio.sleep(pause)
            resumed = time.time_ns()
            taken = latest.take()
            old = (await within(plain)).read
            assert sorted(taken) == sorted(latest.books()) and len(taken) == 3, sorted(taken)
            ages_ms = {key: (resumed - book.ts_out) / 1e6 for key, book in taken.items()}
            assert all(book.ts_out >= resumed - LIVE_WITHIN_NS for book in taken.values()), ages_ms
            # It kept reading while nobody took: versions came and were replaced, here in the client.
            assert latest.stats.superseded > 0 and latest.stats.connections == 1, latest.stats
            assert old > 0, "the plain stream read no old book after its pause: the comparison shows nothing"

    run(scenario())


def test_latest_books_hands_out_each_change_once_and_equals_getbook(small_server: Server) -> None:
    async def scenario() -> None:
        async with (
            MarketDataClient(small_server.address) as client,
            ReplayClient(small_server.address, token=TOKEN) as replay,
            LatestBooks(client, depth=5) as latest,
        ):
            await within(latest.wait())
            position = await paused_position(replay)
            ids = [info.instrument_id for info in await within(client.list_instruments())]
            reference = {i: await within(client.get_book(i, depth=5)) for i in ids}
            try:
                await wait_until(
                    lambda: all((held := latest.get(i)) is not None and same_book(held.book, reference[i]) for i in ids),
                    "every book held as GetBook gives it, the replay paused",
                )
            except TimeoutError as exc:  # say which books and fields differ
                differ = {i: book_difference(latest.get(i), reference[i]) for i in ids}
                raise AssertionError(f"{exc}: {differ}; {latest.stats}") from None
            for i in ids:
                held = latest.get(i)
                assert held is not None and latest.get(held.book.symbol) == held
            latest.take()
            await asyncio.sleep(0.5)
            assert latest.take() == {}, "books changed while the replay was paused"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(latest.wait(), 0.3)
            await within(replay.resume())
            changed = await within(latest.wait())
            assert changed and all(book.book.replay_sequence > position for book in changed.values()), changed

    run(scenario())


def test_latest_books_ends_with_the_error_retrying_cannot_mend(small_server: Server) -> None:
    async def scenario() -> None:
        async with (
            MarketDataClient(small_server.address) as client,
            LatestBooks(client, ["NO-SUCH-SYMBOL"]) as latest,
        ):
            with pytest.raises(InstrumentNotFoundError):
                await within(latest.wait())
            assert not latest.running and latest.stats.connections == 1

    run(scenario())


def test_latest_books_drops_the_books_of_a_server_run_that_ended(
    servers: Servers, generated_small: Path, tmp_path: Path
) -> None:
    """After a restart (another epoch) the books held are the new run's only: the old run's three
    instruments are not kept beside the new run's one."""
    from mbostream_core.synth import generate_file

    one = tmp_path / "one-instrument.mbo.dbn"
    generate_file(one, records=20_000, instruments=1, seed=5)
    first = servers.start([generated_small], "--rate", "20000", "--loop")

    async def scenario() -> None:
        async with (
            MarketDataClient(first.address) as client,
            LatestBooks(client, backoff=Backoff(base=0.1, cap=0.5)) as latest,
        ):
            await wait_until(lambda: len(latest.books()) == 3, "the first run's three books")
            old_epoch = latest.epoch
            assert first.stop() == 0
            servers.start([one], "--rate", "20000", "--loop", port=first.port)
            await wait_until(lambda: latest.epoch not in ("", old_epoch), "the new run's first book", seconds=30)
            held = latest.books()
            assert len(held) == 1 and {book.epoch for book in held.values()} == {latest.epoch}, held.keys()
            assert latest.stats.epoch_changes == 1 and latest.stats.connections >= 2, latest.stats

    run(scenario())


# -- the command line -------------------------------------------------------------------------------
def test_get_book_cli_json_schema(small_server: Server) -> None:
    async def pause_and_reference() -> tuple[str, Any]:
        async with (
            MarketDataClient(small_server.address) as client,
            ReplayClient(small_server.address, token=TOKEN) as replay,
        ):
            await paused_position(replay)
            symbol = (await within(client.list_instruments()))[0].symbol
            return symbol, await within(client.get_book(symbol, depth=3))

    symbol, reference = run(pause_and_reference())
    doc = json.loads(cli("--target", small_server.address, "get-book", symbol, "--json", "--depth", "3").stdout)
    (book,) = doc["instruments"]
    assert book["symbol"] == symbol and book["instrument_id"] == reference.instrument_id
    for field in ("publisher_id", "ts_event", "ts_recv", "sequence", "replay_sequence", "crossed", "locked",
                  "last_trade", "volume", "bid_levels", "ask_levels", "anomalies"):  # fmt: skip
        assert field in book
    assert 0 < len(book["bids"]) <= 3 and 0 < len(book["asks"]) <= 3
    for level in book["bids"] + book["asks"]:
        assert set(level) == {"price", "size", "count"}
        assert isinstance(level["price"], str) and len(level["price"].split(".")[1]) == 9
    assert [lv["price"] for lv in book["bids"]] == [format_price(lv.price) for lv in reference.bids]
    assert [(lv["size"], lv["count"]) for lv in book["asks"]] == [(lv.size, lv.count) for lv in reference.asks]

    with_orders = json.loads(
        cli("--target", small_server.address, "get-book", symbol, "--json", "--depth", "2", "--orders").stdout
    )
    for level in with_orders["instruments"][0]["bids"]:
        assert set(level) == {"price", "size", "count", "orders"}
        assert level["count"] == len(level["orders"])
        assert level["size"] == sum(o["size"] for o in level["orders"])


def test_latency_cli_gives_sane_numbers(small_server: Server, generated_small: Path) -> None:
    rate, seconds = 20_000, 2.0  # the small server's pacing; the CLI's window
    out = cli(
        "--target", small_server.address, "latency", "--streams", "5", "--events-streams", "1",
        "--seconds", str(seconds), "--warmup", "0.5", "--json",
    ).stdout  # fmt: skip
    result = json.loads(out)
    book, events = result["book"], result["events"]
    lat = book["latency_ms"]
    assert book["messages"] > 0 and book["messages_per_second"] > 0
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < 5_000
    assert lat["samples"] == book["messages"]
    assert events["lossless"] and events["gaps"] == 0
    # The CLI counts the records that arrive in its window; each was published by a replay paced
    # at `rate` at most the worst latency the CLI measured before. At most one pass of the looping
    # file (60,000 records, 3 s) starts in the window: it clears each book with one R record, and
    # its first release may run ahead by one event.
    info, records = read_records(generated_small)
    longest = longest_event_records(records["flags"])
    worst_seconds = events["latency_ms"]["max"] / 1000
    slack = paced_records_slack(rate, 2 * longest) + longest + len(info.symbols) + rate * worst_seconds
    assert abs(events["records"] - rate * seconds) <= slack, (events["records"], slack)
    assert events["records_per_second"] == round(events["records"] / seconds, 1)
    assert not book["errors"] and not events["errors"] and result["streams_ended_early"] == 0
