"""Storage server benchmark room: ``mbostream storage bench server``, the replay rate with storage on vs off.

Starts ``mbostream serve --max --loop`` (the e2e bench's :class:`~mbostream.tools.bench_server.BenchServer`,
which gives each server a private spool) twice on the same data, once with ``--no-store`` and once
with the storage sink on (derived measurements: trades, bbo, depth; spool only unless ``INFLUX_*``
is set), and reads the replay position over the same window. The ratio on/off is the figure the
storage requirement is about: the sink must not slow the replay.
"""

from __future__ import annotations

import time
from typing import Any

from mbostream.tools.bench_server import BenchServer, Window


def measure(file: str | None, *, store: bool, warmup: float, seconds: float) -> int:
    """Replay rate (records/s) of one server run at ``--max``."""
    with BenchServer(("--max",), files=(file,) if file else (), server_args=() if store else ("--no-store",)) as server:
        time.sleep(warmup)
        start = server.read()
        time.sleep(seconds)
        end = server.read()
    return Window(start, end).replayed_records_per_second


def run(file: str | None, *, rounds: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Alternates off/on runs; reports the median of each and the ratio."""
    off, on = [], []
    for _ in range(rounds):
        off.append(measure(file, store=False, warmup=warmup, seconds=seconds))
        on.append(measure(file, store=True, warmup=warmup, seconds=seconds))
    off.sort()
    on.sort()
    median_off, median_on = off[len(off) // 2], on[len(on) // 2]
    return {
        "benchmark": "server replay rate, storage on vs off (serve --max)",
        "file": file or "generated sample",
        "off_records_per_s": off,
        "on_records_per_s": on,
        "ratio": round(median_on / median_off, 3),
    }
