"""One table test per documented MBO book rule, and per anomaly kind."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from mbo_records import F_LAST, F_SNAPSHOT, F_TOB, UNDEF_PRICE, Rec, px, records

from mbostream_core.market import WARN_FIRST_N, BookKey, Level, Market
from mbostream_core.records import STATE_CROSSED, STATE_LOCKED, STATE_TOP_CHANGED

KEY = BookKey(1, 1)
P1, P2, P3 = px("100.25"), px("100.50"), px("100.75")


def run(*recs: Rec) -> Market:
    market = Market({1: "TEST"})
    market.apply(records(recs))
    return market


def queues(market: Market, side: str) -> dict[int, list[tuple[int, int]]]:
    bids, asks = market.depth(KEY)
    levels = bids if side == "B" else asks
    return {level.price: market.level_queue(KEY, side, level.price) or [] for level in levels}


def test_add_joins_the_back_of_its_level() -> None:
    m = run(Rec("A", "B", 1, P1, 5), Rec("A", "B", 2, P1, 3), Rec("A", "B", 3, P2, 1))
    assert queues(m, "B") == {P2: [(3, 1)], P1: [(1, 5), (2, 3)]}
    bids, asks = m.depth(KEY)
    assert bids == (Level(P2, 1, 1), Level(P1, 8, 2))
    assert asks == ()


def test_partial_cancel_reduces_and_keeps_priority() -> None:
    m = run(Rec("A", "A", 1, P2, 5), Rec("A", "A", 2, P2, 3), Rec("C", "A", 1, P2, 2))
    assert queues(m, "A") == {P2: [(1, 3), (2, 3)]}
    assert m.depth(KEY)[1] == (Level(P2, 6, 2),)


def test_full_cancel_removes_order_and_empty_level() -> None:
    m = run(Rec("A", "A", 1, P2, 5), Rec("A", "A", 2, P3, 1), Rec("C", "A", 1, P2, 5))
    assert queues(m, "A") == {P3: [(2, 1)]}
    assert m.stats(KEY).order_count == 1


def test_modify_price_change_moves_to_back_of_new_level() -> None:
    m = run(Rec("A", "B", 1, P1, 1), Rec("A", "B", 2, P2, 1), Rec("A", "B", 3, P1, 1), Rec("M", "B", 1, P2, 1))
    assert queues(m, "B") == {P2: [(2, 1), (1, 1)], P1: [(3, 1)]}


def test_modify_size_increase_loses_priority() -> None:
    m = run(Rec("A", "B", 1, P1, 1), Rec("A", "B", 2, P1, 1), Rec("M", "B", 1, P1, 4))
    assert queues(m, "B") == {P1: [(2, 1), (1, 4)]}
    assert m.depth(KEY)[0] == (Level(P1, 5, 2),)


def test_modify_size_decrease_keeps_priority() -> None:
    m = run(Rec("A", "B", 1, P1, 4), Rec("A", "B", 2, P1, 1), Rec("M", "B", 1, P1, 2))
    assert queues(m, "B") == {P1: [(1, 2), (2, 1)]}
    assert m.depth(KEY)[0] == (Level(P1, 3, 2),)


@pytest.mark.parametrize("action", ["T", "F", "N"])
def test_trade_fill_none_leave_resting_orders_alone(action: str) -> None:
    m = run(Rec("A", "A", 1, P2, 5), Rec(action, "A", 1, P2, 2))
    assert queues(m, "A") == {P2: [(1, 5)]}


def test_trades_feed_last_trade_and_volume_fills_do_not() -> None:
    m = run(
        Rec("A", "A", 1, P2, 5),
        Rec("T", "B", 99, P2, 2, flags=0),
        Rec("F", "A", 1, P2, 2, flags=0),
        Rec("C", "A", 1, P2, 2),
        Rec("T", "A", 98, P1, 3),
    )
    view = m.view(KEY)
    assert view.last_trade is not None
    assert (view.last_trade.price, view.last_trade.size, view.last_trade.side) == (P1, 3, "A")
    assert view.volume == 5
    assert view.trade_count == 2
    assert m.stats(KEY).fill_count == 1


def test_clear_empties_the_book() -> None:
    m = run(Rec("A", "A", 1, P2, 5), Rec("A", "B", 2, P1, 5), Rec("R"))
    assert m.depth(KEY) == ((), ())
    assert m.stats(KEY).order_count == 0
    assert m.check_integrity(KEY) == []


def test_tob_add_replaces_the_side_and_counts_no_orders() -> None:
    m = run(
        Rec("A", "B", 1, P1, 5),
        Rec("A", "B", 2, P2, 5),
        Rec("A", "B", 0, P3, 7, flags=F_LAST | F_TOB),
    )
    assert m.depth(KEY)[0] == (Level(P3, 7, 0),)
    assert m.stats(KEY).order_count == 0
    assert m.check_integrity(KEY) == []


def test_tob_add_with_undef_price_only_clears_the_side() -> None:
    m = run(
        Rec("A", "A", 0, P3, 7, flags=F_LAST | F_TOB),
        Rec("A", "B", 0, P1, 2, flags=F_LAST | F_TOB),
        Rec("A", "A", 0, UNDEF_PRICE, 0, flags=F_LAST | F_TOB),
    )
    assert m.depth(KEY) == ((Level(P1, 2, 0),), ())


def test_book_is_published_only_at_f_last() -> None:
    m = Market()
    result = m.apply(
        records([Rec("A", "B", 1, P1, 1, flags=0), Rec("A", "A", 2, P3, 1, flags=0), Rec("A", "B", 3, P2, 1)])
    )
    assert len(result.events) == 1
    row = result.events[0]
    assert (row["index"], row["bid_price"], row["bid_size"], row["ask_price"]) == (2, P2, 1, P3)
    assert row["state"] & STATE_TOP_CHANGED


def test_complete_events_continues_to_the_f_last() -> None:
    m = Market()
    arr = records([Rec("A", "B", 1, P1, 1, flags=0), Rec("A", "B", 2, P1, 1, flags=0), Rec("A", "B", 3, P1, 1)])
    first = m.apply(arr, 0, 1, complete_events=True)
    assert (first.end, first.consistent) == (3, True)
    m2 = Market()
    partial = m2.apply(arr, 0, 1, complete_events=False)
    assert (partial.end, partial.consistent) == (1, False)
    assert m2.in_event(KEY)


def test_crossed_and_locked_are_state_not_errors() -> None:
    m = Market()
    result = m.apply(records([Rec("A", "B", 1, P2, 1), Rec("A", "A", 2, P2, 1), Rec("A", "A", 3, P1, 1)]))
    assert result.events[1]["state"] & STATE_LOCKED
    assert result.events[2]["state"] & STATE_CROSSED
    view = m.view(KEY)
    assert view.crossed and view.crossed_since == int(records([Rec("A")] * 3)[2]["ts_event"])
    assert view.order_count == 3  # nothing deleted to uncross it
    assert m.check_integrity(KEY) == []


def test_books_are_per_instrument_and_publisher() -> None:
    m = run(Rec("A", "B", 1, P1, 1, instrument_id=1, publisher_id=1), Rec("A", "B", 1, P2, 2, instrument_id=1, publisher_id=2))
    assert m.books() == [BookKey(1, 1), BookKey(1, 2)]
    assert m.depth(BookKey(1, 2))[0] == (Level(P2, 2, 1),)


# Anomalies: each kind counted, the documented handling applied, never a crash.
ANOMALY_TABLE = [
    ("cancel_unknown_order", [Rec("C", "B", 42, P1, 1)], {}),
    ("fill_unknown_order", [Rec("F", "B", 42, P1, 1)], {}),
    ("modify_unknown_order", [Rec("M", "B", 42, P1, 3)], {P1: [(42, 3)]}),
    ("duplicate_add", [Rec("A", "B", 1, P1, 1), Rec("A", "B", 2, P1, 1), Rec("A", "B", 1, P1, 5)], {P1: [(2, 1), (1, 5)]}),
    ("cancel_exceeds_size", [Rec("A", "B", 1, P1, 2), Rec("C", "B", 1, P1, 3)], {}),
    ("modify_side_change", [Rec("A", "B", 1, P1, 2), Rec("M", "A", 1, P3, 2)], {}),
    ("zero_size", [Rec("A", "B", 1, P1, 0)], {}),
    ("unknown_action", [Rec("A", "B", 1, P1, 1), Rec("X", "B", 1, P1, 1)], {P1: [(1, 1)]}),
    ("unknown_side", [Rec("A", "N", 1, P1, 1)], {}),
    ("undefined_price", [Rec("A", "B", 1, UNDEF_PRICE, 1)], {}),
]


@pytest.mark.parametrize(("kind", "recs", "bid_queues"), ANOMALY_TABLE, ids=[t[0] for t in ANOMALY_TABLE])
def test_each_anomaly_is_counted_and_handled_as_documented(kind: str, recs: list[Rec], bid_queues: dict) -> None:
    m = run(*recs)
    assert m.anomaly_counts(KEY) == {kind: 1}
    assert m.anomaly_totals == {kind: 1}
    assert queues(m, "B") == bid_queues
    assert m.check_integrity(KEY) == []


def test_side_change_moves_order_to_the_back_of_the_other_side() -> None:
    m = run(Rec("A", "A", 7, P3, 1), Rec("A", "B", 1, P1, 2), Rec("M", "A", 1, P3, 2))
    assert queues(m, "A") == {P3: [(7, 1), (1, 2)]}
    assert queues(m, "B") == {}


def test_zero_size_modify_removes_and_zero_size_cancel_is_a_no_op() -> None:
    m = run(Rec("A", "B", 1, P1, 2), Rec("A", "B", 2, P1, 2), Rec("M", "B", 1, P1, 0), Rec("C", "B", 2, P1, 0))
    assert queues(m, "B") == {P1: [(2, 2)]}
    assert m.anomaly_counts(KEY) == {"zero_size": 2}


def test_side_n_fill_of_unknown_order_is_not_an_anomaly() -> None:
    m = run(Rec("F", "N", 42, P1, 1))
    assert m.anomaly_counts(KEY) == {}
    assert m.stats(KEY).unattributed_fills == 1


def test_fill_above_displayed_size_is_a_feed_fact_not_an_anomaly() -> None:
    m = run(Rec("A", "B", 1, P1, 1), Rec("F", "B", 1, P1, 2, flags=0), Rec("M", "B", 1, P1, 3))
    assert m.anomaly_counts(KEY) == {}
    assert m.stats(KEY).fills_over_displayed == 1


def test_anomalies_carry_context() -> None:
    m = Market()
    m._engine.apply(records([Rec("C", "A", 42, P1, 1, sequence=777, ts_event=123456789)]).view("u1"))
    (anomaly,) = m.drain_anomalies()
    assert (anomaly.kind, anomaly.order_id, anomaly.sequence, anomaly.ts_event, anomaly.action, anomaly.side) == (
        "cancel_unknown_order",
        42,
        777,
        123456789,
        "C",
        "A",
    )


def test_repeated_anomalies_warn_first_n_per_kind_and_book_then_are_only_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A looped file without a snapshot repeats the same anomalies every pass: each kind and book
    warns WARN_FIRST_N times, later batches are counted (totals, unknown-modify orders) without a
    log line at WARNING, and DEBUG, when on, still itemises every one."""
    market = Market({1: "TEST"})
    batch = [Rec("C", "B", 42, P1, 1), Rec("M", "B", 1000, P1, 1), Rec("C", "B", 1000, P1, 1)]
    with caplog.at_level(logging.WARNING, logger="mbostream_core.market"):
        for n in range(10):
            batch[1] = Rec("M", "B", 1000 + n, P1, 1)
            batch[2] = Rec("C", "B", 1000 + n, P1, 1)
            market.apply(records(batch))
    warned = Counter(r.anomaly for r in caplog.records if r.levelno == logging.WARNING)
    assert warned == {"cancel_unknown_order": WARN_FIRST_N, "modify_unknown_order": WARN_FIRST_N}
    assert market.anomaly_totals == {"cancel_unknown_order": 10, "modify_unknown_order": 10}
    assert market.orders_from_unknown_modify == set(range(1000, 1010))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="mbostream_core.market"):
        market.apply(records([Rec("C", "B", 43, P1, 1)]))
    assert [(r.levelno, r.anomaly, r.occurrence) for r in caplog.records] == [(logging.DEBUG, "cancel_unknown_order", 11)]


def test_snapshot_records_rebuild_the_book_exactly() -> None:
    m = run(
        Rec("A", "B", 1, P1, 5),
        Rec("A", "B", 2, P1, 3),
        Rec("A", "A", 3, P3, 2),
        Rec("M", "B", 1, P1, 9),
        Rec("A", "A", 4, P3, 1),
    )
    snap = m.snapshot(KEY, ts_recv=5)
    assert [chr(a[0]) for a in snap["action"]] == ["R", "A", "A", "A", "A"]
    assert all(f & F_SNAPSHOT for f in snap["flags"])
    assert [bool(f & F_LAST) for f in snap["flags"]] == [False] * 4 + [True]
    replica = Market()
    replica.apply(snap)
    assert queues(replica, "B") == queues(m, "B") == {P1: [(2, 3), (1, 9)]}
    assert queues(replica, "A") == queues(m, "A")
