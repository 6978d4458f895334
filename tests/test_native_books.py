"""StreamBook on the native HTTP/2 transport (``serve --book-port``): a real server, real clients.

The native port must be indistinguishable from the gRPC port for StreamBook: the same messages,
the same status codes for the same mistakes, the same stream limits, the same end at shutdown;
and a client that stops reading must cost the server a bounded queue, not a growing one.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, NamedTuple

import grpc
import pytest
from mbostream_client import (
    InstrumentNotFoundError,
    InvalidRequestError,
    MarketDataClient,
    ReplayClient,
    ServerUnavailableError,
    StreamLimitError,
)
from server_harness import TOKEN, ServeProcess, in_process, settings

from mbostream.server.app import App
from mbostream.server.native_books import HIGH_WATER
from mbostream_core._engine import StreamServer
from mbostream_core.v1 import market_data_pb2 as pb

#: Upper bound of any single await here.
STEP: Final = 20.0
STREAM_BOOK: Final = "/mbostream.v1.MarketDataService/StreamBook"


def start(tmp_path: Path, files: list[Path], *args: str) -> ServeProcess:
    server = ServeProcess(*map(str, files), "--no-store", "--book-port", "0", *args, log_path=tmp_path / "serve.log")
    server.start()
    assert server.book_port > 0 and server.book_port != server.port
    return server


@pytest.fixture
def server(tmp_path: Path, generated_small: Path) -> Iterator[ServeProcess]:
    """The generated file at 50,000 records/s, looping, StreamBook also on a native port."""
    started = start(tmp_path, [generated_small], "--rate", "50000", "--loop")
    try:
        yield started
    finally:
        started.stop()


@asynccontextmanager
async def three_books(generated_small: Path) -> AsyncIterator[App]:
    """The generated file served in process (native port on), once its three books are seen."""
    s = settings(files=(str(generated_small),), rate=20_000.0, loop=True, book_port=0)
    async with in_process(s) as (app, _channel):
        deadline = time.monotonic() + STEP
        while len(list(app.hub.market.books())) < 3:
            assert time.monotonic() < deadline, "the replay never showed the file's three books"
            await asyncio.sleep(0.01)
        yield app


def native(server: ServeProcess, **kwargs: object) -> MarketDataClient:
    return MarketDataClient(f"127.0.0.1:{server.book_port}", **kwargs)  # type: ignore[arg-type]


def without_ts_out(message: pb.StreamBookResponse) -> bytes:
    copy = pb.StreamBookResponse()
    copy.CopyFrom(message)
    copy.ClearField("ts_out")
    return copy.SerializeToString(deterministic=True)


async def first_messages(client: MarketDataClient, count: int, **request: object) -> list[pb.StreamBookResponse]:
    stream = client.stream_book(**request)  # type: ignore[arg-type]
    try:
        return [await asyncio.wait_for(stream.__anext__(), STEP) for _ in range(count)]
    finally:
        await stream.aclose()


def test_the_native_port_sends_what_the_grpc_port_sends(server: ServeProcess) -> None:
    """With the replay paused the books stand still: both ports' snapshots of every book, and
    their combined messages, are the same bytes (ts_out aside)."""

    async def scenario() -> None:
        async with ReplayClient(server.address, token=TOKEN) as replay, MarketDataClient(server.address) as grpc_port, native(server) as native_port:
            deadline = time.monotonic() + STEP
            while len(await grpc_port.list_instruments()) < 3:  # the file's three, seen
                assert time.monotonic() < deadline, "the replay never showed the file's three books"
                await asyncio.sleep(0.05)
            await asyncio.wait_for(replay.pause(), STEP)
            books = 3
            for request in ({"depth": 5}, {"depth": 0, "include_orders": True}, {"depth": 3, "combine_books": True}):
                over_grpc = await first_messages(grpc_port, books, **request)
                over_native = await first_messages(native_port, books, **request)
                assert all(m.is_snapshot for m in over_native), request
                assert sorted(map(without_ts_out, over_native)) == sorted(map(without_ts_out, over_grpc)), request
            await asyncio.wait_for(replay.resume(), STEP)
            # Live again: the native stream moves on past its snapshots, like the gRPC one.
            live = await first_messages(native_port, books + 20, depth=5)
            assert not live[-1].is_snapshot and live[-1].book.bids

    asyncio.run(scenario())


def test_mistakes_get_the_grpc_ports_status_codes(server: ServeProcess) -> None:
    async def scenario() -> None:
        async with native(server) as client:
            with pytest.raises(InstrumentNotFoundError) as unknown:
                await first_messages(client, 1, instruments=["NO-SUCH-SYMBOL"])
            assert unknown.value.code is grpc.StatusCode.NOT_FOUND and "NO-SUCH-SYMBOL" in unknown.value.details
            with pytest.raises(InvalidRequestError) as invalid:
                await first_messages(client, 1, max_updates_per_second=-1.0)
            assert invalid.value.code is grpc.StatusCode.INVALID_ARGUMENT and "max_updates_per_second" in invalid.value.details
        # Bytes that are no StreamBookRequest, and a method this port does not serve.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.book_port}") as channel:
            garbage = channel.unary_stream(STREAM_BOOK)(b"\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await asyncio.wait_for(garbage.read(), STEP)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            other = channel.unary_unary("/mbostream.v1.MarketDataService/ListInstruments")(b"")
            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await asyncio.wait_for(other, STEP)
            assert unimplemented.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "not served on this port" in (unimplemented.value.details() or "")

    asyncio.run(scenario())


def test_native_streams_count_against_the_stream_limits(tmp_path: Path, generated_small: Path) -> None:
    """One stream allowed: held on the gRPC port, a native one is refused; released, it is let in."""
    limited = start(tmp_path, [generated_small], "--rate", "20000", "--loop", "--max-streams", "1")
    try:

        async def scenario() -> None:
            async with MarketDataClient(limited.address) as grpc_port, native(limited) as native_port:
                held = grpc_port.stream_events()
                assert len(await asyncio.wait_for(held.__anext__(), STEP))
                with pytest.raises(StreamLimitError) as over:
                    await first_messages(native_port, 1)
                assert over.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                await held.aclose()
                # The limit is a count of open streams: the closed one frees its place.
                deadline = time.monotonic() + STEP
                while True:
                    try:
                        assert (await first_messages(native_port, 1))[0].is_snapshot
                        break
                    except StreamLimitError:
                        assert time.monotonic() < deadline, "the closed stream never freed its place"
                        await asyncio.sleep(0.1)

        asyncio.run(scenario())
    finally:
        limited.stop()


def test_a_client_that_stops_reading_gets_fresh_books_after_not_a_backlog(server: ServeProcess) -> None:
    """A reader that stops for 5 s: what it finds queued when it reads again is bounded by the
    HTTP/2 windows and the transport's high-water mark, whatever the stall, and the messages after
    say how many book states it missed (conflated). Full books with their orders (kilobytes each)
    fill the bound within the stall even when a busy machine stretches the refresh."""
    # No BDP probing: the client's windows stay at HTTP/2's 64 KiB, so the bound is known.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]

    async def scenario() -> None:
        async with native(server, options=options) as client:
            stream = client.stream_book(depth=0, include_orders=True)
            sizes = [len((await asyncio.wait_for(stream.__anext__(), STEP)).SerializeToString()) for _ in range(8)]
            await asyncio.sleep(5.0)
            resumed = time.time_ns()
            stale_bytes = stale = conflated = 0
            while True:
                message = await asyncio.wait_for(stream.__anext__(), STEP)
                conflated += message.conflated
                if message.ts_out >= resumed:
                    break
                stale += 1
                stale_bytes += len(message.SerializeToString())
            for _ in range(20):  # the books after: the states skipped meanwhile are counted there
                conflated += (await asyncio.wait_for(stream.__anext__(), STEP)).conflated
            await stream.aclose()
            # 64 KiB stream window + 64 KiB connection window + the high-water mark, half as much
            # again for the client's own buffers and framing, and the message that crossed the mark.
            bound = 3 * (2 * 64 * 1024 + HIGH_WATER) // 2 + 2 * max(sizes)
            assert stale_bytes <= bound, f"{stale} stale messages, {stale_bytes} bytes, queued for a reader that stopped (bound {bound})"
            assert conflated > 0, f"the missed book states were not counted as conflated ({stale} stale messages, {stale_bytes} bytes)"

    asyncio.run(scenario())


def test_live_books_go_out_by_channel_with_the_grpc_ports_bytes(generated_small: Path) -> None:
    """A plain native stream (one message per book, no rate limit) is moved to delivery by channel
    once its first books are out: the refresh publishes each book once for all such streams and
    the transport appends each call's own bytes. What they get live is what the gRPC port sends
    for the same book state (the book, the epoch; ts_out and the per-client conflation count
    aside), every book state in order, no state twice; a paced native stream too, at its rate."""

    async def collect(stream: object, until: float) -> list[pb.StreamBookResponse]:
        messages = []
        while time.monotonic() < until:
            messages.append(await asyncio.wait_for(stream.__anext__(), STEP))  # type: ignore[attr-defined]
        await stream.aclose()  # type: ignore[attr-defined]
        return messages

    async def scenario() -> None:
        s = settings(files=(str(generated_small),), rate=20_000.0, loop=True, book_port=0)
        async with in_process(s) as (app, _channel):
            hub = app.hub
            async with MarketDataClient(f"127.0.0.1:{app.port}") as grpc_port, MarketDataClient(f"127.0.0.1:{app.book_port}") as native_port:
                instrument = (await grpc_port.list_instruments())[0].instrument_id
                until = time.monotonic() + 2.0
                streams = [native_port.stream_book([instrument], depth=5) for _ in range(2)]
                paced = native_port.stream_book([instrument], depth=5, max_updates_per_second=50)
                over_grpc, *over_native, over_paced = await asyncio.gather(
                    collect(grpc_port.stream_book([instrument], depth=5), until),
                    *(collect(stream, until) for stream in streams),
                    collect(paced, until + 0.2),
                )
        grpc_books = {m.book.replay_sequence: m for m in over_grpc}
        for messages in (*over_native, over_paced):
            assert messages[0].is_snapshot and not any(m.is_snapshot for m in messages[1:])
            sequences = [m.book.replay_sequence for m in messages]
            assert sequences == sorted(set(sequences)), "a book state twice, or out of order"
            assert len(messages) > 10, len(messages)
            common = [m for m in messages[1:] if m.book.replay_sequence in grpc_books]
            assert len(common) >= 5, (len(common), len(messages), len(grpc_books))
            for message in common:
                twin = grpc_books[message.book.replay_sequence]
                assert message.epoch == twin.epoch == hub.epoch and message.epoch
                assert message.book.SerializeToString(deterministic=True) == twin.book.SerializeToString(deterministic=True)
        assert len(over_paced) <= 50 * 2.2 + 2, f"{len(over_paced)} messages in 2.2 s at 50/s"

    asyncio.run(scenario())


def test_native_streams_are_delivered_by_channel_and_leave_it_when_they_end(generated_small: Path) -> None:
    """The hub hands a native stream's books to the transport by channel (one publication for
    every such stream), a paced one's too (the transport paces it); ended, none is left anywhere."""

    async def scenario() -> None:
        async with three_books(generated_small) as app:
            hub = app.hub
            async with MarketDataClient(f"127.0.0.1:{app.book_port}") as native_port:
                plain = [native_port.stream_book(depth=3) for _ in range(3)]
                paced = native_port.stream_book(depth=3, max_updates_per_second=20)
                books = len(list(hub.market.books()))
                for stream in (*plain, paced):  # every book's first message
                    for _ in range(books):
                        assert (await asyncio.wait_for(stream.__anext__(), STEP)).is_snapshot
                for stream in plain:  # then books keep coming, by channel
                    for _ in range(3 * books):
                        message = await asyncio.wait_for(stream.__anext__(), STEP)
                        assert not message.is_snapshot and message.epoch == hub.epoch
                channels = [c for c in hub.channels.values() if c.depth == 3]
                assert channels and all(len(c.fanout) == sum(c.groups.values()) == sum(c.sinks.values()) == 4 and c.topic for c in channels), [(len(c.fanout), c.topic) for c in channels]
                assert not any(c.subscribers for c in channels), "a stream left per subscriber"
                # Every native stream goes through the transport: none is the loop's to send, so a
                # late loop does not stretch the refresh; a stream on the gRPC port is.
                assert hub.loop_streams == 0 and len(hub.book_subscribers) == 4
                async with MarketDataClient(f"127.0.0.1:{app.port}") as grpc_port:
                    on_loop = grpc_port.stream_book(depth=3)
                    assert (await asyncio.wait_for(on_loop.__anext__(), STEP)).is_snapshot
                    assert hub.loop_streams == 1 and len(hub.book_subscribers) == 5
                    await on_loop.aclose()
                    deadline = time.monotonic() + STEP
                    while hub.loop_streams:
                        assert time.monotonic() < deadline, "the gRPC port's stream outlived its client"
                        await asyncio.sleep(0.01)
                for stream in (*plain, paced):
                    await stream.aclose()
                deadline = time.monotonic() + STEP
                while hub.book_subscribers:
                    assert time.monotonic() < deadline, "the streams outlived their clients"
                    await asyncio.sleep(0.01)
                assert not [c for c in hub.channels.values() if c.depth == 3]
                assert all(not c.groups and not c.fanout and not c.sinks for c in channels), "a channel kept a stream that ended"
                assert hub.loop_streams == 0

    asyncio.run(scenario())


def test_combined_native_streams_go_out_by_channel_one_message_a_refresh(generated_small: Path) -> None:
    """A ``combine_books`` native stream is delivered by channel too: after its snapshots, each
    message the transport makes carries the books that changed (each once, in ``books``), the
    epoch, and book states as the gRPC port's combined stream has them, every state of a book in
    order and none twice; the loop publishes each book once for all such streams."""

    async def collect(stream: object, until: float) -> list[pb.StreamBookResponse]:
        messages = []
        while time.monotonic() < until:
            messages.append(await asyncio.wait_for(stream.__anext__(), STEP))  # type: ignore[attr-defined]
        return messages

    async def scenario() -> None:
        async with three_books(generated_small) as app:
            hub = app.hub
            async with MarketDataClient(f"127.0.0.1:{app.port}") as grpc_port, MarketDataClient(f"127.0.0.1:{app.book_port}") as native_port:
                streams = [native_port.stream_book(depth=5, combine_books=True) for _ in range(2)]
                on_grpc = grpc_port.stream_book(depth=5, combine_books=True)
                until = time.monotonic() + 2.0
                *over_native, over_grpc = await asyncio.gather(*(collect(stream, until) for stream in (*streams, on_grpc)))
                channels = [c for c in hub.channels.values() if c.depth == 5]
                assert len(channels) == 3 and all(len(c.fanout) == 2 and len(c.subscribers) == 1 for c in channels), [
                    (len(c.fanout), len(c.subscribers)) for c in channels
                ]
                for stream in (*streams, on_grpc):
                    await stream.aclose()
        grpc_books = {(b.instrument_id, b.replay_sequence): b for m in over_grpc for b in [m.book, *m.books] if m.book.instrument_id or m.books}
        for messages in over_native:
            snapshots = [m for m in messages if m.is_snapshot]
            assert len(snapshots) == 3 and messages[:3] == snapshots, "the snapshots first, one a book"
            combined = messages[3:]
            assert len(combined) > 10, len(combined)
            assert all(m.books and not m.HasField("book") and m.epoch == hub.epoch and m.ts_out > 0 for m in combined)
            assert any(len(m.books) > 1 for m in combined), "no message combined two books"
            last: dict[int, int] = {s.book.instrument_id: s.book.replay_sequence for s in snapshots}
            common = 0
            for message in combined:
                instruments = [b.instrument_id for b in message.books]
                assert len(set(instruments)) == len(instruments), "a book twice in one message"
                for book in message.books:
                    assert book.replay_sequence > last[book.instrument_id], "a book state twice, or out of order"
                    last[book.instrument_id] = book.replay_sequence
                    twin = grpc_books.get((book.instrument_id, book.replay_sequence))
                    if twin is not None:
                        common += 1
                        assert book.SerializeToString(deterministic=True) == twin.SerializeToString(deterministic=True)
            assert common >= 5, common

    asyncio.run(scenario())


def test_max_updates_per_second_paces_native_streams_and_counts_what_it_skips(server: ServeProcess) -> None:
    """A client asking for 10 updates a second of a book that changes every few ms gets about 10,
    never faster than its limit, each counting the book states it skipped (the transport keeps the
    limit: its slot for the call conflates between two writes, and counts what it replaced)."""
    rate = 10.0

    async def scenario() -> None:
        async with native(server) as client, MarketDataClient(server.address) as grpc_port:
            instrument = (await grpc_port.list_instruments())[0].instrument_id
            stream = client.stream_book([instrument], max_updates_per_second=rate)
            first = await asyncio.wait_for(stream.__anext__(), STEP)
            assert first.is_snapshot
            arrivals, conflated = [], 0
            window_end = time.monotonic() + 2.0
            while time.monotonic() < window_end:
                message = await asyncio.wait_for(stream.__anext__(), STEP)
                arrivals.append(time.monotonic())
                conflated += message.conflated
                assert not message.is_snapshot and message.book.instrument_id == instrument
            await stream.aclose()
            gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
            assert 8 <= len(arrivals) <= 2.0 * rate + 2, f"{len(arrivals)} messages in 2 s at {rate}/s"
            assert gaps[len(gaps) // 2] >= 0.8 / rate, f"median gap {gaps[len(gaps) // 2] * 1e3:.1f} ms at {rate}/s"
            assert conflated > len(arrivals), f"only {conflated} skipped book states counted over {len(arrivals)} messages"

    asyncio.run(scenario())


def test_shutdown_ends_native_streams_with_unavailable(tmp_path: Path, generated_small: Path) -> None:
    stopping = start(tmp_path, [generated_small], "--rate", "20000", "--loop")
    try:

        async def scenario() -> None:
            async with native(stopping) as client:
                stream = client.stream_book()
                await asyncio.wait_for(stream.__anext__(), STEP)
                stopping.signal()
                with pytest.raises(ServerUnavailableError) as ended:
                    while True:
                        await asyncio.wait_for(stream.__anext__(), STEP)
                assert "shutting down" in ended.value.details

        asyncio.run(scenario())
        assert stopping.wait(STEP) == 0
    finally:
        stopping.stop()


class _Thread(NamedTuple):
    tid: int
    ran_ns: int  # how long it has run so far


def _transport_threads(pid: int) -> dict[str, _Thread]:
    """The server's transport threads by name."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            if name.startswith("mbostream-h2"):
                threads[name] = _Thread(int(task.name), int((task / "schedstat").read_text().split()[0]))
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return threads


def start_transport_threads(tmp_path: Path, file: Path, threads: int, *args: str) -> ServeProcess:
    """A server looping ``file`` at 20,000 records/s with ``threads`` transport threads, returned
    once all of them run (a thread names itself once it does)."""
    served = start(tmp_path, [file], "--rate", "20000", "--loop", "--book-threads", str(threads), *args)
    try:
        assert served.process is not None
        deadline = time.monotonic() + STEP
        while len(_transport_threads(served.process.pid)) < threads:
            assert time.monotonic() < deadline, _transport_threads(served.process.pid)
            time.sleep(0.01)
    except BaseException:
        served.stop()
        raise
    return served


def test_book_threads_deal_connections_out_and_each_serves_its_own(tmp_path: Path, generated_small: Path) -> None:
    """``--book-threads 4`` runs four transport threads; three clients, each on a connection of its
    own, land on the first three (dealt out in turn) and each thread writes its client's books, the
    fourth idle; at shutdown every stream, whichever thread holds it, ends with UNAVAILABLE."""
    served = start_transport_threads(tmp_path, generated_small, 4)
    try:
        assert served.process is not None
        pid = served.process.pid
        assert sorted(_transport_threads(pid)) == [f"mbostream-h2-{n}" for n in range(4)]

        async def scenario() -> None:
            clients = [native(served, own_connection=True) for _ in range(3)]
            try:
                streams = []
                for client in clients:  # one at a time: the connections arrive in this order
                    stream = client.stream_book(depth=5)
                    assert (await asyncio.wait_for(stream.__anext__(), STEP)).is_snapshot
                    streams.append(stream)
                before = _transport_threads(pid)
                counts = [0, 0, 0]
                until = time.monotonic() + 1.5
                while time.monotonic() < until:
                    for n, stream in enumerate(streams):
                        message = await asyncio.wait_for(stream.__anext__(), STEP)
                        counts[n] += not message.is_snapshot
                ran = {name: _transport_threads(pid)[name].ran_ns - before[name].ran_ns for name in before}
                assert all(count >= 20 for count in counts), counts
                # The three with a client each ran while they wrote books; the fourth, with none,
                # hardly at all (no connection ever reached it).
                busy = [ran[f"mbostream-h2-{n}"] for n in range(3)]
                assert min(busy) > 20 * ran["mbostream-h2-3"] and min(busy) > 200_000, ran
                served.signal()
                for stream in streams:
                    with pytest.raises(ServerUnavailableError) as ended:
                        while True:
                            await asyncio.wait_for(stream.__anext__(), STEP)
                    assert "shutting down" in ended.value.details
            finally:
                for client in clients:
                    await client.close()

        asyncio.run(scenario())
        assert served.wait(STEP) == 0
    finally:
        served.stop()


def _may_sched_fifo(priority: int) -> bool:
    """Whether this process may put threads under SCHED_FIFO at ``priority``: CAP_SYS_NICE (bit
    23 of the effective set) or an RLIMIT_RTPRIO at least that high."""
    effective = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    return bool(int(effective.split()[1], 16) >> 23 & 1) or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= priority


def test_book_thread_priority_puts_the_transport_threads_under_sched_fifo(tmp_path: Path, generated_small: Path) -> None:
    """``--book-thread-priority 7`` with two transport threads: both run under SCHED_FIFO at 7,
    the event loop's thread as before, and books flow. A server without CAP_SYS_NICE (dropped with
    setpriv; RLIMIT_RTPRIO is 0) refuses to start, naming the flag and what it needs."""
    if not _may_sched_fifo(7):
        pytest.skip("this process may not use SCHED_FIFO (no CAP_SYS_NICE, RLIMIT_RTPRIO below 7)")
    served = start_transport_threads(tmp_path, generated_small, 2, "--book-thread-priority", "7")
    try:
        assert served.process is not None
        pid = served.process.pid
        tids = [thread.tid for thread in _transport_threads(pid).values()]
        assert [(os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority) for tid in tids] == [(os.SCHED_FIFO, 7)] * 2
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER

        async def books() -> list[pb.StreamBookResponse]:
            client = native(served)
            try:
                return await first_messages(client, 40, depth=5)  # the snapshots, then live books
            finally:
                await client.close()

        live = asyncio.run(books())
        assert not live[-1].is_snapshot and live[-1].book.bids
    finally:
        served.stop()

    refused = subprocess.run(
        ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-m", "mbostream.cli", "--log-format", "text",
         "serve", str(generated_small), "--no-store", "--port", "0", "--metrics-port", "-1", "--book-port", "0", "--book-thread-priority", "7"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "--book-thread-priority" in refused.stderr and "CAP_SYS_NICE" in refused.stderr, refused.stderr[-3000:]


def test_tls_material_the_transport_cannot_use_is_refused_at_once() -> None:
    """The transport checks its TLS material before it binds (the app reports it as a setting error)."""
    limits = {
        "max_request_bytes": 1024, "high_water": 10, "low_water": 5, "max_concurrent_streams": 1,
        "keepalive_interval": 30.0, "keepalive_timeout": 10.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="TLS certificate chain"):
        StreamServer("127.0.0.1", 0, [STREAM_BOOK], **limits, tls_cert_chain=b"not PEM", tls_key=b"nor this")
    with pytest.raises(ValueError, match="tls_cert_chain and tls_key"):
        StreamServer("127.0.0.1", 0, [STREAM_BOOK], **limits, tls_client_ca=b"a CA alone")
