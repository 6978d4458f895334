"""The bus roles (issue 14): a real nats-server, real ``mbostream replay`` and ``gateway`` processes.

Each test starts its own NATS server (free port, temp store) and its own role processes, and stops
them by PID. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats as nats_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.errors import NotFoundError

from mbostream.bus.codec import Meta
from mbostream.bus.ingest import BusFeed
from mbostream.bus.streams import (
    FIRST_SEQ,
    LAST_SEQ,
    META_STREAM,
    META_SUBJECT,
    READ_BUFFER_BYTES,
    RECORDS_STREAM,
    RECORDS_SUBJECT,
    connect,
)
from mbostream.hub import Hub
from mbostream.server.wire import ProtobufBookEncoder, ProtobufEventEncoder
from mbostream_core.market import Market
from mbostream_core.synth import generate_file
from mbostream_core.v1 import market_data_pb2 as md
from mbostream_core.v1 import replay_pb2
from nats_harness import NatsServer, nats_call, nats_server
from server_harness import AUTH, RPC_TIMEOUT, ServeProcess, free_port, repo, run, stubs

#: Records of the file these tests replay (4 instruments).
RECORDS = 120_000
#: Positions on the bus before the late gateway starts (560 MB of stream, under its 1 GiB limit).
LATE_BACKLOG = 10_000_000


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bus") / "feed.mbo.dbn"
    generate_file(path, records=RECORDS, instruments=4, seed=7)
    return path


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path) as server:
        yield server


def role(command: str, *args: str, tmp_path: Path, name: str) -> ServeProcess:
    return ServeProcess(*args, command=command, log_path=tmp_path / f"{name}.log")


def replayer(nats: NatsServer, feed: Path, tmp_path: Path, *args: str, name: str = "replay") -> ServeProcess:
    return role("replay", str(feed), "--nats", nats.url, "--no-store", *args, tmp_path=tmp_path, name=name).start()


def gateway(nats: NatsServer, tmp_path: Path, *args: str, name: str = "gateway") -> ServeProcess:
    return role("gateway", "--nats", nats.url, *args, tmp_path=tmp_path, name=name).start()


def _scrape(port: int) -> dict[str, float]:
    """A role's Prometheus series, ``name{labels}`` → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


def _channel(process: ServeProcess) -> grpc.Channel:
    return grpc.insecure_channel(process.address)


def books(process: ServeProcess) -> dict[tuple[int, int], md.GetBookResponse]:
    """Every book of a server, full depth with queues."""
    with _channel(process) as channel:
        market = stubs(channel)[0]
        listed = market.ListInstruments(md.ListInstrumentsRequest(), timeout=RPC_TIMEOUT).instruments
        return {
            (i.instrument_id, i.publisher_id): market.GetBook(
                md.GetBookRequest(instrument_id=i.instrument_id, publisher_id=i.publisher_id, include_orders=True),
                timeout=RPC_TIMEOUT,
            )
            for i in listed
        }


def wait_position(process: ServeProcess, position: int, timeout: float = 60) -> None:
    """Until every book of the server says it is at replay ``position``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = books(process)
        if got and all(b.book.replay_sequence == position for b in got.values()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{process.command} never reached position {position}")


def finished_position(process: ServeProcess, timeout: float = 120) -> int:
    """The replayer's position once its replay finished."""
    deadline = time.monotonic() + timeout
    with _channel(process) as channel:
        control = stubs(channel)[1]
        while time.monotonic() < deadline:
            status = control.GetStatus(replay_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT, metadata=AUTH).status
            if status.state == replay_pb2.REPLAY_STATE_FINISHED:
                return int(status.replay_sequence)
            time.sleep(0.1)
    raise TimeoutError("the replay never finished")


def replay_position(process: ServeProcess) -> int:
    with _channel(process) as channel:
        status = stubs(channel)[1].GetStatus(replay_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT, metadata=AUTH).status
        return int(status.replay_sequence)


def positions(channel: grpc.Channel, after: int, until: int, *, deadline: float, resumes: list[int]) -> list[int]:
    """Every record's replay position from StreamEvents after ``after`` up to ``until``; a stream
    that breaks is resumed with ``start_after_sequence`` (each resume point goes to ``resumes``)."""
    market = stubs(channel)[0]
    seen: list[int] = []
    last = after
    while last < until:
        assert time.monotonic() < deadline, f"stream reached {last} of {until} in time"
        call = market.StreamEvents(md.StreamEventsRequest(start_after_sequence=last), timeout=max(1.0, deadline - time.monotonic()))
        try:
            for message in call:
                seen.extend(message.replay_sequence)
                if message.replay_sequence:
                    last = message.replay_sequence[-1]
                if last >= until:
                    call.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
                raise
            resumes.append(last)
            time.sleep(0.2)
    return seen


async def first_position(url: str) -> int:
    """The replay position of the oldest record the record stream still holds."""
    nc = await nats_call(nats_client.connect(url))
    try:
        js = nc.jetstream()
        first = (await nats_call(js.stream_info(RECORDS_STREAM))).state.first_seq
        return int((await nats_call(js.get_msg(RECORDS_STREAM, seq=first))).headers[FIRST_SEQ])
    finally:
        await nats_call(nc.close())


def test_late_gateway_books_are_identical_to_the_other_gateway_and_to_serve(nats, feed, tmp_path) -> None:
    """Test 2: a gateway started before the replay and one started after it finished hold
    byte-identical books, equal to the embedded ``serve`` of the same file at the same position."""
    replay = replayer(nats, feed, tmp_path, "--rate", "200000")
    early = gateway(nats, tmp_path, name="early")
    embedded = role("serve", str(feed), "--max", "--no-store", tmp_path=tmp_path, name="serve").start()
    try:
        final = finished_position(replay)
        assert final == RECORDS
        late = gateway(nats, tmp_path, name="late")
        try:
            for process in (early, late, embedded):
                wait_position(process, final)
            early_books, late_books, served = books(early), books(late), books(embedded)
            assert len(early_books) == 4
            assert {k: v.SerializeToString() for k, v in early_books.items()} == {
                k: v.SerializeToString() for k, v in late_books.items()
            }
            replayed = books(replay)
            assert {k: v.book.SerializeToString() for k, v in replayed.items()} == {
                k: v.book.SerializeToString() for k, v in early_books.items()
            }
            # serve is another run (another epoch): its books are the same, field for field.
            assert {k: v.book.SerializeToString() for k, v in served.items()} == {
                k: v.book.SerializeToString() for k, v in early_books.items()
            }
        finally:
            late.stop()
    finally:
        for process in (embedded, early, replay):
            process.stop()


def test_snapshot_cold_start_after_retention_dropped_the_start(nats, feed, tmp_path) -> None:
    """A gateway started once retention dropped the stream's start builds from the book snapshots
    (records + the book's saved statistics) and the records after them: its books equal the
    replayer's at the same position, levels, queues and statistics (volume, trades, last trade)."""
    replay = replayer(
        nats, feed, tmp_path, "--rate", "100000", "--bus-max-bytes", str(1 << 20), "--snapshot-interval-seconds", "0.2"
    )
    try:
        final = finished_position(replay)
        time.sleep(1.0)  # a snapshot round after the end
        late = gateway(nats, tmp_path, name="late")
        try:
            wait_position(late, final)
            assert run(first_position(nats.url)) > 1  # retention did drop the start: snapshots were needed
            replayed, rebuilt = books(replay), books(late)
            assert rebuilt.keys() == replayed.keys()
            for key, book in replayed.items():
                assert rebuilt[key].book == book.book, key
            assert any(b.book.volume for b in replayed.values())
        finally:
            late.stop()
    finally:
        replay.stop()


def test_cold_start_begins_at_the_snapshots_even_when_the_stream_starts_at_position_1(nats, feed, tmp_path) -> None:
    """With a snapshot round stored, a new gateway starts from it (a snapshot interval of records to
    apply), not by re-applying the whole stream although it still begins at position 1: its books
    equal the replayer's at the end, statistics included."""
    replay = replayer(nats, feed, tmp_path, "--rate", "100000", "--snapshot-interval-seconds", "0.2")
    try:
        deadline = time.monotonic() + 60
        while replay_position(replay) < RECORDS // 2:
            assert time.monotonic() < deadline, "the replay never got halfway"
            time.sleep(0.1)
        late = ServeProcess("--nats", nats.url, command="gateway", log_path=tmp_path / "late.log", log_level="info").start()
        try:
            final = finished_position(replay)
            wait_position(late, final)
            assert run(first_position(nats.url)) == 1  # the whole run is still on the stream
            log = (tmp_path / "late.log").read_text()
            assert "gateway cold start from snapshots" in log, log[-3000:]
            replayed, rebuilt = books(replay), books(late)
            assert rebuilt.keys() == replayed.keys()
            for key, book in replayed.items():
                assert rebuilt[key].book == book.book, key
        finally:
            late.stop()
    finally:
        replay.stop()


def test_a_gateway_keeps_the_retention_the_replayer_set(nats, feed, tmp_path) -> None:
    """The replayer sizes the record stream (--bus-max-bytes); a gateway started after it with the
    default 1 GiB must not shrink it (it once did, and retention then dropped the run's start under
    a replay sized for it); a replayer restarted with another size does resize it."""

    async def limits() -> int:
        nc = await nats_call(connect(nats.url, name="test-limits"), 20)
        try:
            return int((await nats_call(nc.jetstream().stream_info(RECORDS_STREAM))).config.max_bytes)
        finally:
            await nats_call(nc.close())

    sized = 3 << 30
    replay = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop", "--bus-max-bytes", str(sized))
    try:
        assert run(limits()) == sized
        late = gateway(nats, tmp_path)
        try:
            assert late.port and run(limits()) == sized  # started: it has declared the streams
        finally:
            late.stop()
    finally:
        replay.stop()
    again = replayer(nats, feed, tmp_path, "--rate", "20000", "--bus-max-bytes", str(2 << 30), name="replay-2")
    try:
        assert run(limits()) == 2 << 30
    finally:
        again.stop()


def test_nats_killed_and_restarted_no_gap_no_duplicate(nats, feed, tmp_path) -> None:
    """Test 3: kill -9 the NATS server mid-replay and restart it on its store: a StreamEvents
    client of a gateway gets every position exactly once, in order."""
    replay = replayer(nats, feed, tmp_path, "--rate", "15000")
    gw = gateway(nats, tmp_path)
    try:
        time.sleep(1.5)
        nats.kill()
        time.sleep(1.0)
        nats.restart()
        final = finished_position(replay, timeout=120)
        resumes: list[int] = []
        with _channel(gw) as channel:
            seen = positions(channel, 0, final, deadline=time.monotonic() + 120, resumes=resumes)
        assert seen == list(range(1, final + 1))
        assert final == RECORDS
        # The bus really went away under both roles.
        assert "bus disconnected" in replay.log_path.read_text() and "bus disconnected" in gw.log_path.read_text()
    finally:
        gw.stop()
        replay.stop()


def test_nats_killed_under_a_live_stream(nats, feed, tmp_path) -> None:
    """Test 3, with the client reading while the bus dies and comes back."""
    import threading

    replay = replayer(nats, feed, tmp_path, "--rate", "15000")
    gw = gateway(nats, tmp_path)
    try:

        def bounce() -> None:
            time.sleep(2.0)
            nats.kill()
            time.sleep(1.0)
            nats.restart()

        bouncer = threading.Thread(target=bounce)
        bouncer.start()
        resumes: list[int] = []
        with _channel(gw) as channel:
            seen = positions(channel, 0, RECORDS, deadline=time.monotonic() + 120, resumes=resumes)
        bouncer.join(30)
        assert seen == list(range(1, RECORDS + 1))
        assert "bus disconnected" in replay.log_path.read_text() and "bus disconnected" in gw.log_path.read_text()
    finally:
        gw.stop()
        replay.stop()


def test_second_replayer_is_refused_and_exits_2(nats, feed, tmp_path) -> None:
    """Test 4: while one replayer publishes, a second one starts: exactly one of them keeps the
    stream and the other exits 2 with one clear error line. It is the second, unless the first was
    stalled long enough for the second's first publish to land before its next one (a loaded
    machine): the first is then the stale writer, refused the same way (single writer either way:
    JetStream's expected-last-sequence check decides, never both)."""
    first = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop")  # publishing all along
    command = [
        sys.executable, "-m", "mbostream.cli", "--log-level", "error", "--log-format", "text",
        "replay", str(feed), "--nats", nats.url, "--no-store", "--rate", "20000", "--loop",
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
    ]  # fmt: skip
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=repo())
    try:
        assert first.process is not None
        deadline = time.monotonic() + 90
        while first.process.poll() is None and second.poll() is None:
            assert time.monotonic() < deadline, "neither replayer was refused within 90 s"
            time.sleep(0.1)
        if second.poll() is not None:  # the usual case: the newcomer is refused
            assert second.returncode == 2, second.stderr.read() if second.stderr else ""
            assert second.stderr is not None
            lines = second.stderr.read().strip().splitlines()
            assert len(lines) == 1, lines
            assert "another replayer is publishing" in lines[0]
            before = replay_position(first)
            time.sleep(0.5)
            assert first.process.poll() is None and replay_position(first) > before  # the first goes on
        else:  # the first was stalled: it is the stale writer, refused; the second goes on
            assert first.process.returncode == 2
            assert "another replayer is publishing" in first.log_path.read_text()
            time.sleep(1.0)
            assert second.poll() is None, "the second replayer stopped too: the stream has no writer"
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=30)
        first.stop()


def test_a_stalled_replayer_is_the_stale_writer_once_another_publishes(nats, feed, tmp_path) -> None:
    """The other side of test 4: a replayer frozen (SIGSTOP) while a second one starts and
    publishes is the stale writer; when it wakes it is refused and exits 2 with the conflict error,
    and the second keeps the stream. Never two writers."""
    first = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop")
    second: ServeProcess | None = None
    assert first.process is not None
    try:
        first.process.send_signal(signal.SIGSTOP)
        second = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop", name="replay-2")
        deadline = time.monotonic() + 60
        while replay_position(second) < 1_000:  # the second publishes while the first is frozen
            assert time.monotonic() < deadline, "the second replayer did not publish"
            time.sleep(0.1)
        first.process.send_signal(signal.SIGCONT)
        assert first.process.wait(timeout=60) == 2
        assert "another replayer is publishing" in first.log_path.read_text()
        before = replay_position(second)
        time.sleep(0.5)
        assert second.process is not None and second.process.poll() is None
        assert replay_position(second) > before  # the second goes on
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.process.send_signal(signal.SIGCONT)
        if second is not None:
            second.stop()
        first.stop()


def test_resume_older_than_the_gateways_memory_is_served_from_the_stream(nats, feed, tmp_path) -> None:
    """Test 5: a gateway that keeps 1,000 records in memory serves a resume from position 10
    out of the stream, then live: contiguous."""
    replay = replayer(nats, feed, tmp_path, "--rate", "100000", "--metrics-port", "0")
    gw = gateway(nats, tmp_path, "--replay-buffer-records", "1000", "--metrics-port", "0")
    try:
        final = finished_position(replay)
        wait_position(gw, final)
        with _channel(gw) as channel:
            market = stubs(channel)[0]
            with pytest.raises(grpc.RpcError):  # the embedded rule still holds beyond the stream
                list(market.StreamEvents(md.StreamEventsRequest(start_after_sequence=final + 5), timeout=RPC_TIMEOUT))
            resumes: list[int] = []
            seen = positions(channel, 10, final, deadline=time.monotonic() + 60, resumes=resumes)
        assert seen == list(range(11, final + 1))
        assert not resumes
        # The bus series each role sets (what the Bus dashboard and BusLagHigh read).
        published = _scrape(replay.metrics_port)
        consumed = _scrape(gw.metrics_port)
        assert published["mbostream_bus_messages_published_total"] > 0
        assert consumed["mbostream_bus_messages_consumed_total"] >= published["mbostream_bus_messages_published_total"]
        assert consumed["mbostream_bus_pending_messages"] == 0
        assert consumed['mbostream_resumes_total{source="bus"}'] == 1
    finally:
        gw.stop()
        replay.stop()


def _health(address: str) -> int:
    """The server's gRPC health status (NOT_SERVING when it does not answer yet)."""
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.NOT_SERVING


def _gateway_position(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        listed = stubs(channel)[0].ListInstruments(md.ListInstrumentsRequest(), timeout=RPC_TIMEOUT).instruments
        if not listed:  # listening, but no book applied yet
            return 0
        first = listed[0]
        reply = stubs(channel)[0].GetBook(
            md.GetBookRequest(instrument_id=first.instrument_id, publisher_id=first.publisher_id, depth=1), timeout=RPC_TIMEOUT
        )
        return int(reply.book.replay_sequence)


def bus_position(url: str) -> int:
    """The last replay position the bus holds (the newest record message's last position): the
    replayer's own position runs ahead of it by what it has applied but not yet published."""

    async def read() -> int:
        nc = await nats_call(nats_client.connect(url))
        try:
            last = await nats_call(nc.jetstream().get_last_msg(RECORDS_STREAM, RECORDS_SUBJECT))
            return int((last.headers or {})[LAST_SEQ])
        finally:
            await nats_call(nc.close())

    return asyncio.run(read())


def _resume_code(address: str, after: int) -> grpc.StatusCode:
    """How a StreamEvents resume after ``after`` starts: OK once a batch arrived, else the error's code."""
    with grpc.insecure_channel(address) as channel:
        call = stubs(channel)[0].StreamEvents(md.StreamEventsRequest(start_after_sequence=after), timeout=30)
        try:
            for message in call:
                if message.replay_sequence:
                    assert message.replay_sequence[0] == after + 1
                    call.cancel()
                    return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
    raise AssertionError("the resume ended without a batch or an error")


def test_late_gateway_is_not_serving_until_it_is_at_the_live_edge(nats, feed, tmp_path) -> None:
    """A gateway started behind a long live stream reports SERVING only once it is near the
    replay's live edge, not when it reaches the stream's end as of its start (the replay moves on
    meanwhile). While it catches up, a resume it has not applied yet (but the bus holds) is
    retryable (UNAVAILABLE) or served after a short wait, never OUT_OF_RANGE; one beyond what the
    replayer published stays OUT_OF_RANGE."""
    # A backlog the late gateway needs seconds to apply (one applies millions of records a second
    # alone), built at --max; then a pace well under its ingest even on a loaded 2-core machine, so
    # it does catch up while the replay moves on.
    # No snapshot round (a cold start would begin at the latest one): the late gateway applies the
    # whole stream from position 1.
    replay = replayer(nats, feed, tmp_path, "--max", "--loop", "--snapshot-interval-seconds", "3600")
    late = role("gateway", "--nats", nats.url, tmp_path=tmp_path, name="late")
    late.requested_port = free_port()
    starting = threading.Thread(target=late.start, kwargs={"timeout": 240}, daemon=True)
    try:
        deadline = time.monotonic() + 120
        while replay_position(replay) < LATE_BACKLOG:
            assert time.monotonic() < deadline, f"the replay never reached {LATE_BACKLOG:,} positions"
            time.sleep(0.2)
        with _channel(replay) as channel:
            stubs(channel)[1].SetRate(replay_pb2.SetRateRequest(records_per_second=30_000), timeout=RPC_TIMEOUT, metadata=AUTH)
        at_start = replay_position(replay)
        started = time.monotonic()
        starting.start()
        address = f"127.0.0.1:{late.requested_port}"
        codes: list[grpc.StatusCode] = []
        while _health(address) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < started + 240, "the late gateway never reported SERVING"
            if not codes:  # once, while it is still catching up: a resume at the replay's edge
                with contextlib.suppress(grpc.RpcError):
                    behind = _gateway_position(address)
                    # What the bus holds, not the replayer's position: a resume beyond what was
                    # published is OUT_OF_RANGE, rightly (no client can have been served it).
                    edge = bus_position(nats.url)
                    if 0 < behind < edge - 50_000:
                        codes.append(_resume_code(address, edge))
            time.sleep(0.05)
        serving, edge = _gateway_position(address), replay_position(replay)
        took = time.monotonic() - started
        moved = edge - at_start
        print(f"late gateway SERVING after {took:.1f} s at {serving}, replay at {edge}, {moved} since its start; resume {codes}")
        assert took > 1.5 and moved > 50_000, f"the catch-up took {took:.1f} s ({moved} positions): too short to tell"
        # SERVING at the stream's end as of its start would leave it `moved` positions behind.
        assert edge - serving < moved / 3, f"SERVING at {serving} while the replay was at {edge} ({moved} since the start)"
        assert codes and codes[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK), codes
        assert _resume_code(address, replay_position(replay) + 10_000_000) == grpc.StatusCode.OUT_OF_RANGE
        starting.join(60)
    finally:
        late.stop()
        replay.stop()


async def _old_first_read_races(url: str, seconds: float) -> tuple[int, int]:
    """The cold start's old read (stream_info, then get_msg of its first_seq) repeated for
    ``seconds``: ``(attempts, NotFoundError count)`` — whether retention drops it in between here."""
    nc = await nats_call(nats_client.connect(url))
    attempts = missing = 0
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            first = (await nats_call(js.stream_info(RECORDS_STREAM))).state.first_seq
            attempts += 1
            try:
                await nats_call(js.get_msg(RECORDS_STREAM, seq=first))
            except NotFoundError:
                missing += 1
    finally:
        await nats_call(nc.close())
    return attempts, missing


async def _cold_starts(url: str, seconds: float) -> int:
    """The gateway's own cold start (BusFeed on a real Market and Hub) repeated for ``seconds``;
    every one must find the snapshots and a stream sequence to continue from. Their count."""
    nc = await nats_call(nats_client.connect(url))
    count = 0
    try:
        js = nc.jetstream()
        meta = Meta.decode((await nats_call(js.get_last_msg(META_STREAM, META_SUBJECT))).data)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            market = Market(meta.symbols)
            hub = Hub(
                market,
                event_encoder=ProtobufEventEncoder(meta.epoch),
                book_encoder=ProtobufBookEncoder(),
                replay_buffer_records=1000,
                subscriber_buffer_batches=10,
                max_streams=1,
                book_interval=0.0,
                epoch=meta.epoch,
            )
            ingest = BusFeed(nc, js, market, hub, epoch=meta.epoch)
            await nats_call(ingest._cold_start())  # its stream reads: NATS calls
            assert ingest.position > 0 and ingest._next_stream_seq > 1 and len(market.books()) == 4
            count += 1
    finally:
        await nats_call(nc.close())
    return count


def test_gateway_cold_starts_on_a_stream_at_its_byte_limit(nats, feed, tmp_path) -> None:
    """A stream at its byte limit loses its first message with every publish, also between the
    cold start's stream_info and its read of that message: gateways started on it cold-start from
    the snapshots and serve; none exits."""
    replay = replayer(
        nats, feed, tmp_path, "--rate", "20000", "--loop", "--bus-max-bytes", str(1 << 20), "--snapshot-interval-seconds", "0.2"
    )
    started: list[ServeProcess] = []
    try:
        deadline = time.monotonic() + 60
        dropped = False
        while not dropped:  # until retention has dropped the start
            assert time.monotonic() < deadline, "retention never dropped the stream's start"
            time.sleep(0.2)
            with contextlib.suppress(NotFoundError):  # the read races retention too
                dropped = run(first_position(nats.url)) > 1
        attempts, missing = run(_old_first_read_races(nats.url, 5.0))
        assert missing > 0, f"the first message never vanished in {attempts} reads: this stream does not race"
        assert run(_cold_starts(nats.url, 5.0), timeout=120) > 10
        for i in range(6):
            started.append(gateway(nats, tmp_path, name=f"gateway-{i}"))
        time.sleep(1.0)
        for process in started:
            assert process.process is not None and process.process.poll() is None, process.log_path.read_text()[-2000:]
            assert _health(process.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for process in started:
            process.stop()
        replay.stop()


def test_store_keeps_one_storage_sink_for_its_lifetime(nats, feed, tmp_path) -> None:
    """The store (spool only here) offers every round to one storage sink, started once and
    flushed durably each round (the log says "storage sink started" once, "stopped" once at exit,
    over many rounds); every record is stored and acknowledged, as with a sink per round."""
    replay = replayer(nats, feed, tmp_path, "--rate", "12000")  # 10 s: the store starts while it flows
    store = ServeProcess(
        "--nats", nats.url, "--spool-dir", str(tmp_path / "spool"), "--metrics-port", "0", "--ack-interval", "0.2",
        command="store", log_path=tmp_path / "store.log", log_level="info", env={"INFLUX_URL": ""},
    ).start(timeout=60)  # fmt: skip
    try:
        final = finished_position(replay)
        deadline = time.monotonic() + 60
        while (metrics := _scrape(store.metrics_port))["mbostream_store_acked_replay_seq"] < final:
            assert time.monotonic() < deadline, f"the store acknowledged {metrics['mbostream_store_acked_replay_seq']} of {final}"
            time.sleep(0.2)
        assert metrics["mbostream_store_records_total"] == final
        assert metrics["mbostream_store_rounds_total"] >= 5, metrics["mbostream_store_rounds_total"]
        # Every point formatted went to the spool (no database here), flushed round by round.
        assert metrics["mbostream_storage_points_spooled_total"] == metrics["mbostream_storage_points_formatted_total"] > 0
        assert store.stop() == 0
    finally:
        store.stop()
        replay.stop()
    log = store.log_path.read_text()
    assert log.count("storage sink started") == 1 and log.count("storage sink stopped") == 1, log[-3000:]


def test_bus_connections_read_a_record_message_in_few_socket_reads(nats: NatsServer) -> None:
    """Every connection of ours reads up to READ_BUFFER_BYTES per socket read (nats-py's 32 KiB
    default cost a gateway ~20% more CPU per record): its stream reader's limit says so, and a
    200 KB message published through it comes back whole."""
    import nats.aio.client as nats_aio

    async def check() -> tuple[int, int, bool]:
        nc = await nats_call(connect(nats.url, name="test-read-size"), 20)
        try:
            sub = await nats_call(nc.subscribe("test.read.size"))
            payload = bytes(range(256)) * 800
            await nats_call(nc.publish("test.read.size", payload))
            msg = await nats_call(sub.next_msg(timeout=10), 20)
            return nats_aio.DEFAULT_BUFFER_SIZE, nc._transport._io_reader._limit, msg.data == payload  # type: ignore[union-attr]
        finally:
            await nats_call(nc.close())

    size, limit, whole = run(check())
    assert size == limit == READ_BUFFER_BYTES and whole


def test_a_gateways_native_book_port_behind_the_edge_is_health_checked_on_its_grpc_port(nats, feed, tmp_path) -> None:
    """A gateway with ``--book-port`` behind the edge in gateway mode (compose's cluster profile,
    one gateway here): StreamBook is routed to the gateway's native port, whose host Envoy marks
    healthy by gRPC health on the gateway's gRPC port (the native port serves StreamBook only)."""
    from mbostream.edge.render import BOOK_CLUSTER
    from mbostream.edge.supervisor import Edge
    from mbostream_client import MarketDataClient

    replay = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop")
    gate = gateway(nats, tmp_path, "--book-port", "0")
    try:
        assert gate.book_port > 0

        def clusters(admin: str) -> str:
            with urllib.request.urlopen(f"{admin}/clusters", timeout=5) as reply:
                return str(reply.read().decode())

        async def scenario() -> None:
            edge = Edge(
                listen_port=0, upstream_port=gate.port, upstream_ports=(gate.port,), replayer_port=replay.port,
                static_dir=None, book_port=gate.book_port,
            )  # fmt: skip
            async with edge:
                host = f"{BOOK_CLUSTER}::127.0.0.1:{gate.book_port}::health_flags::"
                deadline = time.monotonic() + 30
                while f"{host}healthy" not in clusters(edge.admin_url):
                    assert time.monotonic() < deadline, clusters(edge.admin_url)
                    await asyncio.sleep(0.1)
                async with MarketDataClient(edge.url.removeprefix("http://")) as client:
                    stream = client.stream_book(depth=5)
                    try:
                        first = await asyncio.wait_for(stream.__anext__(), RPC_TIMEOUT)
                        assert first.is_snapshot and (first.book.bids or first.book.asks)
                    finally:
                        await stream.aclose()
                stats = clusters(edge.admin_url)
                assert f"{BOOK_CLUSTER}::127.0.0.1:{gate.book_port}::rq_total::1" in stats, stats

        run(scenario(), timeout=90)
    finally:
        gate.stop()
        replay.stop()
