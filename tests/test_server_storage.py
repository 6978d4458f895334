"""The server's storage path end to end: with no database it spools; a drain later fills InfluxDB."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from conftest import shared_file
from server_harness import ServeProcess

pytest_plugins = ["influx.fixtures"]  # the real InfluxDB 1.8, written to through its 2.x API


def test_serve_spools_without_a_database_and_drain_delivers_exactly_once(tmp_path, influx) -> None:
    spool = tmp_path / "spool"
    server = ServeProcess(
        str(shared_file("CLX5_mbo.dbn")),
        "--max",
        "--metrics-port",
        "0",
        log_path=tmp_path / "serve.log",
        env={"MBOSTREAM_STORE": "true", "MBOSTREAM_SPOOL_DIR": str(spool), "MBOSTREAM_DEPTH_INTERVAL": "60"},
    ).start()
    try:
        deadline = time.monotonic() + 60
        metrics = ""
        while time.monotonic() < deadline:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
            if "mbostream_records_ingested_total 38212.0" in metrics:
                break
            time.sleep(0.2)
        assert "mbostream_records_ingested_total 38212.0" in metrics
        assert "mbostream_storage_points_formatted_total" in metrics
    finally:
        assert server.stop() == 0  # shutdown flushes the sink into the spool
    assert any(spool.iterdir()), "the spool is empty after shutdown"

    env = {**os.environ, "INFLUX_TOKEN": influx.token}
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "storage", "drain", "--url", influx.url, "--org", influx.org,
         "--bucket", influx.bucket, "--spool-dir", str(spool)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert influx.count("trades") == 1599  # every T record of the file, once
    bbo = influx.count("bbo")
    assert bbo > 1000
    # Draining again (nothing left) changes nothing: the same event always maps to the same point.
    again = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "storage", "drain", "--url", influx.url, "--org", influx.org,
         "--bucket", influx.bucket, "--spool-dir", str(spool)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert influx.count("trades") == 1599 and influx.count("bbo") == bbo


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def test_storage_that_cannot_keep_up_holds_a_max_replay_back_in_bounded_memory(tmp_path) -> None:
    """Raw mbo at --max outruns the formatting thread: the replay waits; storage memory stays bounded."""
    server = ServeProcess(
        str(shared_file("CLX5_mbo.dbn")),
        "--max",
        "--loop",
        "--metrics-port",
        "0",
        log_path=tmp_path / "serve.log",
        env={
            "MBOSTREAM_STORE": "true",
            "MBOSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
            "MBOSTREAM_STORE_MBO": "true",
            "MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES": "1M",
        },
    ).start()
    try:
        deadline = time.monotonic() + 60
        waited, backlog = 0.0, []
        while time.monotonic() < deadline and (waited == 0.0 or len(backlog) < 20):
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
            waited = _metric(metrics, "mbostream_replay_sink_wait_seconds_total")
            backlog.append(_metric(metrics, "mbostream_storage_format_queue_bytes"))
            time.sleep(0.05)
        assert waited > 0, "the replay never waited for storage"
        # The limit is checked before each replay step: it is exceeded by one step at most.
        assert max(backlog) <= 4 << 20, backlog
    finally:
        assert server.stop() == 0
    assert "storage is behind the replay; the replay waits for it" in (tmp_path / "serve.log").read_text()
