"""``mbostream bench web`` runs end to end (a real server, the Envoy edge serving the built UI,
headless Chromium) and its report is consistent with itself. The frame times and CPU shares are
benchmark figures (docs/web.md quotes them), never checked here: only that they were measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from mbostream.tools.bench_web import format_summary

RATE = 20_000
SECONDS = 2.0


def test_bench_web_measures_a_window_of_frames_and_each_party_s_cpu() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "bench", "web", "--rate", str(RATE), "--seconds", f"{SECONDS:g}",
         "--warmup", "1", "--depth", "10", "--server-arg=--no-store", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)

    assert result["config"]["rate"] == RATE and result["config"]["depth"] == 10
    assert result["config"]["server_args"] == ["--no-store"]
    # The window is the one the page announced (its start and end), measured on the server's clock.
    assert SECONDS * 0.9 <= result["window_seconds"] <= SECONDS + 5
    page = result["page"]
    assert page["seconds"] == SECONDS
    # Frames were counted over the window, and the figures are of those frames.
    assert page["frames"] > 0 and page["fps"] == round(page["frames"] / SECONDS, 2)
    assert 0 < page["p50Ms"] <= page["p95Ms"] <= page["p99Ms"] <= page["maxMs"]
    assert 0 <= page["over50Ms"] <= page["frames"] and page["longTasks"] >= 0
    # The page's header, as shown, with the feed running through it.
    assert {"feed", "received", "p50", "p99"} <= set(result["header"])
    assert result["server"]["replayed_records_per_second"] > 0
    assert result["server"]["exit_code"] == 0
    for share in (result["server"]["cpu_percent"], result["envoy"]["cpu_percent"], result["browser"]["cpu_percent"]):
        assert math.isfinite(share) and share >= 0
    assert result["browser"]["cpu_percent"] > 0  # the browser rendered the page over the window
    assert result["cpus"] >= 1

    summary = format_summary(result)
    assert f"page: {page['fps']} fps; frame time p50 {page['p50Ms']} ms" in summary
    assert "server exit 0" in summary
