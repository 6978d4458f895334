"""Benchmark room: ``mbostream-client bench-decode`` — the ways to turn a batch into numpy, timed.

Batches are made by the server's own encoder (the engine's ``encode_event_batch``) from generated
records, so the bytes are exactly what ``StreamEvents`` sends, and no server is needed. Timed per
batch, best of ``repeat`` passes: parsing the protobuf, converting the nine numeric columns with
``np.asarray`` (upb containers implement ``__array__``), with ``np.fromiter`` and with
``np.array(list(...))``, and the client's full :func:`decode_events`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
from mbostream_core.dbn import DbnReader
from mbostream_core import _engine
from mbostream_core.synth import generate_file
from mbostream_core.v1 import market_data_pb2

from mbostream_client._decode import decode_events

_NUMERIC: Final = (
    ("replay_sequence", np.uint64),
    ("ts_event", np.uint64),
    ("ts_recv", np.uint64),
    ("order_id", np.uint64),
    ("price", np.int64),
    ("size", np.uint32),
    ("sequence", np.uint32),
    ("instrument_id", np.uint32),
    ("publisher_id", np.uint32),
)


def _payloads(records: int, batch_records: int) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mbo.dbn"
        generate_file(path, records=records, instruments=4, seed=1)
        with DbnReader(path) as reader:
            data = reader.read_all()
    ts_out = time.time_ns()
    payloads = []
    for start in range(0, len(data), batch_records):
        part = np.ascontiguousarray(data[start : start + batch_records])
        seqs = np.arange(start + 1, start + 1 + len(part), dtype=np.uint64)
        payloads.append(
            _engine.encode_event_batch(
                part.view(np.uint8), seqs.view(np.uint8), batch_sequence=int(seqs[-1]), snapshot=False, ts_out=ts_out
            )
        )
    return payloads


def _time(fn: Callable[[Any], object], items: list[Any], repeat: int) -> float:
    """Best seconds per item over ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best


def bench_decode(records: int = 200_000, batch_records: int = 4096, repeat: int = 5) -> dict[str, Any]:
    """Times each decoding step; returns µs per batch and records per second for each."""
    payloads = _payloads(records, batch_records)
    messages = [market_data_pb2.StreamEventsResponse.FromString(p) for p in payloads]
    per_batch = sum(len(m.replay_sequence) for m in messages) / len(messages)

    def asarray(m: market_data_pb2.StreamEventsResponse) -> object:
        return [np.asarray(getattr(m, name), dtype=dtype) for name, dtype in _NUMERIC]

    def fromiter(m: market_data_pb2.StreamEventsResponse) -> object:
        n = len(m.replay_sequence)
        return [np.fromiter(getattr(m, name), dtype=dtype, count=n) for name, dtype in _NUMERIC]

    def via_list(m: market_data_pb2.StreamEventsResponse) -> object:
        return [np.array(list(getattr(m, name)), dtype=dtype) for name, dtype in _NUMERIC]

    steps = {
        "parse (FromString)": (market_data_pb2.StreamEventsResponse.FromString, payloads),
        "9 columns: np.asarray": (asarray, messages),
        "9 columns: np.fromiter": (fromiter, messages),
        "9 columns: np.array(list)": (via_list, messages),
        "decode_events (parsed → MBO array)": (decode_events, messages),
        "parse + decode_events": (
            lambda p: decode_events(market_data_pb2.StreamEventsResponse.FromString(p)),
            payloads,
        ),
    }
    results = {}
    for name, (fn, items) in steps.items():
        seconds = _time(fn, items, repeat)
        results[name] = {"us_per_batch": round(seconds * 1e6, 1), "records_per_second": round(per_batch / seconds)}
    return {"batches": len(payloads), "records_per_batch": round(per_batch), "steps": results}


def format_decode(result: dict[str, Any]) -> str:
    """A readable table of :func:`bench_decode`."""
    lines = [f"{result['batches']} batches of ~{result['records_per_batch']} records (best of passes)"]
    for name, r in result["steps"].items():
        lines.append(f"  {name:<36} {r['us_per_batch']:>9.1f} µs/batch {r['records_per_second']:>14,} records/s")
    return "\n".join(lines)
