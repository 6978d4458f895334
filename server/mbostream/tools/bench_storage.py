"""Storage benchmark room: the storage hot paths, measured (commands, not timed tests).

``format``
    Line protocol formatting of raw ``mbo`` points, native (as the sink does it), next to a
    per-point Python f-string baseline for scale.
``compress``
    Gzip blocks (libdeflate, as the native pipeline makes them) of those lines, at levels 0, 1 and 6.
``e2e``
    End to end into a real InfluxDB with ``mbo`` on: a replay loop at full speed (``Market.apply``
    then ``StorageSink.offer`` per batch) until the database acknowledged every point. Needs
    ``INFLUX_URL``/``INFLUX_ORG``/``INFLUX_BUCKET``/``INFLUX_TOKEN``; with
    ``MBOSTREAM_INFLUXQL_URL`` (a 1.x engine) it also counts the points stored.
``replay``
    Replay throughput (records/s of the apply + offer loop) with the derived measurements on
    (trades, bbo, depth; spool only unless ``INFLUX_URL`` is set) against storage off.

The input is a DBN file tiled ``--copies`` times, each copy shifted in time by the file's span and
given its own instrument ids, so that every copy rebuilds real books and its points are distinct. Run with ``python -m mbostream.tools.bench_storage COMMAND``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from mbostream_core import _engine
from mbostream_core.dbn import FileInfo, read_records
from mbostream.feed import Batch
from mbostream_core.market import Market
from mbostream_core.records import concat_records
from mbostream.storage.lineproto import LineFormatter
from mbostream.storage.settings import StorageSettings
from mbostream.storage.sink import StorageSink
from mbostream.tools.bench_storage_cli import DEFAULT_FILE

POLL_SECONDS: Final = 0.01
INSTRUMENT_STRIDE: Final = 10_000_000
E2E_TIMEOUT_SECONDS: Final = 600.0


def tile(records: np.ndarray, copies: int) -> np.ndarray:
    """``copies`` back-to-back copies of ``records``, each shifted by the span of the file.

    Copy ``k`` trades its own instruments (``instrument_id + k * INSTRUMENT_STRIDE``), so every
    copy rebuilds fresh books (a second pass over the same books would leave them stuck) and the
    feed looks like one of ``copies`` times as many instruments.
    """
    span = np.uint64(int(records["ts_event"].max()) - int(records["ts_event"].min()) + 1)
    parts = []
    for k in range(copies):
        part = records.copy()
        part["ts_event"] += span * np.uint64(k)
        part["ts_recv"] += span * np.uint64(k)
        part["instrument_id"] += np.uint32(k * INSTRUMENT_STRIDE)
        parts.append(part)
    return concat_records(parts)


def load(path: str, copies: int) -> tuple[FileInfo, np.ndarray]:
    info, records = read_records(path)
    symbols = dict(info.symbols)
    for k in range(1, copies):
        symbols.update({iid + k * INSTRUMENT_STRIDE: f"{symbol}.{k}" for iid, symbol in info.symbols.items()})
    return dataclasses.replace(info, symbols=symbols), tile(records, copies)


# -- (a) formatting ---------------------------------------------------------------------------------
def python_mbo_lines(records: np.ndarray, symbol: str) -> bytes:
    """The per-point Python path the native formatter replaces (no clock, for scale only)."""
    out = []
    for r in records.tolist():
        out.append(
            f"mbo,action={r[10].decode()},instrument={symbol},instrument_id={r[3]},publisher_id={r[2]},"
            f"side={r[11].decode()} order_id={r[5]}i,price={r[6]}i,size={r[7]}i,flags={r[8]}i,"
            f"sequence={r[14]}i,ts_event={r[4]}i,ts_recv={r[12]}i {r[4]}\n"
        )
    return "".join(out).encode()


def records_batch(records: np.ndarray) -> Batch:
    """All of ``records`` as one batch without event rows (``mbo`` and ``trades`` points only)."""
    return Batch(1, records, np.empty(0, dtype=Market().apply(records[:0]).events.dtype), 0)


def mbo_formatter(info: FileInfo) -> LineFormatter:
    return LineFormatter(lambda iid: info.symbols.get(iid, str(iid)), mbo=True, depth_levels=10)


def bench_format(info: FileInfo, records: np.ndarray, batch_records: int, rounds: int) -> dict[str, Any]:
    batch = records_batch(records)
    rates, size, points = [], 0, 0
    for _ in range(rounds):
        formatter = mbo_formatter(info)
        started = time.perf_counter()
        points = size = 0
        for text, n in formatter.batch(batch, batch_records):
            points += n
            size += len(text)
        rates.append(points / (time.perf_counter() - started))
    sample = records[: min(len(records), 100_000)]
    started = time.perf_counter()
    python_mbo_lines(sample, "CLX5")
    python_rate = len(sample) / (time.perf_counter() - started)
    return {
        "benchmark": "format",
        "records": len(records),
        "points": points,  # one mbo point per record, plus one trades point per T record
        "native_points_per_s": max(rates),
        "bytes_per_point": size / points,
        "python_points_per_s": python_rate,
    }


def bench_compress(info: FileInfo, records: np.ndarray, batch_records: int, rounds: int) -> dict[str, Any]:
    """Block compression (the native pipeline's encoder) of formatted ``mbo`` + ``trades`` lines."""
    chunks = list(mbo_formatter(info).batch(records_batch(records), batch_records))
    raw = sum(len(text) for text, _ in chunks)
    out: dict[str, Any] = {"benchmark": "compress", "raw_bytes": raw, "block_points": batch_records}
    for level in (0, 1, 6):
        rates, size = [], 0
        for _ in range(rounds):
            started = time.perf_counter()
            size = sum(len(_engine.encode_lines_block(text, points, level)) for text, points in chunks)
            rates.append(raw / (time.perf_counter() - started))
        out[f"level_{level}_mb_per_s"] = max(rates) / 1e6
        out[f"level_{level}_ratio"] = raw / size
    return out


# -- the replay loop --------------------------------------------------------------------------------
def replay_loop(info: FileInfo, records: np.ndarray, batch_records: int, offer: Callable[[Batch], None] | None) -> tuple[float, Market]:
    """Applies ``records`` batch by batch as the replay does; returns the loop's seconds."""
    market = Market(info.symbols)
    seq = 1
    started = time.perf_counter()
    for start in range(0, len(records), batch_records):
        chunk = records[start : start + batch_records]
        result = market.apply(chunk, complete_events=False)
        if offer is not None:
            offer(Batch(seq, chunk, result.events, time.time_ns()))
        seq += len(chunk)
    return time.perf_counter() - started, market


def make_sink(settings: StorageSettings, market_ref: list[Market], info: FileInfo) -> StorageSink:
    def depth_source() -> Any:
        return market_ref[0].depth_table(settings.depth_levels)

    return StorageSink(settings, depth_source=depth_source, symbols=lambda iid: info.symbols.get(iid, str(iid)))


async def run_with_sink(info: FileInfo, records: np.ndarray, batch_records: int, settings: StorageSettings) -> dict[str, float]:
    holder = [Market(info.symbols)]
    sink = make_sink(settings, holder, info)
    await sink.start()
    seq = 1
    started = time.perf_counter()
    market = holder[0]
    for start in range(0, len(records), batch_records):
        chunk = records[start : start + batch_records]
        result = market.apply(chunk, complete_events=False)
        sink.offer(Batch(seq, chunk, result.events, time.time_ns()))
        seq += len(chunk)
    loop_seconds = time.perf_counter() - started
    await sink.stop(timeout=120)
    total_seconds = time.perf_counter() - started
    snapshot = sink.metrics.snapshot()
    return {"loop_seconds": loop_seconds, "total_seconds": total_seconds, "points": snapshot["points_formatted_total"]}


# -- (b) end to end ---------------------------------------------------------------------------------
def count_points(influxql_url: str, bucket: str, measurement: str, token: str | None) -> int:
    query = urllib.parse.urlencode({"db": bucket, "q": f'SELECT count("sequence") FROM "{measurement}"'})
    # InfluxDB 1.8 with authentication on reads the 2.x token (USER:PASSWORD) on InfluxQL too.
    headers = {"Authorization": f"Token {token}"} if token else {}
    request = urllib.request.Request(f"{influxql_url}/query?{query}", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        result = json.load(response)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def bench_e2e(info: FileInfo, records: np.ndarray, batch_records: int, spool_dir: Path) -> dict[str, Any]:
    base = StorageSettings.from_env()
    if not base.database_configured:
        raise SystemExit("e2e needs INFLUX_URL, INFLUX_ORG, INFLUX_BUCKET and INFLUX_TOKEN (see tests/influx/harness.py)")
    settings = StorageSettings(**{**vars(base), "spool_dir": spool_dir, "store_mbo": True})
    holder = [Market(info.symbols)]
    sink = make_sink(settings, holder, info)
    await sink.start()
    market = holder[0]
    seq = 1
    started = time.perf_counter()
    for start in range(0, len(records), batch_records):
        chunk = records[start : start + batch_records]
        result = market.apply(chunk, complete_events=False)
        sink.offer(Batch(seq, chunk, result.events, time.time_ns()))
        seq += len(chunk)
        await asyncio.sleep(0)
    loop_seconds = time.perf_counter() - started
    deadline = time.monotonic() + E2E_TIMEOUT_SECONDS
    while True:
        m = sink.metrics.snapshot()
        if m["points_written_total"] >= m["points_formatted_total"] and not m["format_queue_batches"] and m["spool_bytes"] == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the database")
        await asyncio.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    await sink.stop(timeout=60)
    m = sink.metrics.snapshot()
    out: dict[str, Any] = {
        "benchmark": "e2e",
        "records": len(records),
        "points_written": m["points_written_total"],
        "seconds": seconds,
        "points_written_per_s": m["points_written_total"] / seconds,
        "replay_loop_seconds": loop_seconds,
        "requests": m["batches_written_total"],
        "mean_write_latency_ms": 1000 * m["write_latency_seconds_sum"] / max(1, m["write_latency_seconds_count"]),
        "spooled_points": m["points_spooled_total"],
        "retries": m["write_retries_total"],
    }
    influxql = os.environ.get("MBOSTREAM_INFLUXQL_URL")
    if influxql and settings.bucket:
        stored = {name: count_points(influxql, settings.bucket, name, settings.token) for name in ("mbo", "trades", "bbo", "depth")}
        out["stored"] = stored
        out["stored_total"] = sum(stored.values())
        # Distinct points in the database per second (a re-sent point counts once).
        out["stored_points_per_s"] = out["stored_total"] / seconds
    return out


# -- (c) replay with storage on vs off --------------------------------------------------------------
def bench_replay(info: FileInfo, records: np.ndarray, batch_records: int, rounds: int, spool_root: Path) -> dict[str, Any]:
    base = StorageSettings.from_env()
    off, on_loop, on_total = [], [], []
    for i in range(rounds):
        seconds, _ = replay_loop(info, records, batch_records, None)
        off.append(len(records) / seconds)
        settings = StorageSettings(**{**vars(base), "spool_dir": spool_root / f"round-{i}", "store_mbo": False})
        result = asyncio.run(run_with_sink(info, records, batch_records, settings))
        on_loop.append(len(records) / result["loop_seconds"])
        on_total.append(len(records) / result["total_seconds"])
    return {
        "benchmark": "replay",
        "records": len(records),
        "batch_records": batch_records,
        "storage": "influxdb" if base.database_configured else "spool only",
        "off_records_per_s": statistics.median(off),
        "on_records_per_s": statistics.median(on_loop),
        "ratio": statistics.median(on_loop) / statistics.median(off),
        "on_including_final_flush_records_per_s": statistics.median(on_total),
        "ratio_including_final_flush": statistics.median(on_total) / statistics.median(off),
    }


# -- command line -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    logging.getLogger("mbostream_core.market").setLevel(logging.ERROR)
    if args.which == "server":
        from mbostream.tools import bench_storage_server

        result = bench_storage_server.run(args.file, rounds=args.rounds, warmup=3.0, seconds=10.0)
        print(json.dumps(result, indent=2))
        return 0
    defaults = {"format": (30, 10_000), "compress": (30, 10_000), "e2e": (30, 4096), "replay": (10, 1024)}[args.which]
    copies = args.copies or defaults[0]
    batch_records = args.batch_records or defaults[1]
    args.file = args.file or DEFAULT_FILE
    info, records = load(args.file, copies)
    with tempfile.TemporaryDirectory(prefix="mbostream-bench-") as tmp:
        if args.which == "format":
            result = bench_format(info, records, batch_records, args.rounds)
        elif args.which == "compress":
            result = bench_compress(info, records, batch_records, args.rounds)
        elif args.which == "e2e":
            result = asyncio.run(bench_e2e(info, records, batch_records, Path(tmp) / "spool"))
        else:
            result = bench_replay(info, records, batch_records, args.rounds, Path(tmp))
    result["file"] = args.file
    result["copies"] = copies
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>40}: {value:,.3f}" if isinstance(value, float) else f"{key:>40}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mbostream.tools.bench_storage {format,e2e,replay} [options]``."""
    from mbostream.tools.bench_storage_cli import register_storage_bench

    parser = argparse.ArgumentParser(prog="mbostream storage")
    register_storage_bench(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
