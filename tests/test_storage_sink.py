"""The storage sink without a database, or with one that never answers: the feed never waits."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from influx.points import parse
from influx.replay import Replay, async_test
from mbostream_core.dbn import FileInfo
from mbostream_core import _engine
from mbostream_core.records import STATE_TOP_CHANGED
from mbostream.storage import SpoolLockedError, StorageSettings, StorageSink
from mbostream.storage.metrics import COUNTERS

pytest_plugins = ["influx.fixtures"]  # the real InfluxDB stack and the CLX5 sample

START_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


def spooled_points(spool_dir: Path) -> Counter[str]:
    """Points per measurement in the spool's segments (concatenated gzip blocks)."""
    return Counter(p.measurement for segment in sorted(spool_dir.glob("segment-*.lp.gz")) for p in parse(gzip.decompress(segment.read_bytes())))


@async_test
async def test_without_a_database_everything_goes_to_the_spool(clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    spool_dir = tmp_path / "spool"
    sink = StorageSink(StorageSettings(spool_dir=spool_dir, store_mbo=True), depth_source=replay.depth_source, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    replay.run(sink.offer, 2048)
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    events = replay.all_events
    assert spooled_points(spool_dir) == {
        "mbo": len(records),
        "trades": int((records["action"] == b"T").sum()),
        "bbo": int(((events["state"] & STATE_TOP_CHANGED) != 0).sum()),
        "depth": len(replay.sampled),
    }
    snapshot = sink.metrics.snapshot()
    assert snapshot["points_spooled_total"] == snapshot["points_formatted_total"] == sum(spooled_points(spool_dir).values())
    assert snapshot["points_written_total"] == 0


@async_test
async def test_a_full_spool_drops_visibly_instead_of_filling_the_disk(
    clx5: tuple[FileInfo, np.ndarray], tmp_path: Path
) -> None:
    info, records = clx5
    replay = Replay(info, records)
    spool_dir = tmp_path / "spool"
    cap = 1 << 20  # the file's mbo + derived points are ~10 MiB of line protocol
    settings = StorageSettings(spool_dir=spool_dir, store_mbo=True, spool_max_bytes=cap, batch_points=2000)
    sink = StorageSink(settings, depth_source=replay.depth_source, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    replay.run(sink.offer, 2048)
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    on_disk = sum(f.stat().st_size for f in spool_dir.glob("segment-*.lp.gz"))
    assert 0 < on_disk <= cap
    snapshot = sink.metrics.snapshot()
    assert snapshot["points_dropped_spool_full_total"] > 0
    assert snapshot["points_spooled_total"] + snapshot["points_dropped_spool_full_total"] == snapshot["points_formatted_total"]
    assert sum(spooled_points(spool_dir).values()) == snapshot["points_spooled_total"]


@async_test
async def test_offer_never_raises(clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records[:5000])

    def broken_depth() -> _engine.DepthTable:
        raise RuntimeError("book views unavailable")

    sink = StorageSink(StorageSettings(spool_dir=tmp_path / "spool"), depth_source=broken_depth, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    replay.run(sink.offer, 500)
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert spooled_points(tmp_path / "spool")["trades"] == int((replay.records["action"] == b"T").sum())
    replay.run(sink.offer, 500)  # after stop: counted and logged, not raised
    assert sink.metrics.get("batches_dropped_total") == 10


def no_depth() -> _engine.DepthTable:
    return _engine.DepthTable([])


@async_test
async def test_one_sink_per_spool(tmp_path: Path) -> None:
    settings = StorageSettings(spool_dir=tmp_path / "spool")
    first = StorageSink(settings, depth_source=no_depth, symbols=str)
    await asyncio.wait_for(first.start(), START_TIMEOUT)
    try:
        with pytest.raises(SpoolLockedError):
            await asyncio.wait_for(StorageSink(settings, depth_source=no_depth, symbols=str).start(), START_TIMEOUT)
    finally:
        await asyncio.wait_for(first.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@async_test
async def test_a_database_that_never_answers_does_not_hold_up_the_feed(
    black_hole: str, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path
) -> None:
    info, records = clx5
    replay = Replay(info, records)
    settings = StorageSettings(
        url=black_hole, org="desk", bucket="feed", token="t", spool_dir=tmp_path / "spool", store_mbo=True,
        batch_points=2000, flush_interval=0.05, write_timeout=2.0, max_retries=0,
    )
    sink = StorageSink(settings, depth_source=replay.depth_source, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    for chunk in replay.chunks(1024):
        replay.step(sink.offer, chunk)
        await asyncio.sleep(0)
    assert sink.metrics.get("points_written_total") == 0, "the whole feed was offered while no write had returned"
    await asyncio.wait_for(sink.stop(timeout=0.5), STOP_TIMEOUT)
    snapshot = sink.metrics.snapshot()
    assert snapshot["points_written_total"] == 0
    assert snapshot["points_spooled_total"] == snapshot["points_formatted_total"] == sum(spooled_points(tmp_path / "spool").values())
    assert spooled_points(tmp_path / "spool")["mbo"] == len(records)


@async_test
async def test_metrics_cover_the_write_path(tmp_path: Path) -> None:
    sink = StorageSink(StorageSettings(spool_dir=tmp_path / "spool"), depth_source=no_depth, symbols=str)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    snapshot = sink.metrics.snapshot()
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    for name in (*COUNTERS, "write_latency_seconds_count", "write_latency_seconds_sum", "spool_bytes", "spool_oldest_age_seconds"):
        assert name in snapshot
    assert {"points_written_total", "batches_written_total", "write_retries_total", "write_errors_total"} <= set(snapshot)


@async_test
async def test_a_sink_reports_behind_while_its_backlog_exceeds_the_limit(clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    settings = StorageSettings(spool_dir=tmp_path / "spool", store_mbo=True, max_backlog_bytes=1 << 20)
    sink = StorageSink(settings, depth_source=replay.depth_source, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), START_TIMEOUT)
    seen = []
    for chunk in replay.chunks(4096):  # offered far faster than one thread formats them
        replay.step(sink.offer, chunk)
        seen.append(sink.behind())
    assert any(seen), "offering the whole file at once never put the sink behind a 1 MiB backlog"
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert not sink.behind()
    assert spooled_points(tmp_path / "spool")["mbo"] == len(records), "being behind lost points"
