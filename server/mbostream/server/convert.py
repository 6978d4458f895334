"""Conversion between domain views and the v1 protobuf messages (integer prices, as on the wire)."""

from __future__ import annotations

import functools

from mbostream_core.market import BookKey, BookView, Market
from mbostream.replay import ReplayState, ReplayStatus
from mbostream_core.v1 import book_pb2, market_data_pb2, replay_pb2

_SIDES = {"B": book_pb2.SIDE_BID, "A": book_pb2.SIDE_ASK, "N": book_pb2.SIDE_NONE}
_STATES = {
    ReplayState.RUNNING: replay_pb2.REPLAY_STATE_RUNNING,
    ReplayState.PAUSED: replay_pb2.REPLAY_STATE_PAUSED,
    ReplayState.FINISHED: replay_pb2.REPLAY_STATE_FINISHED,
    ReplayState.STOPPED: replay_pb2.REPLAY_STATE_STOPPED,
}
_MODES = {
    "rate": replay_pb2.REPLAY_MODE_RATE,
    "speed": replay_pb2.REPLAY_MODE_SPEED,
    "max": replay_pb2.REPLAY_MODE_MAX,
}


def book_snapshot(view: BookView, replay_sequence: int) -> book_pb2.BookSnapshot:
    """A ``BookSnapshot`` message of a view."""
    msg = book_pb2.BookSnapshot(
        instrument_id=view.instrument_id,
        publisher_id=view.publisher_id,
        symbol=view.symbol,
        bid_level_count=view.bid_levels,
        ask_level_count=view.ask_levels,
        volume=view.volume,
        trade_count=view.trade_count,
        sequence=view.sequence,
        replay_sequence=replay_sequence,
        ts_event=view.ts_event,
        ts_recv=view.ts_recv,
        crossed=view.crossed,
        locked=view.locked,
        crossed_since_ts=view.crossed_since,
        anomaly_counts=view.anomalies,
    )
    for levels, out in ((view.bids, msg.bids), (view.asks, msg.asks)):
        for level in levels:
            lm = out.add(price=level.price, size=level.size, count=level.count)
            if level.orders is not None:
                for oid, size in level.orders:
                    lm.orders.add(order_id=oid, size=size)
    bbo = msg.bbo
    if view.bids:
        best = view.bids[0]
        bbo.has_bid, bbo.bid_price, bbo.bid_size, bbo.bid_count = True, best.price, best.size, best.count
    if view.asks:
        best = view.asks[0]
        bbo.has_ask, bbo.ask_price, bbo.ask_size, bbo.ask_count = True, best.price, best.size, best.count
    if view.last_trade is not None:
        t = view.last_trade
        msg.last_trade.CopyFrom(
            book_pb2.Trade(price=t.price, size=t.size, side=_SIDES.get(t.side, book_pb2.SIDE_NONE), ts_event=t.ts_event)
        )
    return msg


def book_update_payload(
    market: Market, key: BookKey, depth: int, orders: bool, *, position: int, ts_out: int
) -> tuple[bytes, bytes, int]:
    """The shared parts of ``StreamBookResponse`` messages, serialized once for every client.

    Returns ``(single, multi, ts_out)``: ``single`` is ``{book, ts_out}``; ``multi`` is
    ``{books: [book]}``, made to be concatenated with other books' into one combined message.
    Per-client fields (``is_snapshot``, ``conflated``, a combined message's ``ts_out``) are appended
    as one more serialized message: protobuf merges concatenated messages (scalars: last wins;
    repeated fields: appended), so the client parses one ``StreamBookResponse``.
    """
    snapshot = book_snapshot(market.view(key, depth=depth, orders=orders), position)
    single = market_data_pb2.StreamBookResponse(book=snapshot, ts_out=ts_out).SerializeToString()
    multi = market_data_pb2.StreamBookResponse(books=[snapshot]).SerializeToString()
    return single, multi, ts_out


@functools.lru_cache(maxsize=4096)
def per_client_suffix(is_snapshot: bool, conflated: int, ts_out: int = 0, epoch: str = "") -> bytes:
    """The per-message fields of a ``StreamBookResponse``, appended to the shared book bytes.

    Cached: a single-book message's suffix only varies with the conflated count, and a stream
    sends it for every book at every refresh."""
    return market_data_pb2.StreamBookResponse(
        is_snapshot=is_snapshot, conflated=conflated, ts_out=ts_out, epoch=epoch
    ).SerializeToString()


def instrument_info(market: Market, key: BookKey, dataset: str) -> market_data_pb2.InstrumentInfo:
    s = market.stats(key)
    return market_data_pb2.InstrumentInfo(
        instrument_id=key.instrument_id,
        publisher_id=key.publisher_id,
        symbol=market.symbol(key.instrument_id),
        dataset=dataset,
        record_count=int(s.record_count),
        sequence=int(s.sequence),
        ts_recv=int(s.ts_recv),
        crossed=bool(s.crossed),
        locked=bool(s.locked),
        order_count=int(s.order_count),
        bid_level_count=int(s.bid_levels),
        ask_level_count=int(s.ask_levels),
    )


def replay_status(status: ReplayStatus, epoch: str = "") -> replay_pb2.ReplayStatus:
    return replay_pb2.ReplayStatus(
        epoch=epoch,
        files=list(status.files),
        state=_STATES[status.state],
        mode=_MODES[status.mode],
        target_records_per_second=status.target_rate,
        speed=status.speed,
        achieved_records_per_second=status.achieved_rate,
        records_done=status.records_done,
        records_total=status.records_total or 0,
        loop=status.loop,
        loops_completed=status.loops_completed,
        replay_sequence=status.position,
        ts_recv=status.ts_recv,
    )
