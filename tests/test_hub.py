"""The fan-out hub: each batch is encoded once per subscriber variant and each book once per refresh,
and the same payload object goes to every subscriber that wants it (serialize once), by the gRPC
layer's real encoders; the hub itself never builds a wire message."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from server_harness import run

from mbostream_core.dbn import read_records
from mbostream.feed import Batch
from mbostream.hub import BookPayload, Hub, Selection
from mbostream_core.market import BookKey, Market
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


def _hub(market: Market, events: CountingEventEncoder, books: CountingBookEncoder) -> Hub:
    return Hub(
        market,
        event_encoder=events,
        book_encoder=books,
        replay_buffer_records=100_000,
        subscriber_buffer_batches=1_000,
        max_streams=100,
        book_interval=0.0,
        epoch="0011223344556677",
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


def test_one_encoding_per_batch_variant_shared_by_every_subscriber(generated_small) -> None:
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
        batches = len(_publish_all(market, hub, records))

        assert events.calls == 2 * batches  # two variants, each encoded once per batch, for 8 subscribers
        for group in (everything, filtered):
            queues = [list(sub.queue) for sub in group]
            assert queues[0], "nothing delivered"
            for other in queues[1:]:
                assert len(other) == len(queues[0])
                assert all(a[1] is b[1] for a, b in zip(queues[0], other, strict=True)), "a payload was made twice"
        message = md.StreamEventsResponse.FromString(everything[0].queue[0][1])
        assert message.epoch == "0011223344556677" and message.replay_sequence[0] == 1
        filtered_message = md.StreamEventsResponse.FromString(filtered[0].queue[0][1])
        assert set(filtered_message.instrument_id) == {first_iid}

    run(scenario())


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
