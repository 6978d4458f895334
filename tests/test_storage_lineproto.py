"""Line protocol of the sink: every point exact, no two points colliding, escaping, windows, depth."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from influx.points import Point, parse
from influx.replay import Replay, expected_times
from mbostream_core import _engine
from mbostream_core.dbn import FileInfo
from mbostream_core.records import MBO_DTYPE
from mbostream.feed import Batch
from mbostream_core.records import STATE_TOP_CHANGED
from mbostream_core.prices import UNDEF_PRICE
from mbostream.storage.lineproto import REWIND_WINDOW_NS, LineFormatter

pytest_plugins = ["influx.fixtures"]  # the real InfluxDB stack and the CLX5 sample

T0 = 1_758_742_200_000_000_000


def format_all(formatter: LineFormatter, batches: list[Batch], max_points: int = 10_000) -> list[Point]:
    return [p for batch in batches for text, _ in formatter.batch(batch, max_points) for p in parse(text)]


def replay_batches(info: FileInfo, records: np.ndarray, size: int = 4096) -> tuple[Replay, list[Batch]]:
    replay = Replay(info, records)
    batches: list[Batch] = []
    replay.run(batches.append, size)
    return replay, batches


def book_tags(symbol: str, iid: int, pid: int) -> tuple[tuple[str, str], ...]:
    return (("instrument", symbol), ("instrument_id", str(iid)), ("publisher_id", str(pid)))


def test_every_record_becomes_an_exact_mbo_point(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    _, batches = replay_batches(info, records)
    points = [p for p in format_all(LineFormatter(info.symbols.get, mbo=True, depth_levels=10), batches) if p.measurement == "mbo"]
    assert len(points) == len(records)
    keys = list(zip(records["instrument_id"].tolist(), records["publisher_id"].tolist()))
    times = expected_times(records["ts_event"].tolist(), keys, REWIND_WINDOW_NS)
    for point, r, t in zip(points, records, times):
        action, side = r["action"].decode(), r["side"].decode()
        assert point.tags == (("action", action), *book_tags("CLX5", 432669, 1), ("side", side))
        assert point.fields == {
            "order_id": int(r["order_id"]),
            "price": int(r["price"]),
            "size": int(r["size"]),
            "flags": int(r["flags"]),
            "sequence": int(r["sequence"]),
            "ts_event": int(r["ts_event"]),
            "ts_recv": int(r["ts_recv"]),
        }
        assert point.time == t


def test_trades_and_bbo_follow_the_records_and_events(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    replay, batches = replay_batches(info, records)
    points = format_all(LineFormatter(info.symbols.get, mbo=False, depth_levels=10), batches)
    by_measurement = Counter(p.measurement for p in points)
    trades = records[records["action"] == b"T"]
    events = replay.all_events
    changed = events[(events["state"] & STATE_TOP_CHANGED) != 0]
    assert by_measurement == {"trades": len(trades), "bbo": len(changed)}
    trade_points = [p for p in points if p.measurement == "trades"]
    for point, r in zip(trade_points, trades):
        assert dict(point.tags)["side"] == r["side"].decode()
        assert (point.fields["price"], point.fields["size"], point.fields["sequence"]) == (int(r["price"]), int(r["size"]), int(r["sequence"]))
    bbo_points = [p for p in points if p.measurement == "bbo"]
    times = expected_times(changed["ts_event"].tolist(), [0] * len(changed), REWIND_WINDOW_NS)
    for point, e, t in zip(bbo_points, changed, times):
        f = point.fields
        assert point.time == t and f["ts_event"] == int(e["ts_event"]) and f["sequence"] == int(e["sequence"])
        assert (f["bid_size"], f["bid_count"], f["ask_size"], f["ask_count"]) == (
            int(e["bid_size"]), int(e["bid_count"]), int(e["ask_size"]), int(e["ask_count"]))
        bid, ask = int(e["bid_price"]), int(e["ask_price"])
        assert f.get("bid_price", UNDEF_PRICE) == bid and f.get("ask_price", UNDEF_PRICE) == ask
        if bid != UNDEF_PRICE and ask != UNDEF_PRICE:
            assert f["spread"] == ask - bid and f["mid"] == (bid + ask) // 2
        else:
            assert "spread" not in f and "mid" not in f
        assert f["crossed"] == bool(e["state"] & 1) and f["locked"] == bool(e["state"] & 2)


def test_no_two_points_share_measurement_tags_and_time(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    _, batches = replay_batches(info, records)
    points = format_all(LineFormatter(info.symbols.get, mbo=True, depth_levels=10), batches)
    keys = Counter(p.key for p in points)
    assert keys.most_common(1)[0][1] == 1
    shared = Counter(records["ts_event"].tolist()).most_common(1)[0][1]
    assert shared > 100, "the sample has large groups of records sharing one ts_event"


def test_windows_and_batch_boundaries_do_not_change_the_points(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    _, whole = replay_batches(info, records, size=len(records))
    _, small = replay_batches(info, records, size=333)
    one = format_all(LineFormatter(info.symbols.get, mbo=True, depth_levels=10), whole)
    many = format_all(LineFormatter(info.symbols.get, mbo=True, depth_levels=10), small, max_points=1000)
    assert sorted(one, key=lambda p: p.key) == sorted(many, key=lambda p: p.key)


def test_windows_bound_the_points_per_call(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    _, (batch,) = replay_batches(info, records, size=len(records))
    sizes = [n for _, n in LineFormatter(info.symbols.get, mbo=True, depth_levels=10).batch(batch, 1000)]
    assert len(sizes) == -(-len(records) // 1000)
    assert max(sizes) <= 3 * 1000


def test_a_replayed_stretch_maps_onto_the_same_points(clx5: tuple[FileInfo, np.ndarray]) -> None:
    info, records = clx5
    _, batches = replay_batches(info, records[:5000])
    formatter = LineFormatter(info.symbols.get, mbo=True, depth_levels=10)
    first = format_all(formatter, batches)
    again = format_all(formatter, batches)  # the replay looped: feed time jumps back hours
    assert again == first


def records_of(instrument_id: int) -> np.ndarray:
    """An add that sets the best bid, then a trade: 2 ``mbo``, 1 ``trades`` and 1 ``bbo`` point."""
    r = np.zeros(2, dtype=MBO_DTYPE)
    r["length"], r["rtype"], r["publisher_id"], r["instrument_id"] = 14, 0xA0, 1, instrument_id
    r["ts_event"], r["ts_recv"] = T0, T0 + 1
    r["action"], r["side"], r["flags"] = [b"A", b"T"], [b"B", b"N"], 0x80
    r["order_id"], r["price"], r["size"] = [1, 0], 64_830_000_000, 1
    return r


def batch_of(records: np.ndarray) -> Batch:
    from mbostream_core.market import Market

    result = Market().apply(records)
    return Batch(1, records, result.events, time.time_ns())


@pytest.mark.parametrize(
    ("symbol", "tag"),
    [("CL X5", "CL X5"), ("A,B=C", "A,B=C"), ("back\\slash", "back\\slash"), ("new\nline", "new\nline"), ("", "7")],
)
def test_symbols_are_escaped_and_never_empty(symbol: str, tag: str) -> None:
    formatter = LineFormatter({7: symbol}.get, mbo=True, depth_levels=1)
    (text, n), = formatter.batch(batch_of(records_of(7)), 100)
    assert text.count(b"\n") == n == 4
    for point in parse(text):
        assert dict(point.tags)["instrument"] == tag


def test_a_failing_symbol_lookup_falls_back_to_the_id() -> None:
    def broken(_: int) -> str:
        raise LookupError("no metadata")

    (text, _), = LineFormatter(broken, mbo=False, depth_levels=1).batch(batch_of(records_of(42)), 100)
    assert all(dict(p.tags)["instrument"] == "42" for p in parse(text))


def test_snapshot_batches_are_not_stored() -> None:
    records = records_of(7)
    batch = Batch(1, records, batch_of(records).events, time.time_ns(), snapshot=True)
    assert list(LineFormatter(str, mbo=True, depth_levels=1).batch(batch, 100)) == []


def table(sequence: int, ts_event: int, bids: list[tuple[int, int, int]], asks: list[tuple[int, int, int]]) -> _engine.DepthTable:
    """A depth sample of book (7, 1), as ``Market.depth_table`` would give it; levels ``(price, size, count)``."""
    row = (7, 1, sequence, ts_event, ts_event + 5, sequence, len(bids), len(asks), bids, asks)
    return _engine.DepthTable([row])


def test_depth_points_carry_top_levels_and_skip_unchanged_books() -> None:
    formatter = LineFormatter({7: "X"}.get, mbo=False, depth_levels=2)
    bids = [(100, 5, 1), (99, 7, 2), (98, 1, 1)]
    first = table(1, T0, bids, [(101, 3, 1)])
    text, n = formatter.depth(first)
    (point,) = parse(text)
    assert n == 1 and point.measurement == "depth" and point.time == T0
    assert point.tags == book_tags("X", 7, 1)
    assert point.fields == {
        "bid_px_00": 100, "bid_sz_00": 5, "bid_ct_00": 1, "bid_px_01": 99, "bid_sz_01": 7, "bid_ct_01": 2,
        "ask_px_00": 101, "ask_sz_00": 3, "ask_ct_00": 1,
        "bid_levels": 3, "ask_levels": 1, "sequence": 1, "ts_event": T0, "ts_recv": T0 + 5,
    }
    assert formatter.depth(first) == (b"", 0)
    changed_same_time = table(2, T0, bids[:1], [])
    (point,) = parse(formatter.depth(changed_same_time)[0])
    assert point.time == T0 + 1 and point.fields["ts_event"] == T0
