"""``mbostream bench cluster`` end to end, as a smoke test (not a speed test).

The real command runs in a subprocess on the real CLX5 file (../shared/data): each role alone on its
own nats-server, then ``mbostream run --gateways 2`` at ``--max`` and at a rate, a cold start and one
failover, with one-second windows. The test asserts the JSON document's shape and that its numbers
are consistent (records flowed and were acknowledged, the lone gateway applied the whole stream the
lone replayer left, every CPU figure is a percentage, the follower resumed); it asserts no speed
figure, which belongs to a quiet machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any, Final

import pytest

from server_harness import repo

from mbostream_core.records import MBO_DTYPE

TIMEOUT: Final = 600
DATA: Final = repo() / ".." / "shared" / "data" / "CLX5_mbo.dbn"


def _percent(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 100 * 64


@pytest.mark.timeout(TIMEOUT + 60)
def test_bench_cluster_reports_every_phase_consistently() -> None:
    command = [
        sys.executable, "-m", "mbostream.cli", "bench", "cluster", str(DATA), "--gateways", "2",
        "--seconds", "1", "--rate", "50000", "--failovers", "1", "--json",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    r = json.loads(proc.stdout)
    assert r["gateways"] == 2 and r["cpus"] >= 1
    alone = r["alone"]
    assert alone["replayer_acked_records_per_second"] > 0 and _percent(alone["replayer_cpu_percent"])
    # The lone gateway applied every record the lone replayer left on the stream (at least the
    # warm-up and the window), and its rate was taken between 10% and 90% of them.
    assert alone["gateway_records_applied"] >= alone["replayer_acked_records_per_second"] * 0.5
    assert alone["gateway_ingest_records_per_second"] > 0 and _percent(alone["gateway_cpu_percent"])
    m = r["max"]
    assert m["bus_acked_records_per_second"] > 0 and m["bus_messages_per_second"] > 0
    assert MBO_DTYPE.itemsize <= m["stream_bytes_per_record"] < 200  # the 56-byte records plus headers and framing
    assert len(m["gateway_ingest_records_per_second"]) == 2 and all(x > 0 for x in m["gateway_ingest_records_per_second"])
    assert set(m["cpu_percent"]) == {"replayer", "gateway-1", "gateway-2"} and all(map(_percent, m["cpu_percent"].values()))
    for lat in (r["bus_latency_ms"], alone["bus_latency_ms"]):
        assert lat["rate_records_per_second"] == 50_000 and lat["messages"] > 0
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]  # ms, rounded to 3 places
    assert r["cold_start_to_json_line_seconds"] > 0 and r["gateway_cold_start_to_serving_seconds"] > 0
    fo = r["failover_to_first_resumed_batch_seconds"]
    # Seconds rounded to 3 places: 0.0 when the next batch was already on its way (CI measured one).
    assert len(fo["each"]) == 1 and 0 <= fo["each"][0] < 60 and fo["median"] == fo["each"][0]
