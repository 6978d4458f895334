"""The native book payload (``Market.engine.book_payload``, what StreamBook sends) is the message
the Python protobuf path makes of the same book: every book of generated and real Databento data,
at many points of the feed, at several depths, with and without the L3 queues."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA
from mbo_records import Rec, px, records

from mbostream.server.convert import book_update_payload
from mbostream_core.dbn import DbnReader
from mbostream_core.market import Market
from mbostream_core.synth import generate_file
from mbostream_core.v1 import market_data_pb2 as md

#: Points of the feed where every book is compared.
POINTS = 12
#: Records read from each real file (enough for anomalies and trades to show up).
REAL_RECORDS = 400_000


def _compare_along(path, records: int) -> tuple[int, set[str]]:
    with DbnReader(path) as reader:
        market = Market(reader.info.symbols)
        chunks = []
        total = 0
        for chunk in reader.chunks():
            chunks.append(chunk)
            total += len(chunk)
            if total >= records:
                break
    import numpy as np

    data = np.concatenate(chunks)[:records]
    step = max(1, len(data) // POINTS)
    pos, compared, anomalies = 0, 0, set()
    while pos < len(data):
        result = market.apply(data, pos, min(len(data), pos + step), complete_events=True)
        if result.end == pos:
            break
        pos = result.end
        for key in market.books():
            anomalies |= set(market.anomaly_counts(key))
            for depth in (0, 1, 10):
                for orders in (False, True):
                    expected = book_update_payload(market, key, depth, orders, position=pos, ts_out=1_700_000_000_123_456_789)
                    single, multi = market.engine.book_payload(
                        key.instrument_id, key.publisher_id, depth=depth, orders=orders,
                        symbol=market.symbol(key.instrument_id), replay_sequence=pos, ts_out=1_700_000_000_123_456_789,
                    )  # fmt: skip
                    assert md.StreamBookResponse.FromString(single) == md.StreamBookResponse.FromString(expected[0]), (key, depth, orders)
                    assert md.StreamBookResponse.FromString(multi) == md.StreamBookResponse.FromString(expected[1]), (key, depth, orders)
                    compared += 1
    return compared, anomalies


def test_generated_books_encode_as_the_python_path_does(tmp_path) -> None:
    path = tmp_path / "g.mbo.dbn"
    generate_file(path, records=120_000, instruments=3, seed=11)
    compared, _ = _compare_along(path, 120_000)
    assert compared >= 3 * 6 * POINTS


@pytest.mark.parametrize("name", ["CLX5_mbo.dbn", "glbx-mdp3-esh4-20231225.mbo.dbn.zst"])
def test_real_books_encode_as_the_python_path_does(name: str) -> None:
    compared, _ = _compare_along(SHARED_DATA / name, REAL_RECORDS)
    assert compared >= 6 * POINTS


def test_a_book_with_anomalies_a_trade_and_a_negative_price_encodes_as_the_python_path_does() -> None:
    """What the files above may not show: the anomaly map, the last trade, a negative (spread)
    price, a one-sided book and an empty one."""
    market = Market({1: "SPREAD"})
    market.apply(
        records(
            [
                Rec("A", "B", order_id=1, price=px("-1.25"), size=5),
                Rec("A", "B", order_id=2, price=px("-1.25"), size=7),
                Rec("C", "B", order_id=99, price=px("-1.25"), size=1),  # unknown order: an anomaly
                Rec("T", "A", price=px("-1.25"), size=2),
                Rec("A", "A", order_id=3, price=px("2"), size=1, instrument_id=2),
                Rec("C", "A", order_id=3, price=px("2"), size=1, instrument_id=2),  # book 2: empty again
            ]
        ),
        complete_events=True,
    )
    keys = market.books()
    assert any(market.anomaly_counts(k) for k in keys)
    for key in keys:
        for depth, orders in ((0, True), (1, False)):
            expected = book_update_payload(market, key, depth, orders, position=6, ts_out=5)
            single, multi = market.engine.book_payload(
                key.instrument_id, key.publisher_id, depth=depth, orders=orders,
                symbol=market.symbol(key.instrument_id), replay_sequence=6, ts_out=5,
            )  # fmt: skip
            assert md.StreamBookResponse.FromString(single) == md.StreamBookResponse.FromString(expected[0])
            assert md.StreamBookResponse.FromString(multi) == md.StreamBookResponse.FromString(expected[1])
