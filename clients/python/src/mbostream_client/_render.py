"""Edge room: books received over gRPC as JSON documents and terminal ladders.

Prices stay integers (1e-9) until here. The JSON levels are produced by the server package's own
``mbostream.render.level_json``, so ``mbostream-client get-book`` and ``mbostream book`` share one
level schema: ``{"price": "65.400000000", "size": 1, "count": 1}`` (+ ``orders`` when asked).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from mbostream_core.market import Level
from mbostream_core.prices import format_price
from mbostream_core.render import level_json
from mbostream_core.v1 import book_pb2

_SIDE_LETTER: Final = {book_pb2.SIDE_BID: "B", book_pb2.SIDE_ASK: "A", book_pb2.SIDE_NONE: "N"}


def levels(side: Iterable[book_pb2.Level], *, with_orders: bool) -> tuple[Level, ...]:
    """Protobuf levels as the engine's :class:`mbostream.market.Level` (orders only when asked)."""
    return tuple(
        Level(
            level.price,
            level.size,
            level.count,
            tuple((o.order_id, o.size) for o in level.orders) if with_orders else None,
        )
        for level in side
    )


def book_json(book: book_pb2.BookSnapshot, *, with_orders: bool = False) -> dict[str, Any]:
    """One book in the ``mbostream book`` instrument schema, plus its ``replay_sequence``.

    ``order_count`` and ``record_count`` are absent: ``BookSnapshot`` does not carry them.
    """
    trade = book.last_trade if book.HasField("last_trade") else None
    return {
        "instrument_id": book.instrument_id,
        "publisher_id": book.publisher_id,
        "symbol": book.symbol,
        "ts_event": book.ts_event,
        "ts_recv": book.ts_recv,
        "sequence": book.sequence,
        "replay_sequence": book.replay_sequence,
        "crossed": book.crossed,
        "locked": book.locked,
        "crossed_since": book.crossed_since_ts or None,
        "bids": [level_json(level) for level in levels(book.bids, with_orders=with_orders)],
        "asks": [level_json(level) for level in levels(book.asks, with_orders=with_orders)],
        "last_trade": None
        if trade is None
        else {
            "price": format_price(trade.price),
            "size": trade.size,
            "side": _SIDE_LETTER.get(trade.side, "N"),
            "ts_event": trade.ts_event,
        },
        "volume": book.volume,
        "trade_count": book.trade_count,
        "bid_levels": book.bid_level_count,
        "ask_levels": book.ask_level_count,
        "anomalies": dict(sorted(book.anomaly_counts.items())),
    }


def ladder(book: book_pb2.BookSnapshot, *, status: str = "") -> str:
    """A terminal ladder: asks above (worst to best), then bids (best to worst), one level a line."""
    flag = "  CROSSED" if book.crossed else "  LOCKED" if book.locked else ""
    lines = [
        f"{book.symbol or book.instrument_id} (instrument {book.instrument_id}, publisher {book.publisher_id})"
        f"  sequence {book.sequence}  replay {book.replay_sequence}{flag}",
        f"{'orders':>8} {'bid size':>10} {'price':>18} {'ask size':>10} {'orders':>8}",
    ]
    for level in reversed(book.asks):
        lines.append(f"{'':>8} {'':>10} {format_price(level.price):>18} {level.size:>10} {level.count:>8}")
    spread = ""
    if book.bbo.has_bid and book.bbo.has_ask:
        spread = f" spread {format_price(book.bbo.ask_price - book.bbo.bid_price)} "
    lines.append(spread.center(58, "-"))
    for level in book.bids:
        lines.append(f"{level.count:>8} {level.size:>10} {format_price(level.price):>18}")
    if book.HasField("last_trade"):
        t = book.last_trade
        side = _SIDE_LETTER.get(t.side, "N")
        lines.append(f"last trade {t.size} @ {format_price(t.price)} ({side})  volume {book.volume}")
    if status:
        lines.append(status)
    return "\n".join(lines)
