"""``mbostream storage bench server``: the server's replay rate with storage on versus off.

Starts ``mbostream serve --max --loop`` twice on the same file, once with ``--no-store`` and once
with the storage sink on (derived measurements: trades, bbo, depth; spool only unless ``INFLUX_*``
is set), and reads ``mbostream_records_ingested_total`` from each server's metrics endpoint over
the same window. The ratio on/off is the figure the storage requirement is about: the sink must
not slow the replay.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

_INGESTED = re.compile(r"^mbostream_records_ingested_total ([0-9.e+]+)$", re.M)


def _ingested(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    match = _INGESTED.search(text)
    return float(match.group(1)) if match else 0.0


def measure(file: str | None, *, store: bool, warmup: float, seconds: float) -> dict[str, Any]:
    """Replay rate (records/s) of one server run at ``--max``."""
    with tempfile.TemporaryDirectory(prefix="mbostream-bench-spool-") as spool:
        args = [sys.executable, "-m", "mbostream.cli", "--log-level", "warning", "serve", "--max", "--loop",
                "--port", "0", "--metrics-port", "0", *( [] if store else ["--no-store"]), *([file] if file else [])]  # fmt: skip
        env = {**os.environ, "MBOSTREAM_SPOOL_DIR": spool}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            port = int(ready["metrics_port"])
            time.sleep(warmup)
            t0, n0 = time.monotonic(), _ingested(port)
            time.sleep(seconds)
            t1, n1 = time.monotonic(), _ingested(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        spooled = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(spool) for f in fs)
    return {"store": store, "records_per_second": round((n1 - n0) / (t1 - t0)), "spool_bytes": spooled}


def run(file: str | None, *, rounds: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Alternates off/on runs; reports the median of each and the ratio."""
    off, on = [], []
    for _ in range(rounds):
        off.append(measure(file, store=False, warmup=warmup, seconds=seconds)["records_per_second"])
        on.append(measure(file, store=True, warmup=warmup, seconds=seconds)["records_per_second"])
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
