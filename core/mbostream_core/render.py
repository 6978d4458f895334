"""Edge room: books as JSON documents and terminal ladders (the only place prices become strings)."""

from __future__ import annotations

from typing import Any

from mbostream_core.market import BookView, Level
from mbostream_core.prices import format_price


def level_json(level: Level) -> dict[str, Any]:
    """``{"price": "65.400000000", "size": 1, "count": 1}`` plus ``orders`` when the view has them."""
    out: dict[str, Any] = {"price": format_price(level.price), "size": level.size, "count": level.count}
    if level.orders is not None:
        out["orders"] = [{"order_id": oid, "size": size} for oid, size in level.orders]
    return out


def book_json(view: BookView) -> dict[str, Any]:
    """One instrument of the ``mbostream book`` document (schema documented in the README)."""
    trade = view.last_trade
    return {
        "instrument_id": view.instrument_id,
        "publisher_id": view.publisher_id,
        "symbol": view.symbol,
        "ts_event": view.ts_event,
        "ts_recv": view.ts_recv,
        "sequence": view.sequence,
        "crossed": view.crossed,
        "locked": view.locked,
        "crossed_since": view.crossed_since or None,
        "bids": [level_json(level) for level in view.bids],
        "asks": [level_json(level) for level in view.asks],
        "last_trade": None
        if trade is None
        else {"price": format_price(trade.price), "size": trade.size, "side": trade.side, "ts_event": trade.ts_event},
        "volume": view.volume,
        "order_count": view.order_count,
        "bid_levels": view.bid_levels,
        "ask_levels": view.ask_levels,
        "record_count": view.record_count,
        "anomalies": dict(sorted(view.anomalies.items())),
    }


def book_table(view: BookView) -> str:
    """A readable ladder: asks above (worst to best), then bids (best to worst)."""
    lines = [
        f"{view.symbol} (instrument {view.instrument_id}, publisher {view.publisher_id})  "
        f"sequence {view.sequence}  ts_event {view.ts_event}"
        + ("  CROSSED" if view.crossed else "  LOCKED" if view.locked else ""),
        f"{'orders':>8} {'bid size':>10} {'price':>18} {'ask size':>10} {'orders':>8}",
    ]
    for level in reversed(view.asks):
        lines.append(f"{'':>8} {'':>10} {format_price(level.price):>18} {level.size:>10} {level.count:>8}")
    lines.append("-" * 58)
    for level in view.bids:
        lines.append(f"{level.count:>8} {level.size:>10} {format_price(level.price):>18}")
    if view.anomalies:
        lines.append("anomalies: " + ", ".join(f"{k}={v}" for k, v in sorted(view.anomalies.items())))
    return "\n".join(lines)
