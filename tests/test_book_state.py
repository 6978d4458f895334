"""A book rebuilt from its snapshot records plus its saved state (``Market.book_state``) is the
book it copies: the same levels and queues and the same statistics and anomaly counts, then and
after both apply the same further records. This is how a gateway that cold-starts from the bus's
snapshots holds the replayer's books exactly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from mbostream.server.convert import book_snapshot
from mbostream_core.dbn import DbnReader
from mbostream_core.market import Market


def _records(path, count: int) -> tuple[dict[int, str], np.ndarray]:
    with DbnReader(path) as reader:
        chunks, total = [], 0
        for chunk in reader.chunks():
            chunks.append(chunk)
            total += len(chunk)
            if total >= count:
                break
        return reader.info.symbols, np.concatenate(chunks)[:count]


def _books(market: Market) -> dict:
    return {key: book_snapshot(market.view(key, orders=True), 0) for key in market.books()}


@pytest.mark.parametrize("name", ["CLX5_mbo.dbn", "glbx-mdp3-esh4-20231225.mbo.dbn.zst"])
def test_a_book_rebuilt_from_snapshot_and_state_is_the_book_it_copies(name: str) -> None:
    symbols, records = _records(SHARED_DATA / name, 300_000)
    half = len(records) // 2
    source = Market(symbols)
    end = source.apply(records, 0, half, complete_events=True).end
    assert source.consistent

    replica = Market(symbols)
    for key in source.books():
        replica.apply(source.snapshot(key, ts_recv=source.stats(key).ts_recv).copy(), complete_events=True)
        replica.restore_book_state(key, source.book_state(key))
    assert _books(replica) == _books(source)
    assert any(b.volume and b.trade_count for b in _books(source).values()), "the slice was expected to have trades"

    for market in (source, replica):
        market.apply(records, end, len(records), complete_events=True)
    assert _books(replica) == _books(source)
    for key in source.books():
        assert replica.stats(key).volume == source.stats(key).volume
        assert replica.anomaly_counts(key) == source.anomaly_counts(key)


def test_a_snapshot_without_its_state_differs_in_the_statistics() -> None:
    """What the state is for: the snapshot records alone do not carry volume and trades."""
    symbols, records = _records(SHARED_DATA / "CLX5_mbo.dbn", 100_000)
    source = Market(symbols)
    source.apply(records, complete_events=True)
    replica = Market(symbols)
    key = source.books()[0]
    replica.apply(source.snapshot(key, ts_recv=source.stats(key).ts_recv).copy(), complete_events=True)
    assert replica.stats(key).volume != source.stats(key).volume
    with pytest.raises(ValueError, match="bytes"):
        replica.restore_book_state(key, b"\x00" * 7)
