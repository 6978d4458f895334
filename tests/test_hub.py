"""The fan-out hub: each batch is encoded once per subscriber variant and each book once per refresh,
and the same payload object goes to every subscriber that wants it (serialize once), by the gRPC
layer's real encoders; the hub itself never builds a wire message."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter

import numpy as np
import pytest
from prometheus_client import REGISTRY
from server_harness import run

from mbostream_core.dbn import read_records
from mbostream.feed import Batch
from mbostream.hub import (
    BOOK_MESSAGES_PER_PHASE,
    BOOK_PHASES_MAX,
    CPU_WINDOW_SECONDS,
    DISTINCT_PEEL_MAX,
    FANOUT_GROUPS,
    BookPayload,
    Hub,
    Selection,
    groups_by_phase,
    distinct,
)
from mbostream_core.market import BookKey, Market
from mbostream_core.records import concat_records
from mbostream.server.market_data import book_message
from mbostream.server.wire import ProtobufBookEncoder, ProtobufEventEncoder
from mbostream_core.v1 import market_data_pb2 as md


class CountingEventEncoder(ProtobufEventEncoder):
    """The real encoder, counting how often the hub asks it for a batch."""

    def __init__(self, epoch: str) -> None:
        super().__init__(epoch)
        self.calls = 0

    def encode(self, batch: Batch, selection: Selection, max_records: int) -> list[tuple[int, object]]:
        self.calls += 1
        return super().encode(batch, selection, max_records)


class CountingBookEncoder(ProtobufBookEncoder):
    """The real book encoder, counting the books it makes."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, market: Market, key: BookKey, depth: int, orders: bool, position: int) -> BookPayload:
        self.calls += 1
        return super().encode(market, key, depth, orders, position)


def _hub(
    market: Market,
    events: CountingEventEncoder,
    books: CountingBookEncoder,
    book_interval: float = 0.0,
    max_streams: int = 100,
    cls: type[Hub] = Hub,
    **more: float,
) -> Hub:
    """A ``cls`` of the real encoders; ``book_interval`` 0 refreshes the books at every publish."""
    return cls(
        market,
        event_encoder=events,
        book_encoder=books,
        replay_buffer_records=100_000,
        subscriber_buffer_batches=1_000,
        max_streams=max_streams,
        book_interval=book_interval,
        epoch="0011223344556677",
        **more,
    )


def _publish_all(market: Market, hub: Hub, records: np.ndarray, step: int = 500) -> list[Batch]:
    """Applies and publishes ``records`` in steps that end at event boundaries."""
    position, pos, batches = hub.position, 0, []
    while pos < len(records):
        result = market.apply(records, pos, min(len(records), pos + step), complete_events=True)
        if result.end == pos:
            break
        batch = Batch(position + 1, records[pos : result.end], result.events, time.time_ns())
        hub.publish(batch)
        position, pos = batch.last_replay_seq, result.end
        batches.append(batch)
    return batches


def _books_changed(batch: Batch) -> int:
    return len({(int(e["instrument_id"]), int(e["publisher_id"])) for e in batch.events})


async def _drain(sub, stream) -> list[bytes]:
    """Every payload ``sub`` can take now (its stream never waits: it has a queued batch)."""
    out = []
    while sub.queue or sub.prefix:
        out.append(await asyncio.wait_for(stream.__anext__(), 10))
    return out


def test_one_encoding_per_batch_variant_shared_by_every_subscriber(generated_small) -> None:
    """Subscribers that keep up take each batch as it comes: one encoding per batch and variant."""

    async def scenario() -> None:
        _, records = read_records(generated_small)
        records = records[:20_000]
        market = Market()
        events, books = CountingEventEncoder("0011223344556677"), CountingBookEncoder()
        hub = _hub(market, events, books)
        everything = [hub.subscribe_events(Selection(), with_snapshot=False, start_after=None, max_records=0) for _ in range(5)]
        first_iid = int(records["instrument_id"][0])
        one = Selection(any_publisher=frozenset({first_iid}))
        filtered = [hub.subscribe_events(one, with_snapshot=False, start_after=None, max_records=0) for _ in range(3)]
        streams = {sub: sub.payloads() for sub in everything + filtered}
        received: dict[object, list[bytes]] = {sub: [] for sub in streams}
        batches, selected, position, pos = 0, 0, 0, 0
        while pos < len(records):  # one batch at a time, every subscriber taking it at once
            result = market.apply(records, pos, min(len(records), pos + 500), complete_events=True)
            if result.end == pos:
                break
            batch = Batch(position + 1, records[pos : result.end], result.events, time.time_ns())
            hub.publish(batch)
            batches, position, pos = batches + 1, batch.last_replay_seq, result.end
            selected += bool((batch.records["instrument_id"] == first_iid).any())
            for sub, stream in streams.items():
                received[sub] += await _drain(sub, stream)

        # Two variants, each encoded once per batch it wants, for 8 subscribers (a batch without the
        # filtered instrument is not queued for its subscribers at all).
        assert 0 < selected < batches and events.calls == batches + selected
        for group in (everything, filtered):
            messages = [received[sub] for sub in group]
            assert messages[0], "nothing delivered"
            for other in messages[1:]:
                assert len(other) == len(messages[0])
                assert all(a is b for a, b in zip(messages[0], other, strict=True)), "a payload was made twice"
        assert len(received[everything[0]]) == batches and len(received[filtered[0]]) == selected
        message = md.StreamEventsResponse.FromString(received[everything[0]][0])
        assert message.epoch == "0011223344556677" and message.replay_sequence[0] == 1
        filtered_message = md.StreamEventsResponse.FromString(received[filtered[0]][0])
        assert set(filtered_message.instrument_id) == {first_iid}

    run(scenario())


def test_a_reader_that_fell_behind_catches_up_in_few_messages_with_every_record(generated_small) -> None:
    """A subscriber the loop could not serve for a while takes its whole queue in one message (up
    to the coalescing limit): every record once, in order, and far fewer messages than batches."""

    async def scenario() -> None:
        _, records = read_records(generated_small)
        records = records[:20_000]
        market = Market()
        events, books = CountingEventEncoder("0011223344556677"), CountingBookEncoder()
        hub = _hub(market, events, books)
        subs = [hub.subscribe_events(Selection(), with_snapshot=False, start_after=None, max_records=0) for _ in range(3)]
        published = _publish_all(market, hub, records, step=200)
        assert len(published) > 20
        received = [await _drain(sub, sub.payloads()) for sub in subs]

        assert len(received[0]) < len(published) / 10, "the backlog went out one small message per batch"
        assert all(a is b for a, b in zip(received[0], received[1], strict=True)), "one range was encoded twice"
        assert events.calls == len(received[0])
        positions = [seq for payload in received[0] for seq in md.StreamEventsResponse.FromString(payload).replay_sequence]
        assert positions == list(range(1, published[-1].last_replay_seq + 1))
        # The merged messages carry the records themselves, field for field (copied as bytes).
        for name, field in (("order_id", "order_id"), ("price", "price"), ("ts_recv", "ts_recv"), ("size", "size")):
            got = [v for payload in received[0] for v in getattr(md.StreamEventsResponse.FromString(payload), field)]
            assert got == records[name][: len(got)].tolist() and len(got) == len(records), name
        # The merged message is as late as its oldest batch.
        assert md.StreamEventsResponse.FromString(received[0][0]).ts_out == published[0].ts_out

    run(scenario())


def test_concat_records_is_numpys_concatenate_copied_as_bytes(generated_small) -> None:
    _, records = read_records(generated_small)
    parts = [records[:7], records[7:1000], records[1000:1001], records[2000:3000:2]]  # the last strided
    joined = concat_records(parts)
    assert joined.dtype == records.dtype and joined.flags.c_contiguous
    assert joined.tobytes() == np.concatenate(parts).tobytes()
    assert concat_records([records[:0]]).shape == (0,)
    with pytest.raises(ValueError, match="one dtype"):
        concat_records([records[:2], np.zeros(2, dtype=np.uint64)])
    with pytest.raises(ValueError, match="at least one"):
        concat_records([])


def _ticker_hub(cpu_target: float = 0.0) -> Hub:
    """A hub refreshing every 5 ms, stretching to 50 ms, with ``cpu_target`` (0: none)."""
    return Hub(
        Market(),
        event_encoder=CountingEventEncoder(""),
        book_encoder=CountingBookEncoder(),
        replay_buffer_records=1,
        subscriber_buffer_batches=1,
        max_streams=1,
        book_interval=0.005,
        book_interval_max=0.05,
        book_cpu_target=cpu_target,
    )


def test_the_book_refresh_stretches_while_the_loop_is_late_and_returns_after(generated_small) -> None:
    """Late ticks (a loop with more to send than it can) stretch the refresh up to its bound; on-time
    ticks bring it back to the configured interval."""
    hub = _ticker_hub()
    interval = 0.005
    seen = [interval]
    for _ in range(20):
        interval = hub.adapt_interval(interval, late=0.01)
        seen.append(interval)
    assert seen[1] > seen[0] and max(seen) == interval == 0.05
    assert hub.adapt_interval(interval, late=0.001) == interval  # neither late nor on time: stays
    for _ in range(200):
        interval = hub.adapt_interval(interval, late=0.0)
    assert interval == 0.005


def test_the_book_refresh_follows_the_cpu_target(generated_small) -> None:
    """With a CPU target, each window scales the refresh interval by cpu / target, by a quarter at
    most either way: over the target it stretches (up to its bound), at the target it holds, under
    it it returns (to the configured interval at most). Ticks between windows leave it as it is;
    without a target CPU is ignored."""
    targeted = _ticker_hub(0.6)
    interval = targeted.adapt_interval(0.005, late=0.0, cpu=0.9)
    assert interval == pytest.approx(0.005 * 1.25), "a step is a quarter at most"
    for _ in range(30):  # on time, but over the target at every window
        interval = targeted.adapt_interval(interval, late=0.0, cpu=0.9)
    assert interval == 0.05
    assert targeted.adapt_interval(interval, late=0.0, cpu=0.6) == interval, "at the target the interval holds"
    for _ in range(100):  # ticks between windows
        interval = targeted.adapt_interval(interval, late=0.0)
    assert interval == 0.05
    interval = targeted.adapt_interval(interval, late=0.0, cpu=0.57)
    assert interval == pytest.approx(0.05 * 0.95), "just under the target it shrinks by as much"
    for _ in range(30):
        interval = targeted.adapt_interval(interval, late=0.0, cpu=0.3)
    assert interval == 0.005, "under the target it returns, to the configured interval at most"
    # No target: CPU says nothing.
    assert _ticker_hub(0.0).adapt_interval(0.005, late=0.0, cpu=5.0) == 0.005


def _cpu_target_run(start: float, noise: float, windows: int) -> tuple[list[float], list[float]]:
    """The refresh interval under a CPU target of 0.6, with the process's CPU modelled as a fixed
    part (the replay, the events) plus the books' part, which falls as the interval grows
    (docs/performance.md's cost model), each window's reading off by a normal ``noise`` (relative;
    seeded). The interval and the CPU read at each window, with the ticks between windows."""
    rng = random.Random(1)
    hub = _ticker_hub(0.6)
    interval, intervals, cpus = start, [], []
    for _ in range(windows):
        cpu = (CPU_FIXED + CPU_PER_REFRESH_RATE / interval) * rng.gauss(1.0, noise)
        intervals.append(interval)
        cpus.append(cpu)
        interval = hub.adapt_interval(interval, late=0.0, cpu=cpu)
        for _ in range(int(CPU_WINDOW_SECONDS / interval)):
            interval = hub.adapt_interval(interval, late=0.0)
    return intervals, cpus


#: The model's process: 0.25 of a core whatever the books, and 0.69 at a 10 ms refresh (1,000
#: combined book clients at 100k records/s took 0.69-0.70 with --book-interval-ms=10).
CPU_FIXED, CPU_PER_REFRESH_RATE = 0.25, 0.0044


def test_the_cpu_target_settles_the_refresh_where_the_process_is_at_the_target(generated_small) -> None:
    """From either side, the interval settles where the model's process is at its target (12.6 ms),
    and stays there. With each window's reading 5% off at random it stays near it, and the process
    is at its target on average. The rule before this one (a step up by a quarter over the target,
    a hold down to 90% of it, a return by 5% a tick under it) settled at 13.9-14.8 ms without the
    noise (the process at 0.55-0.57), and with it swung between 5.3 and 18 ms, the process at 0.67
    on average."""
    settled = CPU_PER_REFRESH_RATE / (0.6 - CPU_FIXED)
    for start in (0.005, 0.05):
        intervals, cpus = _cpu_target_run(start, noise=0.0, windows=60)
        assert intervals[-1] == pytest.approx(settled, rel=0.01), start
        assert all(c == pytest.approx(0.6, rel=0.01) for c in cpus[20:]), (start, cpus[20:])
    intervals, cpus = _cpu_target_run(0.005, noise=0.05, windows=400)
    intervals, cpus = intervals[40:], cpus[40:]
    assert statistics.fmean(cpus) == pytest.approx(0.6, rel=0.02)
    assert 0.8 * settled < min(intervals) and max(intervals) < 1.2 * settled, (min(intervals), max(intervals))


def test_a_late_loop_stretches_past_the_cpu_target_s_interval_and_returns_to_it(generated_small) -> None:
    """A loop that runs late stretches the refresh beyond what the CPU target set; on time again it
    returns to that interval, not below it to the configured one."""
    hub = _ticker_hub(0.6)
    interval = 0.005
    for _ in range(4):
        interval = hub.adapt_interval(interval, late=0.0, cpu=0.75)
    target_interval = interval
    assert 0.01 < target_interval < 0.05
    for _ in range(10):
        interval = hub.adapt_interval(interval, late=0.03)
    assert interval == 0.05
    for _ in range(500):
        interval = hub.adapt_interval(interval, late=0.0)
    assert interval == pytest.approx(target_interval)


def _phased_hub(
    path, interval: float = 0.005, cls: type[Hub] = Hub, **more: float
) -> tuple[Market, CountingBookEncoder, Hub, np.ndarray]:
    """A ``cls`` refreshing every ``interval`` (room for 1,000 streams) after the sample's first
    5,000 records; the sample's records, for more."""
    _, records = read_records(path)
    market = Market()
    books = CountingBookEncoder()
    hub = _hub(market, CountingEventEncoder(""), books, interval, 1_000, cls, **more)
    _publish_all(market, hub, records[:5_000])
    return market, books, hub, records


class PhaseCountingHub(Hub):
    """The real hub, counting the refresh phases its ticker runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.phases_run: Counter[int] = Counter()

    def refresh_phase(self, phase: int) -> None:
        self.phases_run[phase] += 1
        super().refresh_phase(phase)


def test_the_refresh_keeps_its_interval_however_many_phases_it_has(generated_small) -> None:
    """A refresh of 4 ms in 8 phases comes every 4 ms: each phase is due at a fixed point of the
    schedule. Slept from the end of the phase before, each of the 8 sleeps of 0.5 ms took a whole
    millisecond or more (epoll waits in whole ms, rounded up), and the refresh came every 8 ms or
    later (at most 400 phases in the 0.4 s this runs, against 800)."""

    async def scenario() -> None:
        interval, seconds = 0.004, 0.4
        # Never stretched (book_interval_max): the schedule alone is measured.
        _, _, hub, _ = _phased_hub(generated_small, interval, PhaseCountingHub, book_interval_max=interval)
        assert isinstance(hub, PhaseCountingHub)
        for _ in range(300):
            hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0)
        assert hub.book_phases == BOOK_PHASES_MAX == 8
        refreshes_before = REGISTRY.get_sample_value("mbostream_book_refreshes_total")
        ticker = asyncio.create_task(hub.run_ticker())
        await asyncio.sleep(seconds)
        hub.close()
        await asyncio.wait_for(ticker, 5)
        nominal = seconds / interval * hub.book_phases
        run = sum(hub.phases_run.values())
        assert 0.7 * nominal <= run <= 1.05 * nominal, (run, nominal)
        # In turn: no phase is run twice before another once.
        assert set(hub.phases_run) == set(range(8)) and max(hub.phases_run.values()) - min(hub.phases_run.values()) <= 1
        # The metric an operator reads the achieved interval from counts the intervals completed.
        refreshes = REGISTRY.get_sample_value("mbostream_book_refreshes_total") - (refreshes_before or 0.0)
        assert refreshes == min(hub.phases_run.values()) > 0

    run(scenario())


def _lag_samples_over(seconds: float) -> float:
    """How many of mbostream_event_loop_lag_seconds' samples were over ``seconds`` (a bucket bound)."""
    total = REGISTRY.get_sample_value("mbostream_event_loop_lag_seconds_count") or 0.0
    under = REGISTRY.get_sample_value("mbostream_event_loop_lag_seconds_bucket", {"le": str(seconds)}) or 0.0
    return total - under


def test_a_refresh_stretched_by_a_late_loop_returns_once_the_loop_is_on_time(generated_small) -> None:
    """Book streams served on the loop (no sink: the gRPC port) stretch the refresh while the loop
    runs late and bring it back once it is on time. On time includes the whole millisecond epoll
    rounds a sleep up to: a phase of a 4 ms refresh in 8 wakes up to 1 ms after its point of the
    schedule on an idle loop, and that must not read as late, or a stretched refresh never returns."""

    async def scenario() -> None:
        interval = 0.004
        _, _, hub, _ = _phased_hub(generated_small, interval, book_interval_max=0.04)
        for _ in range(300):
            hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0)
        assert hub.book_phases == 8 and hub.loop_streams == 300  # served on the loop: lateness counts
        ticker = asyncio.create_task(hub.run_ticker())
        try:
            # An idle loop is not late: the refresh is at its interval, or back at it at once after a
            # stretch that a busy machine (CI's parallel builds) caused. A refresh that an idle loop's
            # rounding kept stretched never gets there.
            deadline = time.monotonic() + 3.0
            await asyncio.sleep(0.1)
            while hub.effective_book_interval != interval and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert hub.effective_book_interval == interval, "an idle loop is not late"
            stalls_before = _lag_samples_over(0.02)
            for _ in range(3):  # the loop blocked for 30 ms, three times: late
                time.sleep(0.03)
                await asyncio.sleep(0.01)
            assert hub.effective_book_interval > interval
            # The operator sees each stall in the loop's lag (the phase after it woke ~30 ms late).
            assert _lag_samples_over(0.02) - stalls_before >= 3
            deadline = time.monotonic() + 3.0
            while hub.effective_book_interval != interval and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert hub.effective_book_interval == interval, "on time again, the refresh returns"
        finally:
            hub.close()
            await asyncio.wait_for(ticker, 5)

    run(scenario())


@pytest.mark.parametrize("phases", range(1, BOOK_PHASES_MAX + 1))
def test_every_fanout_group_is_published_at_one_phase_in_slot_order(phases: int) -> None:
    by_phase = groups_by_phase(phases)
    assert len(by_phase) == phases
    assert [g for groups in by_phase for g in groups] == list(range(FANOUT_GROUPS))
    if phases == FANOUT_GROUPS:
        assert all(len(groups) == 1 for groups in by_phase)


def test_one_book_payload_per_refresh_shared_by_every_book_subscriber(generated_small) -> None:
    async def scenario() -> None:
        _, records = read_records(generated_small)
        market = Market()
        events, books = CountingEventEncoder(""), CountingBookEncoder()
        hub = _hub(market, events, books)
        _publish_all(market, hub, records[:5_000])
        subs = [hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0) for _ in range(20)]
        channels_per_sub = len(subs[0].channels)
        assert channels_per_sub == len(market.books()) > 0
        built_on_subscribe = books.calls
        assert built_on_subscribe == channels_per_sub  # the first subscriber's attach builds; the rest share
        published = _publish_all(market, hub, records[5_000:10_000])
        # book_interval 0: every publish refreshes the books it changed, once each, for 20 subscribers.
        assert books.calls - built_on_subscribe == sum(_books_changed(b) for b in published) > 0
        for key in subs[0].channels:
            payloads = {id(sub.channels[key].book) for sub in subs}
            assert len(payloads) == 1, "subscribers of one channel hold different payloads"
        first = await asyncio.wait_for(subs[0].updates().__anext__(), 10)
        channel = first[0][0]
        single = md.StreamBookResponse.FromString(channel.book.single)
        assert single.book.instrument_id == channel.key.instrument_id and single.ts_out == channel.book.ts_out

    run(scenario())


def test_many_book_subscribers_are_refreshed_in_phases_each_once_per_change(generated_small) -> None:
    """More book messages per refresh than one phase sends are spread over phases: each phase
    notifies only its own subscribers, every subscriber is notified once per interval in which its
    books changed, the channel is built once per change and shared, and no subscriber is handed a
    version it already has."""

    async def scenario() -> None:
        market, books, hub, records = _phased_hub(generated_small)
        n_books = len(market.books())
        assert n_books > 1
        subs = [hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0) for _ in range(300)]
        expected = min(BOOK_PHASES_MAX, -(-300 * n_books // BOOK_MESSAGES_PER_PHASE))
        assert hub.book_phases == expected > 1
        by_phase = Counter(sub.phase for sub in subs)
        assert set(by_phase) == set(range(expected))
        assert max(by_phase.values()) - min(by_phase.values()) <= 2  # spread evenly
        streams = [sub.updates() for sub in subs]
        for stream in streams:  # the first message of every book
            for _ in range(n_books):
                await asyncio.wait_for(stream.__anext__(), 5)

        generation = hub.generation
        _publish_all(market, hub, records[5_000:6_000])
        built_before = books.calls
        for phase in range(hub.book_phases):
            hub.refresh_phase(phase)
            notified = {id(sub) for sub in subs if sub.pending}
            assert notified == {id(sub) for sub in subs if sub.phase <= phase}
        changed = {key for key in market.books() if hub.changed_at.get(key, 0) > generation}
        assert changed
        assert books.calls - built_before == len({c.key for c in hub.channels.values()} & changed)
        for sub, stream in zip(subs, streams):
            got = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(len(sub.pending))]
            versions = [(channels[0].key, channels[0].version) for channels, first, _ in got]
            assert all(not first for _, first, _ in got)
            assert versions == [(k, hub.channels[(k, 10, False)].version) for k, _ in versions]
            assert not sub.pending
        # Nothing changed since: another round of phases announces nothing new.
        for phase in range(hub.book_phases):
            hub.refresh_phase(phase)
        assert not any(sub.pending for sub in subs)

        for sub in subs[:250]:
            hub.unsubscribe_books(sub)
        assert hub.book_phases == max(1, min(BOOK_PHASES_MAX, -(-50 * n_books // BOOK_MESSAGES_PER_PHASE)))
        assert all(sub.phase < hub.book_phases for sub in subs[250:])
        # A combined message counts its books: 50 combined streams take as many phases as 50 plain.
        combined = [hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0, combine=True) for _ in range(50)]
        for sub in subs[250:]:
            hub.unsubscribe_books(sub)
        books_now = len(market.books())
        assert all(len(sub.channels) == books_now for sub in combined)
        assert hub.book_phases == max(1, min(BOOK_PHASES_MAX, -(-50 * books_now // BOOK_MESSAGES_PER_PHASE))) > 1
        assert {sub.phase for sub in combined} == set(range(hub.book_phases))

    run(scenario())


def test_a_book_a_later_phase_sends_unchanged_says_when_it_was_sent(generated_small) -> None:
    """A phase sends a book an earlier phase took (unchanged since): it is not taken again, but
    its ts_out says when this phase sent it, the API's "when this message was published" (it
    had said when the earlier phase took it: up to a refresh interval older than it was). The
    book, the version and the message's size stay as they were."""

    async def scenario() -> None:
        market, books, hub, records = _phased_hub(generated_small)
        subs = [hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0) for _ in range(300)]
        assert hub.book_phases >= 3
        for stream in [sub.updates() for sub in subs]:
            for _ in range(len(market.books())):
                await asyncio.wait_for(stream.__anext__(), 5)

        generation = hub.generation
        _publish_all(market, hub, records[5_000:6_000])
        changed = [c for c in hub.channels.values() if hub.changed_at.get(c.key, 0) > generation]
        assert changed
        hub.refresh_phase(0)
        taken = {c.key: (c.book, c.version) for c in changed}
        built = books.calls
        for phase in (1, 2):
            time.sleep(0.002)
            sent_after = time.time_ns()
            hub.refresh_phase(phase)
            assert books.calls == built  # unchanged: not taken again
            for channel in changed:
                first, version = taken[channel.key]
                book = channel.book
                assert book is not None and first is not None
                assert channel.version == version
                assert book.ts_out >= sent_after > first.ts_out
                message, original = md.StreamBookResponse.FromString(book.single), md.StreamBookResponse.FromString(first.single)
                assert message.ts_out == book.ts_out and message.book == original.book
                assert len(book.single) <= len(first.single) + 10  # a restamp replaces the last one
                sub = next(s for s in subs if s.phase == phase)
                sent = md.StreamBookResponse.FromString(book_message(sub, [channel], False, 0, hub.epoch))
                assert sent.ts_out == book.ts_out and sent.book == original.book
                combined = md.StreamBookResponse.FromString(book_message(sub, changed, False, 0, hub.epoch))
                assert combined.ts_out == min(c.book.ts_out for c in changed if c.book is not None)

    run(scenario())


@pytest.mark.parametrize("books", [0, 1, 3, DISTINCT_PEEL_MAX, DISTINCT_PEEL_MAX + 1, 40])
def test_distinct_book_keys_match_numpys_unique(books: int) -> None:
    """The hub's per-batch book set: the same values as ``np.unique``, whether peeled one by one
    (few books) or handed to ``np.unique`` past DISTINCT_PEEL_MAX."""
    rng = np.random.default_rng(books)
    keys = (rng.integers(0, max(books, 1), 3_500) * 65_536 + 1).astype(np.uint64)[: 3_500 if books else 0]
    found = distinct(keys)
    assert sorted(found) == np.unique(keys).tolist()
    assert len(found) == len(set(found)) == books


class RecordingSink:
    """A BookSink that keeps what the hub delivers, as the native transport would send it, and can
    refuse more for a while (a client whose transport queue is full)."""

    def __init__(self) -> None:
        self.messages: list[md.StreamBookResponse] = []
        self.flushes = 0
        self.full = False

    def deliver(self, sub) -> None:
        if self.full:
            return  # leaves the books pending: the hub conflates them
        for channels, first, conflated in sub.take():
            self.messages.append(md.StreamBookResponse.FromString(book_message(sub, channels, first, conflated, "e")))

    def flush(self) -> None:
        self.flushes += 1


def test_a_book_sink_gets_each_refresh_as_it_happens_firsts_then_changes_conflated_while_full(generated_small) -> None:
    """Subscribers with a sink (the native transport) are delivered to by the refresh itself: every
    book's first message at once, then each changed book once per refresh, one flush per refresh;
    while the sink cannot take more the books conflate, and the newest version goes out after."""
    _, records = read_records(generated_small)
    market = Market()
    events, books = CountingEventEncoder(""), CountingBookEncoder()
    hub = _hub(market, events, books, book_interval=0.005)  # refreshed by hand below, as the ticker does
    _publish_all(market, hub, records[:5_000])
    n_books = len(market.books())
    assert n_books > 1
    sink, combined_sink = RecordingSink(), RecordingSink()
    sub = hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0)
    combined = hub.subscribe_books(Selection(), depth=10, orders=False, max_rate=0.0, combine=True)
    sub.deliver_to(sink)
    combined.deliver_to(combined_sink)
    for got in (sink.messages, combined_sink.messages):
        assert [m.is_snapshot for m in got] == [True] * n_books
        assert sorted(m.book.instrument_id for m in got) == sorted(k.instrument_id for k in market.books())
    assert not sub.wakeup.is_set()  # no task is woken for a sink's subscriber

    def refresh_after(lo: int, hi: int, subscribed: bool = True) -> set[int]:
        sink.messages.clear()
        combined_sink.messages.clear()
        generation = hub.generation
        _publish_all(market, hub, records[lo:hi])
        flushes = sink.flushes
        hub.refresh_books()
        changed = {key.instrument_id for key in market.books() if hub.changed_at.get(key, 0) > generation}
        # Once per refresh that had something for it, whatever the number of messages.
        assert sink.flushes == flushes + (1 if changed and subscribed else 0)
        return changed

    changed = refresh_after(5_000, 6_000)
    assert changed
    assert sorted(m.book.instrument_id for m in sink.messages) == sorted(changed)  # each changed book once
    assert all(not m.is_snapshot and m.conflated == 0 for m in sink.messages)
    assert len(combined_sink.messages) == 1 and len(combined_sink.messages[0].books) == len(changed)
    for message in sink.messages:
        key = next(k for k in market.books() if k.instrument_id == message.book.instrument_id)
        assert message.book.sequence == market.stats(key).sequence  # the book as it is now

    # Nothing changed: a refresh delivers nothing.
    assert refresh_after(6_000, 6_000) == set() and not sink.messages

    # A full sink: three refreshes' changes stay pending and conflate; then the newest go out once.
    sink.full = True
    changed = refresh_after(6_000, 7_000) | refresh_after(7_000, 8_000) | refresh_after(8_000, 9_000)
    assert not sink.messages and set(k.instrument_id for k in sub.pending) == changed
    sink.full = False
    hub.deliver_due()  # nothing due: the sink asks again itself once it has room (as "writable")
    assert not sink.messages
    sink.deliver(sub)
    assert sorted(m.book.instrument_id for m in sink.messages) == sorted(changed)
    assert any(m.conflated > 0 for m in sink.messages)
    for message in sink.messages:
        key = next(k for k in market.books() if k.instrument_id == message.book.instrument_id)
        assert message.book.sequence == market.stats(key).sequence

    # Unsubscribed: never delivered to again.
    hub.unsubscribe_books(sub)
    assert refresh_after(9_000, 10_000, subscribed=False)
    assert not sink.messages and combined_sink.messages


@pytest.mark.parametrize("instruments", [3, 40])
def test_the_engine_names_the_books_of_its_event_rows_once_each(instruments: int, tmp_path) -> None:
    """``apply(books=True)`` names the distinct books of the step's event rows (what the hub marks
    changed), keyed as the hub keys them, in the order of each one's first row, for a handful of
    books and for many (steps of up to 1,000 records over 3 and over 40 instruments: past 16 the
    engine keeps a set)."""
    from mbostream_core.synth import generate_file

    path = tmp_path / "many.mbo.dbn"
    generate_file(path, records=20_000, instruments=instruments, seed=5)
    info, data = read_records(path)
    market = Market(info.symbols)
    pos, steps, most = 0, 0, 0
    for step in (1, 7, 100, 1000) * 40:
        if pos >= len(data):
            break
        assert market.apply(data[pos:pos], complete_events=False).books is None  # not asked for
        result = market.apply(data[pos:], 0, min(step, len(data) - pos), complete_events=True, books=True)
        keys = (result.events["instrument_id"].astype(np.uint64) << np.uint64(16)) | result.events["publisher_id"].astype(np.uint64)
        first_seen = list(dict.fromkeys(int(k) for k in keys))
        assert result.books == first_seen
        assert sorted(result.books) == sorted(distinct(keys))
        most = max(most, len(first_seen))
        pos += result.end
        steps += 1
    assert steps > 20 and pos == len(data)
    assert most == instruments  # some step touched every book
