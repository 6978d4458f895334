"""The storage sink against a real InfluxDB engine (1.8, written to through its 2.x API).

Every test replays real data through the real sink as the replay loop does, then reads the engine
back with InfluxQL and compares values exactly: nanosecond times, int64 fields, tag strings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import documented_code
from influx.harness import INSTALL_SCRIPT, TEST_USER, InfluxdNotFoundError, InfluxStack, influx_stack
from influx.points import parse
from influx.replay import Replay, async_test, expected_times, wait_for
from mbostream_core.dbn import FileInfo
from mbostream_core.records import MBO_DTYPE
from mbostream_core.records import STATE_TOP_CHANGED
from mbostream_core.prices import UNDEF_PRICE
from mbostream.storage import StorageSettings, StorageSink
from mbostream.storage.lineproto import REWIND_WINDOW_NS
from mbostream.storage.spool import REJECTED_NAME

pytest_plugins = ["influx.fixtures"]  # the real InfluxDB stack and the CLX5 sample

STOP_TIMEOUT = 60.0
DAY_NS = 86_400 * 10**9


def settings_for(stack: InfluxStack | None, spool_dir: Path, **overrides: Any) -> StorageSettings:
    options: dict[str, Any] = {
        "spool_dir": spool_dir,
        "store_mbo": True,
        "depth_interval": 60.0,
        "batch_points": 5000,
        "flush_interval": 0.1,
        "write_timeout": 5.0,
        "max_retries": 1,
        "retry_initial": 0.05,
        "retry_max": 0.5,
    }
    if stack is not None:
        options.update(url=stack.url, org=stack.org, bucket=stack.bucket, token=stack.token)
    options.update(overrides)
    return StorageSettings(**options)


def sink_for(settings: StorageSettings, replay: Replay) -> StorageSink:
    return StorageSink(settings, depth_source=replay.depth_source, symbols=replay.symbols)


# -- what the engine must hold, computed from the records, the engine's events and the views ----
def book_tags(info: FileInfo, iid: int, pid: int) -> dict[str, str]:
    return {"instrument": info.symbols.get(iid, str(iid)), "instrument_id": str(iid), "publisher_id": str(pid)}


def expected_mbo(info: FileInfo, records: np.ndarray) -> dict[int, dict[str, Any]]:
    keys = list(zip(records["instrument_id"].tolist(), records["publisher_id"].tolist()))
    times = expected_times(records["ts_event"].tolist(), keys, REWIND_WINDOW_NS)
    out = {}
    for t, r in zip(times, records):
        out[t] = {
            **book_tags(info, int(r["instrument_id"]), int(r["publisher_id"])),
            "action": r["action"].decode(), "side": r["side"].decode(), "order_id": int(r["order_id"]),
            "price": int(r["price"]), "size": int(r["size"]), "flags": int(r["flags"]),
            "sequence": int(r["sequence"]), "ts_event": int(r["ts_event"]), "ts_recv": int(r["ts_recv"]),
        }
    return out


def expected_trades(info: FileInfo, records: np.ndarray) -> dict[int, dict[str, Any]]:
    trades = records[records["action"] == b"T"]
    keys = list(zip(trades["instrument_id"].tolist(), trades["publisher_id"].tolist()))
    times = expected_times(trades["ts_event"].tolist(), keys, REWIND_WINDOW_NS)
    return {
        t: {
            **book_tags(info, int(r["instrument_id"]), int(r["publisher_id"])), "side": r["side"].decode(),
            "price": int(r["price"]), "size": int(r["size"]), "order_id": int(r["order_id"]),
            "sequence": int(r["sequence"]), "ts_event": int(r["ts_event"]), "ts_recv": int(r["ts_recv"]),
        }
        for t, r in zip(times, trades)
    }


def expected_bbo(info: FileInfo, events: np.ndarray) -> dict[int, dict[str, Any]]:
    changed = events[(events["state"] & STATE_TOP_CHANGED) != 0]
    keys = list(zip(changed["instrument_id"].tolist(), changed["publisher_id"].tolist()))
    times = expected_times(changed["ts_event"].tolist(), keys, REWIND_WINDOW_NS)
    out = {}
    for t, e in zip(times, changed):
        bid, ask = int(e["bid_price"]), int(e["ask_price"])
        row: dict[str, Any] = {
            **book_tags(info, int(e["instrument_id"]), int(e["publisher_id"])),
            "bid_size": int(e["bid_size"]), "bid_count": int(e["bid_count"]),
            "ask_size": int(e["ask_size"]), "ask_count": int(e["ask_count"]),
            "crossed": bool(e["state"] & 1), "locked": bool(e["state"] & 2),
            "sequence": int(e["sequence"]), "ts_event": int(e["ts_event"]), "ts_recv": int(e["ts_recv"]),
        }
        if bid != UNDEF_PRICE:
            row["bid_price"] = bid
        if ask != UNDEF_PRICE:
            row["ask_price"] = ask
        if bid != UNDEF_PRICE and ask != UNDEF_PRICE:
            row["spread"], row["mid"] = ask - bid, (bid + ask) // 2
        out[t] = row
    return out


def expected_depth(info: FileInfo, replay: Replay, levels: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    last: dict[tuple[int, int], tuple[int, int, int]] = {}
    for rows in replay.sampled:
        for iid, pid, sequence, ts_event, ts_recv, record_count, bid_levels, ask_levels, bids, asks in rows:
            state = (sequence, ts_event, record_count)
            if last.get((iid, pid)) == state:
                continue
            last[(iid, pid)] = state
            row: dict[str, Any] = {
                **book_tags(info, iid, pid), "bid_levels": bid_levels, "ask_levels": ask_levels,
                "sequence": sequence, "ts_event": ts_event, "ts_recv": ts_recv,
            }
            for side, side_levels in (("bid", bids), ("ask", asks)):
                for i, (price, size, count) in enumerate(side_levels[:levels]):
                    row |= {f"{side}_px_{i:02d}": price, f"{side}_sz_{i:02d}": size, f"{side}_ct_{i:02d}": count}
            out[ts_event] = row
    return out


def stored(stack: InfluxStack, measurement: str) -> dict[int, dict[str, Any]]:
    rows = stack.rows(f'SELECT * FROM "{measurement}"')
    by_time = {}
    for row in rows:
        time = row.pop("time")
        assert time not in by_time, f"two {measurement} rows at {time} (one book)"
        by_time[time] = {k: v for k, v in row.items() if v is not None}
    return by_time


def assert_database_holds(stack: InfluxStack, info: FileInfo, replay: Replay, *, mbo: bool = True, depth_levels: int = 10) -> int:
    """Compares every measurement with what it must hold; returns the number of points."""
    records = replay.records
    expected = {
        "trades": expected_trades(info, records),
        "bbo": expected_bbo(info, replay.all_events),
        "depth": expected_depth(info, replay, depth_levels),
    }
    if mbo:
        expected["mbo"] = expected_mbo(info, records)
    for measurement, rows in expected.items():
        got = stored(stack, measurement)
        assert len(got) == len(rows), f"{measurement}: {len(got)} points stored, {len(rows)} expected"
        assert stack.count(measurement) == len(rows)
        for time, row in rows.items():
            assert got[time] == row, f"{measurement} at {time}"
    if not mbo:
        assert stack.count("mbo") == 0
    return sum(len(rows) for rows in expected.values())


async def store_all(stack: InfluxStack, info: FileInfo, records: np.ndarray, spool_dir: Path) -> tuple[Replay, StorageSink]:
    """Replays ``records`` through a sink writing to ``stack``, then stops it (everything stored)."""
    replay = Replay(info, records)
    sink = sink_for(settings_for(stack, spool_dir), replay)
    await asyncio.wait_for(sink.start(), 10)
    replay.run(sink.offer, 4096)
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    return replay, sink


# -- tests ------------------------------------------------------------------------------------------
@async_test
async def test_every_measurement_matches_what_the_engine_stored(
    influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path
) -> None:
    info, records = clx5
    replay, sink = await store_all(influx, info, records, tmp_path / "spool")
    total = assert_database_holds(influx, info, replay)
    metrics = sink.metrics.snapshot()
    # No collisions: every point written is a distinct point in the engine.
    assert metrics["points_formatted_total"] == metrics["points_written_total"] == total
    assert total == len(records) + int((records["action"] == b"T").sum()) + len(stored(influx, "bbo")) + len(stored(influx, "depth"))
    assert metrics["points_spooled_total"] == 0 and metrics["spool_bytes"] == 0
    mbo = stored(influx, "mbo")
    assert Counter(row["action"] for row in mbo.values()) == Counter(a.decode() for a in records["action"].tolist())


@async_test
async def test_derived_measurements_only_by_default(influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records[:10_000])
    sink = sink_for(settings_for(influx, tmp_path / "spool", store_mbo=False, depth_levels=3, depth_interval=1.0), replay)
    await asyncio.wait_for(sink.start(), 10)
    for chunk in replay.chunks(500):
        replay.step(sink.offer, chunk)
        await asyncio.sleep(0.01)  # paced like a replay, so every depth interval gets its sample
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert_database_holds(influx, info, replay, mbo=False, depth_levels=3)
    assert len(stored(influx, "depth")) == len(replay.sampled) >= 10


@async_test
async def test_database_down_at_start_then_up(influx_down: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    sink = sink_for(settings_for(influx_down, tmp_path / "spool"), replay)
    await asyncio.wait_for(sink.start(), 10)
    replay.run(sink.offer, 2048)
    def everything_spooled() -> bool:
        formatted = sink.metrics.get("points_formatted_total")
        return formatted > 0 and sink.metrics.get("points_spooled_total") == formatted

    await wait_for(everything_spooled, "everything spooled")
    assert sink.metrics.get("points_written_total") == 0
    influx_down.engine.start()
    await asyncio.sleep(0.3)  # writes now reach the engine but the database is missing (404): kept
    influx_down.create_bucket()
    await wait_for(lambda: sink.metrics.get("spool_drains_total") >= 1, "the spool to drain")
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert_database_holds(influx_down, info, replay)
    assert sink.metrics.snapshot()["spool_bytes"] == 0


@async_test
async def test_database_killed_mid_run_and_restarted(influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    sink = sink_for(settings_for(influx, tmp_path / "spool", batch_points=1000), replay)
    await asyncio.wait_for(sink.start(), 10)
    chunks = list(replay.chunks(1000))
    for i, chunk in enumerate(chunks):
        if i == len(chunks) // 3:
            influx.engine.kill()
        if i == 2 * len(chunks) // 3:
            await wait_for(lambda: sink.metrics.get("points_spooled_total") > 0, "spooling while the engine is dead")
            influx.engine.start()
        replay.step(sink.offer, chunk)
        await asyncio.sleep(0.02)
    await wait_for(lambda: sink.metrics.get("spool_drains_total") >= 1, "the spool to drain")
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert_database_holds(influx, info, replay)


@async_test
async def test_shutdown_with_a_full_queue_loses_nothing(influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    settings = settings_for(influx, tmp_path / "spool", batch_points=2000)
    first = sink_for(settings, replay)
    await asyncio.wait_for(first.start(), 10)
    replay.run(first.offer, 1024)
    await asyncio.wait_for(first.stop(timeout=0), STOP_TIMEOUT)  # no time for the database
    left = first.metrics.snapshot()
    assert left["points_spooled_total"] > 0
    assert left["points_formatted_total"] <= left["points_written_total"] + left["points_spooled_total"]
    assert list((tmp_path / "spool").glob("segment-*.lp.gz"))
    # The next run drains what this one left, in the background.
    second = sink_for(settings, Replay(info, records[:0]))
    await asyncio.wait_for(second.start(), 10)
    await wait_for(lambda: second.metrics.snapshot()["spool_bytes"] == 0, "the leftovers to drain")
    await asyncio.wait_for(second.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert_database_holds(influx, info, replay)


@async_test
async def test_a_wrong_token_is_refused_and_its_points_are_delivered_once_it_is_fixed(
    influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info, records = clx5
    replay = Replay(info, records[:5000])
    spool_dir = tmp_path / "spool"
    wrong = sink_for(settings_for(influx, spool_dir, token=f"{TEST_USER}:wrong-password"), replay)
    await asyncio.wait_for(wrong.start(), 10)
    with caplog.at_level(logging.ERROR, logger="mbostream.storage"):
        replay.run(wrong.offer, 1000)
        await wait_for(lambda: wrong.metrics.get("write_retries_total") > 0, "the refusal")
        await asyncio.wait_for(wrong.stop(timeout=0), STOP_TIMEOUT)
    assert wrong.metrics.get("points_written_total") == 0 and influx.count("trades") == 0
    assert any("HTTP 401: authorization failed" in r.getMessage() for r in caplog.records), caplog.text
    fixed = sink_for(settings_for(influx, spool_dir), Replay(info, records[:0]))
    await asyncio.wait_for(fixed.start(), 10)
    await wait_for(lambda: fixed.metrics.snapshot()["spool_bytes"] == 0, "the spool to drain")
    await asyncio.wait_for(fixed.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert_database_holds(influx, info, replay)


def test_a_missing_influxd_is_an_error_naming_the_install_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An influxd on PATH (Debian's 1.6) must not be taken for the 1.8 the tests need.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "influxd").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "influxd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MBOSTREAM_INFLUXD", raising=False)
    with pytest.raises(InfluxdNotFoundError, match=INSTALL_SCRIPT), influx_stack(tmp_path / "influx"):
        pass
    monkeypatch.setenv("MBOSTREAM_INFLUXD", str(tmp_path / "nowhere" / "influxd"))
    with pytest.raises(InfluxdNotFoundError, match="MBOSTREAM_INFLUXD=.*" + INSTALL_SCRIPT), influx_stack(tmp_path / "influx"):
        pass


def book_records(rows: list[tuple[str, str, int, int, int]]) -> np.ndarray:
    """Records ``(action, side, order_id, price, ts_event)`` of one book, each an event (F_LAST)."""
    r = np.zeros(len(rows), dtype=MBO_DTYPE)
    r["length"], r["rtype"], r["publisher_id"], r["instrument_id"], r["flags"], r["size"] = 14, 0xA0, 1, 432669, 0x80, 1
    for i, (action, side, order_id, price, ts) in enumerate(rows):
        r[i]["action"], r[i]["side"], r[i]["order_id"], r[i]["price"] = action.encode(), side.encode(), order_id, price
        r[i]["ts_event"], r[i]["ts_recv"], r[i]["sequence"] = ts, ts + 1000, i + 1
    return r


@async_test
async def test_a_refused_point_is_logged_set_aside_and_does_not_stall(
    influx: InfluxStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t0 = 1_758_742_200_000_000_000
    later = t0 + 30 * DAY_NS  # another shard, where "price" was first written as a string
    status, body = influx.engine.write_v1(influx.bucket, b'trades,instrument=legacy price="n/a" %d\n' % (later - 10**9))
    assert status == 204, body
    records = book_records(
        [("A", "B", 1, 64_820_000_000, t0), ("T", "A", 0, 64_820_000_000, t0 + 10), ("T", "A", 0, 64_820_000_000, later)]
        + [("T", "B", 0, 64_830_000_000 + i, t0 + 100 + i) for i in range(50)]
    )
    info = FileInfo("hand-built", 3, "TEST", "mbo", t0, None, False, False, {432669: "CLX5"})
    replay = Replay(info, records)
    sink = sink_for(settings_for(influx, tmp_path / "spool", store_mbo=False, depth_interval=0), replay)
    await asyncio.wait_for(sink.start(), 10)
    with caplog.at_level(logging.ERROR, logger="mbostream.storage"):
        replay.step(sink.offer, records[:3])
        await wait_for(lambda: sink.metrics.get("points_rejected_total") == 1, "the refusal")
        replay.step(sink.offer, records[3:])
        await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    trades = influx.rows('SELECT * FROM "trades" WHERE "instrument" = \'CLX5\'')
    assert len(trades) == 51 and later not in {row["time"] for row in trades}
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "field type conflict" in record.getMessage()
    assert f" {later}" in record.getMessage() and "trades,instrument=CLX5" in record.getMessage()
    (point,) = parse((tmp_path / "spool" / REJECTED_NAME).read_bytes())
    assert point.measurement == "trades" and point.time == later


@async_test
async def test_spool_only_then_drain_command(influx: InfluxStack, clx5: tuple[FileInfo, np.ndarray], tmp_path: Path) -> None:
    info, records = clx5
    replay = Replay(info, records)
    spool_dir = tmp_path / "spool"
    sink = sink_for(settings_for(None, spool_dir), replay)
    await asyncio.wait_for(sink.start(), 10)
    replay.run(sink.offer, 4096)
    await asyncio.wait_for(sink.stop(STOP_TIMEOUT), STOP_TIMEOUT + 10)
    assert sink.metrics.get("points_spooled_total") == sink.metrics.get("points_formatted_total") > 0
    assert influx.count("mbo") == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "MBOSTREAM_"))}
    env["INFLUX_TOKEN"] = influx.token
    command = [sys.executable, "-m", "mbostream.storage.cli", "drain", "--url", influx.url, "--org", influx.org,
               "--bucket", influx.bucket, "--spool-dir", str(spool_dir)]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "drained" in done.stdout
    assert_database_holds(influx, info, replay)
    assert not list(spool_dir.glob("segment-*.lp.gz"))


def documented_influxql() -> list[str]:
    """Every InfluxQL statement of the README's and the storage docs' examples (each starts with SELECT)."""
    statements: list[str] = []
    for block in documented_code("sql"):
        for line in block.splitlines():
            if line.startswith("SELECT"):
                statements.append(line)
            elif line.strip():
                statements[-1] += " " + line.strip()
    return statements


def test_the_documented_influxql_examples_run_on_the_stored_feed(influx_with_clx5: InfluxStack) -> None:
    statements = documented_influxql()
    assert len(statements) >= 6, "the README or the storage docs lost their InfluxQL examples"
    for statement in statements:
        rows = influx_with_clx5.rows(statement)
        assert rows, f"no rows from the documented query: {statement}"
