"""Audit room: the correctness report of a replay.

Two different things, kept apart:

1. **The engine's own rules**, checked by the native engine after every F_LAST: resting sizes > 0,
   level size = sum of its orders, count = number of orders, no order in two places, no empty level,
   queue order = arrival order changed only by the documented priority-loss rules. A violation is a
   bug in mbostream; ``--strict`` turns it into a failing exit code.
2. **What the feed shows about exchange rules**, measured and never forced: whether fills take
   levels from the best price outward and, per level, a prefix of its FIFO queue; whether trades
   print at or through the best price; crossed/locked intervals; every anomaly kind. Real CME data
   does not conform 100%, so these are rates with classified exceptions and examples.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from mbostream_core.dbn import DbnReader
from mbostream.errors import UnknownInstrumentError
from mbostream_core.market import BookKey, Market
from mbostream_core.prices import format_price

MAX_EXAMPLES: Final = 10
_T: Final = ord("T")
_F: Final = ord("F")


@dataclass
class FillPriority:
    """Price-time priority of fills as the feed shows it."""

    #: Trade events (runs of T/F records of one book) that filled at least one known resting order.
    events: int = 0
    #: Events whose fills took levels from the best price outward with no level skipped.
    best_first: int = 0
    #: (event, price level) pairs with fills.
    level_fills: int = 0
    #: Level fills that took exactly a prefix of the level's FIFO queue.
    queue_prefix: int = 0
    exceptions: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TradePrints:
    """Trade prices against the opposite best price just before the trade."""

    trades: int = 0
    at_best: int = 0
    through_best: int = 0
    inside_best: int = 0
    no_opposite_side: int = 0
    unsided: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AuditReport:
    """Everything ``mbostream audit`` reports."""

    path: str
    records: int = 0
    events: int = 0
    integrity_violations: int = 0
    integrity_examples: list[dict[str, Any]] = field(default_factory=list)
    fills: FillPriority = field(default_factory=FillPriority)
    prints: TradePrints = field(default_factory=TradePrints)
    books: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """True when the engine never broke its own rules."""
        return self.integrity_violations == 0

    def to_json(self) -> dict[str, Any]:
        f, p = self.fills, self.prints
        sided = p.trades - p.unsided - p.no_opposite_side
        return {
            "file": self.path,
            "records": self.records,
            "events": self.events,
            "engine_integrity": {
                "checked_at_every_f_last": True,
                "violations": self.integrity_violations,
                "examples": self.integrity_examples,
            },
            "fill_priority": {
                "events": f.events,
                "best_level_first": f.best_first,
                "best_level_first_rate": _rate(f.best_first, f.events),
                "level_fills": f.level_fills,
                "queue_prefix": f.queue_prefix,
                "queue_prefix_rate": _rate(f.queue_prefix, f.level_fills),
                "exceptions": dict(f.exceptions.most_common()),
                "examples": f.examples,
            },
            "trade_prints": {
                "trades": p.trades,
                "at_best": p.at_best,
                "through_best": p.through_best,
                "inside_best": p.inside_best,
                "no_opposite_side": p.no_opposite_side,
                "unsided": p.unsided,
                "at_or_through_rate": _rate(p.at_best + p.through_best, sided),
                "examples": p.examples,
            },
            "books": self.books,
        }


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


def _trade_fill_runs(actions: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive T/F records as ``(start, stop)`` index pairs."""
    tf = (actions == _T) | (actions == _F)
    if not tf.any():
        return []
    edges = np.diff(np.concatenate(([0], tf.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


class _Auditor:
    def __init__(self, report: AuditReport, market: Market) -> None:
        self.report = report
        self.market = market

    def feed(self, records: np.ndarray) -> None:
        actions = records["action"].view(np.uint8)
        cursor = 0
        for start, stop in _trade_fill_runs(actions):
            # The book is consistent enough to judge here: T/F records never change it.
            self._apply(records, cursor, start)
            self._judge_run(records[start:stop])
            cursor = start
        self._apply(records, cursor, len(records))

    def _apply(self, records: np.ndarray, start: int, stop: int) -> None:
        if start >= stop:
            return
        result = self.market.apply(records, start, stop, complete_events=False, audit=True)
        self.report.events += len(result.events)
        for index, iid, pid, seq, message in result.violations:
            self.report.integrity_violations += 1
            if len(self.report.integrity_examples) < MAX_EXAMPLES:
                r = records[index]
                self.report.integrity_examples.append(
                    {
                        "instrument_id": iid,
                        "publisher_id": pid,
                        "sequence": seq,
                        "ts_event": int(r["ts_event"]),
                        "violation": message,
                    }
                )

    def _judge_run(self, run: np.ndarray) -> None:
        for iid, pid in {(int(i), int(p)) for i, p in zip(run["instrument_id"], run["publisher_id"])}:
            key = BookKey(iid, pid)
            try:
                self.market.resolve(iid, pid)
            except UnknownInstrumentError:
                continue  # trades naming a book that no F_LAST has shown yet: nothing to judge against
            mine = run[(run["instrument_id"] == iid) & (run["publisher_id"] == pid)]
            self._judge_prints(key, mine[mine["action"] == b"T"])
            self._judge_fills(key, mine[mine["action"] == b"F"])

    def _judge_prints(self, key: BookKey, trades: np.ndarray) -> None:
        p = self.report.prints
        bid, ask = self.market.bbo(key)
        for t in trades:
            p.trades += 1
            side, price = t["side"], int(t["price"])
            if side not in (b"B", b"A"):
                p.unsided += 1
                continue
            best = ask if side == b"B" else bid
            if best is None:
                p.no_opposite_side += 1
                continue
            # A buy aggressor lifts asks: at the best ask, or through it (a sweep); below it is "inside".
            better = price > best.price if side == b"B" else price < best.price
            if price == best.price:
                p.at_best += 1
            elif better:
                p.through_best += 1
            else:
                p.inside_best += 1
                if len(p.examples) < MAX_EXAMPLES:
                    p.examples.append(
                        {
                            "sequence": int(t["sequence"]),
                            "ts_event": int(t["ts_event"]),
                            "aggressor": side.decode(),
                            "price": format_price(price),
                            "opposite_best": format_price(best.price),
                        }
                    )

    def _judge_fills(self, key: BookKey, fills: np.ndarray) -> None:
        by_side: dict[str, list[tuple[int, int]]] = {}
        for r in fills:
            side = r["side"].decode()
            if side in ("B", "A"):
                by_side.setdefault(side, []).append((int(r["price"]), int(r["order_id"])))
        for side, side_fills in by_side.items():
            self._judge_side(key, side, side_fills, fills)

    def _judge_side(self, key: BookKey, side: str, side_fills: list[tuple[int, int]], fills: np.ndarray) -> None:
        f = self.report.fills
        bids, asks = self.market.depth(key)
        ladder = [level.price for level in (bids if side == "B" else asks)]
        touched: dict[int, list[int]] = {}
        for price, oid in side_fills:
            ids = touched.setdefault(price, [])
            if oid not in ids:  # repeated partial fills of one order count once
                ids.append(oid)
        f.events += 1
        prices = list(touched)
        if prices == ladder[: len(prices)]:
            f.best_first += 1
        else:
            f.exceptions["levels_not_best_first"] += 1
        for price, filled in touched.items():
            f.level_fills += 1
            queue = [oid for oid, _ in self.market.level_queue(key, side, price) or []]
            if queue[: len(filled)] == filled:
                f.queue_prefix += 1
                continue
            reason = self._classify(key, queue, filled)
            f.exceptions[reason] += 1
            if reason == "unexplained" and len(f.examples) < MAX_EXAMPLES:
                f.examples.append(
                    {
                        "instrument_id": key.instrument_id,
                        "side": side,
                        "price": format_price(price),
                        "sequence": int(fills[0]["sequence"]),
                        "ts_event": int(fills[0]["ts_event"]),
                        "filled_in_order": filled,
                        "queue_before": queue[: max(len(filled) + 3, 5)],
                    }
                )

    def _classify(self, key: BookKey, queue: list[int], filled: list[int]) -> str:
        in_queue = set(queue)
        missing = [oid for oid in filled if oid not in in_queue]
        if missing:
            resting_elsewhere = [oid for oid in missing if self.market.order(key, oid) is not None]
            return "order_at_another_price" if resting_elsewhere else "fill_of_unknown_order"
        # Orders the fills jumped over (ahead in the queue, not filled), and the filled ones.
        last = max(queue.index(oid) for oid in filled)
        involved = set(queue[: last + 1])
        if involved & self.market.orders_from_unknown_modify:
            return "queue_position_unknown_from_modify_of_unknown_id"
        return "unexplained"


def audit_file(path: str | os.PathLike[str]) -> AuditReport:
    """Replays a file with the engine's integrity checks on and measures the feed's own rules."""
    with DbnReader(path) as reader:
        market = Market(reader.info.symbols)
        report = AuditReport(path=os.fspath(path))
        auditor = _Auditor(report, market)
        for chunk in reader.chunks():
            auditor.feed(chunk)
            report.records += len(chunk)
    for key in market.books():
        s = market.stats(key)
        report.books.append(
            {
                "instrument_id": key.instrument_id,
                "publisher_id": key.publisher_id,
                "symbol": market.symbol(key.instrument_id),
                "records": s.record_count,
                "orders": s.order_count,
                "bid_levels": s.bid_levels,
                "ask_levels": s.ask_levels,
                "anomalies": market.anomaly_counts(key),
                "unattributed_fills": s.unattributed_fills,
                "fills_over_displayed": s.fills_over_displayed,
                "crossed_intervals": s.crossed_intervals,
                "crossed_seconds": round(int(s.crossed_ns) / 1e9, 3),
                "locked_intervals": s.locked_intervals,
                "locked_seconds": round(int(s.locked_ns) / 1e9, 3),
                "crossed_now": s.crossed,
                "crossed_since": s.crossed_since or None,
            }
        )
    return report


def format_report(report: AuditReport) -> str:
    """The human-readable audit."""
    j = report.to_json()
    f, p = j["fill_priority"], j["trade_prints"]
    lines = [
        f"audit of {report.path}: {report.records:,} records, {report.events:,} F_LAST events",
        "",
        "1. engine integrity (checked after every F_LAST)",
        f"   violations: {report.integrity_violations}" + ("  OK" if report.sound else "  FAILED"),
    ]
    lines += [f"   - {e}" for e in report.integrity_examples]
    lines += [
        "",
        "2. what the feed shows",
        f"   fills: {f['events']:,} trade events; best level first in {f['best_level_first']:,}"
        f" ({_pct(f['best_level_first_rate'])})",
        f"   level fills taking a FIFO queue prefix: {f['queue_prefix']:,} of {f['level_fills']:,}"
        f" ({_pct(f['queue_prefix_rate'])})",
    ]
    lines += [f"     exception {k}: {v:,}" for k, v in f["exceptions"].items()]
    lines += [f"     example: {e}" for e in f["examples"][:5]]
    lines += [
        f"   trades: {p['trades']:,}; at best {p['at_best']:,}, through best {p['through_best']:,}, "
        f"inside best {p['inside_best']:,}, no opposite side {p['no_opposite_side']:,}, unsided {p['unsided']:,}"
        f" (at or through: {_pct(p['at_or_through_rate'])})",
    ]
    for b in report.books:
        lines.append(
            f"   {b['symbol']} ({b['instrument_id']}/{b['publisher_id']}): {b['orders']} orders, "
            f"{b['bid_levels']} bid / {b['ask_levels']} ask levels; crossed {b['crossed_intervals']}x "
            f"({b['crossed_seconds']} s), locked {b['locked_intervals']}x ({b['locked_seconds']} s)"
            + (f"; crossed since ts_event {b['crossed_since']}" if b["crossed_now"] else "")
        )
        anomalies = ", ".join(f"{k}={v:,}" for k, v in b["anomalies"].items()) or "none"
        lines.append(f"     anomalies: {anomalies}")
        lines.append(
            f"     side-N fills naming no order: {b['unattributed_fills']:,}; "
            f"fills above displayed size (iceberg refills): {b['fills_over_displayed']:,}"
        )
    return "\n".join(lines)


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"
