"""Book benchmark room: ``mbostream bench book`` — decode + apply + BBO at every F_LAST, on one core.

Two passes over the same file:

* **throughput**: chunks decoded from the file and applied; the engine computes every book's BBO
  at every F_LAST (one event row each, handed back to Python as a numpy table), and this loop reads
  those rows. Records/s over the wall time of the whole pass, decoding included.
* **latency**: the same file applied one F_LAST event per call, each call timed from Python with
  ``perf_counter_ns`` (so the figures include the Python→native call, which the server pays too).

Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbostream_core.dbn import DbnReader
from mbostream_core.market import Market
from mbostream_core.records import STATE_TOP_CHANGED
from mbostream_core.records import F_LAST
from mbostream_core.synth import ensure_sample



def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _throughput(path: str) -> dict[str, Any]:
    start = time.perf_counter()
    records = events = top_changes = 0
    rss_first = None
    with DbnReader(path) as reader:
        market = Market(reader.info.symbols)
        for chunk in reader.chunks():
            result = market.apply(chunk, complete_events=False)
            records += len(chunk)
            events += len(result.events)
            top_changes += int(np.count_nonzero(result.events["state"] & STATE_TOP_CHANGED))
            if rss_first is None:
                rss_first = _rss_mib()
    elapsed = time.perf_counter() - start
    return {
        "records": records,
        "events": events,
        "bbo_changes": top_changes,
        "seconds": round(elapsed, 3),
        "records_per_second": round(records / elapsed),
        "rss_after_first_chunk_mib": round(rss_first or 0.0, 1),
    }


def _latency(path: str) -> dict[str, Any]:
    samples: list[np.ndarray] = []
    with DbnReader(path) as reader:
        market = Market(reader.info.symbols)
        engine = market._engine
        clock = time.perf_counter_ns
        for chunk in reader.chunks():
            buf = chunk.view(np.uint8)
            ends = np.flatnonzero(chunk["flags"] & F_LAST) + 1
            times = np.empty(len(ends), dtype=np.int64)
            begin = 0
            for i, end in enumerate(ends.tolist()):
                t0 = clock()
                engine.apply(buf, start=begin, stop=end, complete_events=False)
                times[i] = clock() - t0
                begin = end
            if begin < len(chunk):
                engine.apply(buf, start=begin, complete_events=False)
            samples.append(times)
            market.drain_anomalies()
    all_ns = np.concatenate(samples) if samples else np.zeros(1, dtype=np.int64)
    p50, p99, p999 = np.percentile(all_ns, [50, 99, 99.9])
    return {
        "events": int(len(all_ns)),
        "p50_us": round(p50 / 1000, 2),
        "p99_us": round(p99 / 1000, 2),
        "p99_9_us": round(p999 / 1000, 2),
        "max_us": round(float(all_ns.max()) / 1000, 2),
    }


def bench_book(file: str | None, *, records: int, seed: int, latency: bool = True) -> dict[str, Any]:
    """Runs the book benchmark; returns figures and a one-paragraph ``summary``."""
    path = file or str(ensure_sample(records=records, instruments=4, seed=seed))
    out: dict[str, Any] = {"file": path, "bytes": Path(path).stat().st_size, "pid": os.getpid()}
    out["throughput"] = _throughput(path)
    # Taken before the latency pass, which keeps every per-event sample in memory.
    out["peak_rss_mib"] = round(_rss_mib(), 1)
    if latency:
        out["apply_latency_per_event"] = _latency(path)
    t = out["throughput"]
    lines = [
        f"file: {path}",
        f"throughput: {t['records']:,} records, {t['events']:,} F_LAST events (BBO read at each) in "
        f"{t['seconds']} s = {t['records_per_second']:,} records/s (decode + apply + BBO, one core)",
    ]
    if latency:
        lat = out["apply_latency_per_event"]
        lines.append(
            f"apply latency per event: p50 {lat['p50_us']} us, p99 {lat['p99_us']} us, "
            f"p99.9 {lat['p99_9_us']} us, max {lat['max_us']} us ({lat['events']:,} events)"
        )
    lines.append(
        f"memory: peak RSS {out['peak_rss_mib']} MiB (after the first chunk: {t['rss_after_first_chunk_mib']} MiB)"
    )
    out["summary"] = "\n".join(lines)
    return out
