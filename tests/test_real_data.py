"""Real Databento files from ../shared/data: documented facts, zero anomalies, snapshot round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from mbostream.tools.audit import audit_file
from mbostream_core.dbn import read_records
from mbostream.loading import load_market
from mbostream_core.market import BookKey, Market

CLX5 = "CLX5_mbo.dbn"
ESH4_SNAPSHOT = "glbx-mdp3-esh4-20231224.mbo.dbn.zst"
ESH4_LIVE = "glbx-mdp3-esh4-20231225.mbo.dbn.zst"
ESM4 = "glbx-mdp3-esm4-20240508T0000.mbo.dbn.zst"
ALL_MBO = [CLX5, ESH4_SNAPSHOT, ESH4_LIVE, ESM4]


def l3(market: Market, key: BookKey) -> tuple:
    return market._engine.depth_with_orders(key.instrument_id, key.publisher_id, 0)


def test_clx5_final_book_matches_the_documented_facts() -> None:
    info, market = load_market(shared_file(CLX5))
    assert info.symbols == {432669: "CLX5"}
    key = market.resolve("CLX5")
    assert key == BookKey(432669, 1)
    view = market.view(key)
    assert view.order_count == 147
    assert (view.bid_levels, view.ask_levels) == (61, 52)
    assert view.anomalies["cancel_unknown_order"] == 1224
    assert view.anomalies["modify_unknown_order"] == 216
    # The README's "30 fills reference unknown orders": 29 name a side, 1 is a side-N print.
    assert view.anomalies["fill_unknown_order"] + view.unattributed_fills == 30
    assert set(view.anomalies) == {"cancel_unknown_order", "modify_unknown_order", "fill_unknown_order"}
    assert view.record_count == 38212
    # The pre-open book legitimately crosses from 21:47:19 UTC on; nothing is deleted to uncross it.
    assert view.crossed
    assert 1758750439_000000000 <= view.crossed_since < 1758750440_000000000
    assert view.best_bid is not None and view.best_ask is not None
    assert view.best_bid.price > view.best_ask.price


@pytest.mark.parametrize("name", [ESH4_SNAPSHOT, ESH4_LIVE, ESM4])
def test_es_files_replay_with_zero_anomalies(name: str) -> None:
    _, market = load_market(shared_file(name))
    (key,) = market.books()
    assert market.anomaly_counts(key) == {}
    assert market.check_integrity(key) == []


def test_esm4_starts_with_a_clear_then_a_snapshot() -> None:
    _, records = read_records(shared_file(ESM4))
    assert records["action"][0] == b"R"
    assert records["flags"][1] & 0x20  # F_SNAPSHOT


def test_esh4_snapshot_file_equals_replay_of_its_own_reemitted_snapshot() -> None:
    _, market = load_market(shared_file(ESH4_SNAPSHOT))
    (key,) = market.books()
    assert market.stats(key).order_count == 8725
    replica = Market()
    replica.apply(market.snapshot(key, ts_recv=0))
    assert l3(replica, key) == l3(market, key)


@pytest.mark.parametrize("name", ALL_MBO)
def test_snapshot_round_trip_at_end_and_midway(name: str) -> None:
    info, records = read_records(shared_file(name))
    market = Market(info.symbols)
    half = market.apply(records, 0, len(records) // 2, complete_events=True)
    for stop in (half.end, len(records)):
        if stop == len(records):
            market.apply(records, half.end)
        for key in market.books():
            replica = Market()
            replica.apply(market.snapshot(key, ts_recv=1))
            assert l3(replica, key) == l3(market, key)


def test_generated_file_snapshot_round_trip(generated_small) -> None:
    info, records = read_records(generated_small)
    market = Market(info.symbols)
    market.apply(records, 0, 40_000)
    assert len(market.books()) == 3
    for key in market.books():
        replica = Market()
        replica.apply(market.snapshot(key, ts_recv=1))
        assert l3(replica, key) == l3(market, key)
        assert market.stats(key).order_count > 0


@pytest.mark.parametrize("name", ALL_MBO)
def test_audit_strict_passes_on_real_files(name: str) -> None:
    report = audit_file(shared_file(name))
    assert report.sound, report.integrity_examples
    j = report.to_json()
    assert j["engine_integrity"]["violations"] == 0
    assert report.events > 0


def test_clx5_audit_measures_fill_priority_without_forcing_it() -> None:
    report = audit_file(shared_file(CLX5)).to_json()
    fp = report["fill_priority"]
    assert fp["level_fills"] > 1400
    # Real CME data does not conform 100%: a rate is reported, exceptions classified, examples shown.
    assert 0.85 < fp["queue_prefix_rate"] < 1.0
    assert fp["queue_prefix"] + sum(v for k, v in fp["exceptions"].items() if k != "levels_not_best_first") == fp[
        "level_fills"
    ]
    assert fp["exceptions"]["queue_position_unknown_from_modify_of_unknown_id"] > 0
    assert fp["examples"]
    assert report["trade_prints"]["trades"] == 1599
    (book,) = report["books"]
    assert book["crossed_now"] and book["crossed_intervals"] >= 1


def test_generated_data_conforms_fully_to_price_time_priority(generated_small) -> None:
    report = audit_file(generated_small).to_json()
    assert report["engine_integrity"]["violations"] == 0
    assert report["fill_priority"]["queue_prefix_rate"] == 1.0
    assert report["fill_priority"]["best_level_first_rate"] == 1.0
    assert all(not b["anomalies"] for b in report["books"])


def test_chunked_and_whole_replays_agree() -> None:
    info, records = read_records(shared_file(CLX5))
    whole = Market(info.symbols)
    whole.apply(records)
    chunked = Market(info.symbols)
    for start in range(0, len(records), 1000):
        chunked.apply(records[start : start + 1000], complete_events=False)
    key = whole.resolve("CLX5")
    assert l3(whole, key) == l3(chunked, key)
    assert np.array_equal(
        np.frombuffer(whole.snapshot(key, 1).tobytes(), dtype=np.uint8),
        np.frombuffer(chunked.snapshot(key, 1).tobytes(), dtype=np.uint8),
    )
