"""The gRPC service against real servers on port 0: every RPC, errors, auth, streams, shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import shared_file
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from server_harness import (
    AUTH,
    RPC_TIMEOUT,
    ServeProcess,
    in_process,
    last_event_records,
    paced_records_slack,
    run,
    settings,
    stubs,
    wait_for,
)

from mbostream.metrics import METRICS
from mbostream_core.dbn import read_records
from mbostream_core.market import Market
from mbostream_core.v1 import market_data_pb2 as md
from mbostream_core.v1 import replay_pb2 as rp
from mbostream_client import decode_events


def batch_records(msg: md.StreamEventsResponse) -> np.ndarray:
    """A StreamEvents batch as engine records (the client's decoder: one decoder for the wire)."""
    return decode_events(msg).records


def levels(book) -> list:
    return [
        [(l.price, l.size, l.count, [(o.order_id, o.size) for o in l.orders]) for l in side]
        for side in (book.bids, book.asks)
    ]


def replica_levels(market: Market, key) -> list:
    view = market.view(key, orders=True)
    return [[(l.price, l.size, l.count, list(l.orders)) for l in side] for side in (view.bids, view.asks)]


def clx5_settings(**kw):
    return settings(files=(str(shared_file("CLX5_mbo.dbn")),), **kw)


def test_list_instruments_and_get_book() -> None:
    async def body() -> None:
        async with in_process(clx5_settings(pacing="max")) as (app, channel):
            market, _ = stubs(channel)
            await asyncio.wait_for(app.replayer.loaded.wait(), 10)
            await wait_for(lambda: _finished(app))
            listing = await market.ListInstruments(md.ListInstrumentsRequest(), timeout=5)
            (inst,) = listing.instruments
            assert (inst.symbol, inst.instrument_id, inst.publisher_id, inst.dataset) == ("CLX5", 432669, 1, "GLBX.MDP3")
            assert inst.record_count == 38212 and inst.order_count == 147 and inst.crossed
            book = (await market.GetBook(md.GetBookRequest(symbol="CLX5", depth=10), timeout=5)).book
            assert len(book.bids) == 10 and len(book.asks) == 10
            assert book.bid_level_count == 61 and book.ask_level_count == 52
            assert book.bbo.has_bid and book.bbo.bid_price == book.bids[0].price
            assert book.crossed and book.crossed_since_ts > 0
            assert book.anomaly_counts["cancel_unknown_order"] == 1224
            assert book.replay_sequence == 38212
            by_id = (await market.GetBook(md.GetBookRequest(instrument_id=432669, include_orders=True), timeout=5)).book
            assert len(by_id.bids) == 61 and sum(l.count for l in by_id.bids) == sum(len(l.orders) for l in by_id.bids)

    run(body())


async def _finished(app) -> bool:
    return app.replayer.state.value == "finished"


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (md.GetBookRequest(), grpc.StatusCode.INVALID_ARGUMENT, "instrument"),
        (md.GetBookRequest(symbol=""), grpc.StatusCode.INVALID_ARGUMENT, "symbol"),
        (md.GetBookRequest(symbol="NOPE"), grpc.StatusCode.NOT_FOUND, "NOPE"),
        (md.GetBookRequest(instrument_id=1), grpc.StatusCode.NOT_FOUND, "instrument_id=1"),
        (md.GetBookRequest(symbol="CLX5", publisher_id=99), grpc.StatusCode.NOT_FOUND, "publisher_id=99"),
        (md.GetBookRequest(symbol="CLX5", depth=10**9), grpc.StatusCode.INVALID_ARGUMENT, "depth"),
    ],
    ids=["no-instrument", "empty-symbol", "unknown-symbol", "unknown-id", "unknown-publisher", "absurd-depth"],
)
def test_get_book_errors_name_the_field(request_, code, text) -> None:
    async def body() -> None:
        async with in_process(clx5_settings(pacing="max")) as (_, channel):
            market, _ = stubs(channel)
            with pytest.raises(grpc.RpcError) as err:
                await market.GetBook(request_, timeout=5)
            assert err.value.code() == code
            assert text in err.value.details()
            assert "Traceback" not in err.value.details()

    run(body())


def test_stream_argument_errors() -> None:
    async def body() -> None:
        async with in_process(clx5_settings(pacing="max")) as (_, channel):
            market, _ = stubs(channel)
            cases = [
                (market.StreamEvents(md.StreamEventsRequest(with_snapshot=True, start_after_sequence=5)), grpc.StatusCode.INVALID_ARGUMENT, "start_after_sequence"),
                (market.StreamEvents(md.StreamEventsRequest(instruments=[md.InstrumentSelector(symbol="ZZZ")])), grpc.StatusCode.NOT_FOUND, "ZZZ"),
                (market.StreamBook(md.StreamBookRequest(instruments=[md.InstrumentSelector()])), grpc.StatusCode.INVALID_ARGUMENT, "instruments[0]"),
                (market.StreamBook(md.StreamBookRequest(max_updates_per_second=-1)), grpc.StatusCode.INVALID_ARGUMENT, "max_updates_per_second"),
            ]
            for call, code, text in cases:
                with pytest.raises(grpc.RpcError) as err:
                    async with asyncio.timeout(RPC_TIMEOUT):
                        async for _ in call:
                            pass
                assert err.value.code() == code and text in err.value.details()

    run(body())


def test_snapshot_plus_events_rebuild_the_book_exactly_as_get_book() -> None:
    async def body() -> None:
        async with in_process(clx5_settings(rate=5_000, batch_records=256)) as (app, channel):
            market, control = stubs(channel)
            replica = Market()
            last_seq = 0
            stream = market.StreamEvents(md.StreamEventsRequest(with_snapshot=True))
            first = await asyncio.wait_for(stream.read(), RPC_TIMEOUT)
            assert first.snapshot
            replica.apply(batch_records(first))
            last_seq = first.replay_sequence[-1]
            await asyncio.sleep(0.5)  # live records flow in the meantime
            status = (await control.Pause(rp.PauseRequest(), metadata=AUTH, timeout=5)).status
            assert status.state == rp.REPLAY_STATE_PAUSED
            target = (await control.GetStatus(rp.GetStatusRequest(), metadata=AUTH, timeout=5)).status.replay_sequence
            while last_seq < target:
                msg = await asyncio.wait_for(stream.read(), 10)
                assert msg.replay_sequence[0] == last_seq + 1 or msg.snapshot
                replica.apply(batch_records(msg))
                last_seq = msg.replay_sequence[-1]
            stream.cancel()
            book = (await market.GetBook(md.GetBookRequest(symbol="CLX5", include_orders=True), timeout=5)).book
            key = replica.resolve(432669)
            assert book.replay_sequence == target
            assert replica_levels(replica, key) == levels(book)
            assert sum(l.count for l in list(book.bids) + list(book.asks)) == replica.view(key).order_count > 0

    run(body(), timeout=90)


def test_resume_by_sequence_and_out_of_range() -> None:
    async def body() -> None:
        s = clx5_settings(rate=50_000, batch_records=128, replay_buffer_records=5_000)
        async with in_process(s) as (app, channel):
            market, _ = stubs(channel)
            stream = market.StreamEvents(md.StreamEventsRequest())
            seen = []
            while len(seen) < 3:
                msg = await asyncio.wait_for(stream.read(), 10)
                seen.append(list(msg.replay_sequence))
            stream.cancel()
            flat = [s for b in seen for s in b]
            assert flat == list(range(flat[0], flat[-1] + 1))
            resume_after = flat[-1]
            from_memory = METRICS.resumes.labels("memory")._value.get()
            resumed = market.StreamEvents(md.StreamEventsRequest(start_after_sequence=resume_after))
            msg = await asyncio.wait_for(resumed.read(), 10)
            assert msg.replay_sequence[0] == resume_after + 1
            assert METRICS.resumes.labels("memory")._value.get() == from_memory + 1  # counted by source
            got = list(msg.replay_sequence)
            for _ in range(3):
                got += list((await asyncio.wait_for(resumed.read(), 10)).replay_sequence)
            assert got == list(range(resume_after + 1, resume_after + 1 + len(got)))
            resumed.cancel()
            await wait_for(lambda: _past(app, 20_000), timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                async with asyncio.timeout(RPC_TIMEOUT):
                    async for _ in market.StreamEvents(md.StreamEventsRequest(start_after_sequence=1)):
                        pass
            assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "oldest resumable position is" in err.value.details()

    run(body(), timeout=90)


async def _past(app, position: int) -> bool:
    return app.hub.position > position


def test_slow_reader_is_cut_off_and_fast_readers_are_unaffected(generated_small, tmp_path) -> None:
    server = ServeProcess(
        str(generated_small),
        "--rate",
        "100000",
        "--loop",
        "--batch-records",
        "512",
        log_path=tmp_path / "serve.log",
        env={"MBOSTREAM_SUBSCRIBER_BUFFER_BATCHES": "256"},
    ).start()
    try:

        async def body() -> None:
            from grpc import aio

            async with aio.insecure_channel(server.address) as channel:
                market, _ = stubs(channel)
                slow = market.StreamEvents(md.StreamEventsRequest())
                await asyncio.wait_for(slow.read(), 10)  # subscribed; now it stops reading
                fast_seqs: list[int] = []

                async def fast_reader() -> None:
                    async for msg in market.StreamEvents(md.StreamEventsRequest()):
                        fast_seqs.extend(msg.replay_sequence)
                        if len(fast_seqs) > 300_000:
                            return

                await asyncio.wait_for(fast_reader(), 60)
                assert fast_seqs == list(range(fast_seqs[0], fast_seqs[0] + len(fast_seqs)))
                with pytest.raises(grpc.RpcError) as err:
                    while True:
                        await asyncio.wait_for(slow.read(), 10)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "start_after_sequence=" in err.value.details()

        run(body(), timeout=120)
    finally:
        assert server.stop() == 0


def test_conflated_book_updates_are_always_consistent_f_last_states(generated_small) -> None:
    info, records = read_records(generated_small)
    symbol = sorted(info.symbols.values())[0]

    async def body() -> list:
        # The refresh pinned at 2 ms (no stretching on a busy machine): the conflation is the client limit's.
        s = settings(files=(str(generated_small),), rate=20_000, batch_records=128, book_interval_ms=2, book_interval_max_ms=2)
        async with in_process(s, wait_loaded=False) as (app, channel):
            market, _ = stubs(channel)
            updates = []
            # At most 20 updates/s while the book changes every few ms: the server conflates.
            request = md.StreamBookRequest(
                instruments=[md.InstrumentSelector(symbol=symbol)],
                depth=0,
                include_orders=True,
                max_updates_per_second=20,
            )
            call = market.StreamBook(request)
            while len(updates) < 20:
                updates.append(await asyncio.wait_for(call.read(), RPC_TIMEOUT))
            call.cancel()
            return updates

    updates = run(body(), timeout=90)
    assert updates[0].is_snapshot and not any(u.is_snapshot for u in updates[1:])
    assert sum(u.conflated for u in updates) > 10
    positions = [u.book.replay_sequence for u in updates]
    assert positions == sorted(positions) and len(set(positions)) > 5
    for u in updates:
        # Exactly the book an offline replay of the first `replay_sequence` records gives.
        offline = Market(info.symbols)
        offline.apply(records[: u.book.replay_sequence], complete_events=False)
        key = offline.resolve(symbol)
        assert not offline.in_event(key)
        assert replica_levels(offline, key) == levels(u.book)
        assert u.ts_out > 0


def test_replay_control_auth_and_idempotence() -> None:
    async def body() -> None:
        async with in_process(clx5_settings(rate=1_000)) as (_, channel):
            _, control = stubs(channel)
            for metadata, code in [
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer wrong-token"),), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
            ]:
                with pytest.raises(grpc.RpcError) as err:
                    await control.Pause(rp.PauseRequest(), metadata=metadata, timeout=5)
                assert err.value.code() == code
            first = (await control.Pause(rp.PauseRequest(), metadata=AUTH, timeout=5)).status
            again = (await control.Pause(rp.PauseRequest(), metadata=AUTH, timeout=5)).status
            assert first.state == again.state == rp.REPLAY_STATE_PAUSED
            pos = again.replay_sequence

            async def position() -> int:
                return (await control.GetStatus(rp.GetStatusRequest(), metadata=AUTH, timeout=5)).status.replay_sequence

            await asyncio.sleep(0.3)  # 150 pacing steps: about 300 records at 1,000/s, were it running
            assert await position() == pos
            resumed = (await control.Resume(rp.ResumeRequest(), metadata=AUTH, timeout=5)).status
            assert resumed.state == rp.REPLAY_STATE_RUNNING
            assert (await control.Resume(rp.ResumeRequest(), metadata=AUTH, timeout=5)).status.state == rp.REPLAY_STATE_RUNNING
            await wait_for(lambda: _moved_past(position, pos), timeout=RPC_TIMEOUT)
            with pytest.raises(grpc.RpcError) as err:
                await control.SetRate(rp.SetRateRequest(records_per_second=0), metadata=AUTH, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            st = (await control.SetRate(rp.SetRateRequest(speed=2.0), metadata=AUTH, timeout=5)).status
            assert st.mode == rp.REPLAY_MODE_SPEED and st.speed == 2.0
            st = (await control.SetRate(rp.SetRateRequest(max=True), metadata=AUTH, timeout=5)).status
            assert st.mode == rp.REPLAY_MODE_MAX

    run(body())


async def _moved_past(position, start: int) -> bool:
    return await position() > start


def test_control_disabled_without_token_is_permission_denied() -> None:
    async def body() -> None:
        async with in_process(clx5_settings(rate=1_000, control_token=None)) as (_, channel):
            _, control = stubs(channel)
            with pytest.raises(grpc.RpcError) as err:
                await control.GetStatus(rp.GetStatusRequest(), metadata=AUTH, timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "MBOSTREAM_CONTROL_TOKEN" in err.value.details()

    run(body())


def test_rate_pacing_publishes_the_target_rate_and_restart_clears_books() -> None:
    rate = 10_000
    # 2 s of a 3.8 s file at 10,000 records/s: the replay is still running when the window closes.
    window_ns = 2_000_000_000

    async def body() -> None:
        async with in_process(clx5_settings(rate=rate, loop=False)) as (app, channel):
            market, control = stubs(channel)
            stream = market.StreamEvents(md.StreamEventsRequest())
            batches = [await asyncio.wait_for(stream.read(), RPC_TIMEOUT)]
            while batches[-1].ts_out - batches[0].ts_out < window_ns:
                batches.append(await asyncio.wait_for(stream.read(), RPC_TIMEOUT))
            stream.cancel()
            sequences = [s for b in batches for s in b.replay_sequence]
            assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
            # The records published after the first batch, up to and including the last, over the
            # server's clock between the two publishes.
            first, last = batches[0], batches[-1]
            published = len(sequences) - len(first.replay_sequence)
            expected = rate * (last.ts_out - first.ts_out) / 1e9
            slack = paced_records_slack(rate, last_event_records(first.flags) + last_event_records(last.flags))
            assert abs(published - expected) <= slack, (published, expected, slack)
            b = (await control.GetStatus(rp.GetStatusRequest(), metadata=AUTH, timeout=5)).status
            assert b.target_records_per_second == rate and b.records_total == 38212
            before = b.replay_sequence
            st = (await control.Restart(rp.RestartRequest(), metadata=AUTH, timeout=5)).status
            await wait_for(lambda: _records_done_below(app, before), timeout=10)
            assert app.market.stats(app.market.resolve("CLX5")).clear_count >= 1
            assert st.state == rp.REPLAY_STATE_RUNNING

    run(body())


async def _records_done_below(app, n: int) -> bool:
    return app.replayer.records_done < n


def test_hundred_concurrent_book_streams_get_consistent_books(generated_small, tmp_path) -> None:
    server = ServeProcess(
        str(generated_small), "--rate", "100000", "--loop", "--metrics-port", "0", log_path=tmp_path / "serve.log"
    ).start()
    try:

        async def one(stub) -> int:
            call = stub.StreamBook(md.StreamBookRequest(depth=10, max_updates_per_second=20))
            for _ in range(12):
                book = (await asyncio.wait_for(call.read(), RPC_TIMEOUT)).book
                bids = [l.price for l in book.bids]
                asks = [l.price for l in book.asks]
                assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
                assert all(l.size > 0 and l.count > 0 for l in list(book.bids) + list(book.asks))
                if book.bids and book.asks:
                    assert book.bids[0].price < book.asks[0].price  # the generator never crosses
            call.cancel()
            return 12

        async def body() -> list[int]:
            from grpc import aio

            async with aio.insecure_channel(server.address) as channel:
                market, _ = stubs(channel)
                return await asyncio.gather(*(one(market) for _ in range(100)))

        assert run(body(), timeout=120) == [12] * 100

        def samples() -> list:
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=RPC_TIMEOUT).read().decode()
            return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

        def book_streams(found: list) -> dict[str, float]:
            """Finished StreamBook RPCs by status code."""
            return {
                s.labels["code"]: s.value
                for s in found
                if s.name == "mbostream_rpcs_total" and s.labels["method"] == "StreamBook"
            }

        # Every stream was cancelled by its client; the server counts each once it has seen that.
        deadline = time.monotonic() + RPC_TIMEOUT
        while book_streams(found := samples()) != {"CANCELLED": 100.0} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert book_streams(found) == {"CANCELLED": 100.0}
        (ingested,) = [s.value for s in found if s.name == "mbostream_records_ingested_total"]
        assert ingested > 0
    finally:
        assert server.stop() == 0


def test_health_and_graceful_shutdown_with_open_streams(generated_small, tmp_path) -> None:
    server = ServeProcess(
        str(generated_small), "--rate", "50000", "--loop", "--grace-seconds", "5", log_path=tmp_path / "serve.log"
    ).start()
    try:

        async def body() -> tuple[int, int]:
            from grpc import aio

            async with aio.insecure_channel(server.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                await wait_for(lambda: _serving(health), timeout=20)
                market, _ = stubs(channel)
                books = market.StreamBook(md.StreamBookRequest(depth=5))
                events = market.StreamEvents(md.StreamEventsRequest())
                await asyncio.wait_for(books.read(), 10)
                await asyncio.wait_for(events.read(), 10)
                server.signal(signal.SIGTERM)
                counts = []
                for call in (books, events):
                    n = 0
                    with pytest.raises(grpc.RpcError) as err:
                        while await asyncio.wait_for(call.read(), 30) is not aio.EOF:
                            n += 1
                    # Streams end cleanly, with UNAVAILABLE: the signal for clients to reconnect.
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "shutting down" in err.value.details()
                    counts.append(n)
                n_books, n_events = counts
                return n_books, n_events

        run(body(), timeout=60)
        assert server.wait(30) == 0
    finally:
        server.stop()


async def _serving(health) -> bool:
    resp = await health.Check(health_pb2.HealthCheckRequest(service="mbostream.v1.MarketDataService"), timeout=2)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def test_combined_book_stream_carries_every_changed_book_in_one_message(generated_small) -> None:
    info, records = read_records(generated_small)

    async def body() -> list:
        s = settings(files=(str(generated_small),), rate=20_000, batch_records=128, book_interval_ms=5)
        async with in_process(s) as (app, channel):
            market, _ = stubs(channel)
            call = market.StreamBook(md.StreamBookRequest(depth=5, combine_books=True))
            messages = [await asyncio.wait_for(call.read(), RPC_TIMEOUT) for _ in range(30)]
            call.cancel()
            return messages

    messages = run(body(), timeout=90)
    firsts = [m for m in messages if m.is_snapshot]
    assert {m.book.symbol for m in firsts} == set(info.symbols.values())
    assert all(not m.books for m in firsts)
    combined = [m for m in messages if not m.is_snapshot]
    assert combined and all(m.books and not m.HasField("book") for m in combined)
    assert any(len(m.books) > 1 for m in combined)
    for msg in combined:
        assert msg.ts_out > 0
        assert len({b.instrument_id for b in msg.books}) == len(msg.books)
        for book in msg.books:
            offline = Market(info.symbols)
            offline.apply(records[: book.replay_sequence], complete_events=False)
            view = offline.view(offline.resolve(book.instrument_id), depth=5)
            assert [(l.price, l.size, l.count) for l in view.bids] == [(l.price, l.size, l.count) for l in book.bids]
            assert [(l.price, l.size, l.count) for l in view.asks] == [(l.price, l.size, l.count) for l in book.asks]
