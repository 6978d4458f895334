"""``mbostream bench soak``, two minutes: a real server at 200k records/s with 100 clients that
connect and leave (Go StreamBook groups replaced every 10 s, StreamEvents clients resuming with
start_after_sequence or replaced by new ones).

Asserted: what is not a speed target. No StreamEvents client ever saw a gap or a duplicate (within
a stream and across its resumes), every client got data, churn really happened, the server's RSS
stayed bounded, the server exited cleanly with no traceback in its log. The latency and CPU
figures are printed (benchmark output), never asserted.

The RSS bound: the peak of the last third may exceed the peak of the first third by at most
RSS_GROWTH_BOUND_MIB. By the end of the first third the server's bounded buffers are full: the
2,000,000-record replay buffer (``MBOSTREAM_REPLAY_BUFFER_RECORDS``; about 110 bytes a record,
~220 MiB, filled in 10 s at 200k/s; at 20k/s it fills in 100 s and RSS is flat after). What moves
after that is the backlog queued while the server runs late on two cores shared with other jobs:
measured +12 MiB without churn and +45 MiB with it, under heavy load. 128 MiB catches a leak of a
byte and a half per record streamed (~90M records in two minutes) or of ~370 KiB per client
connection (~350 connections). Two minutes, not the command's default 30 (nor the three this test ran
until 2026-12-06): CI's budget on a cold 2-core machine is 30 minutes; `mbostream bench soak` runs
the long one (docs/reliability.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mbostream.tools.bench_soak import churn_offsets
from server_harness import repo

MINUTES = 2
#: Server start (the generated sample, cached by the suite) and the Go load client's first build.
STARTUP_BUDGET = 1200
RSS_GROWTH_BOUND_MIB = 128


@pytest.mark.timeout(MINUTES * 60 + STARTUP_BUDGET + 60)
def test_soak_two_minutes_with_churn_loses_nothing_and_stays_bounded(tmp_path: Path) -> None:
    result_file, log = tmp_path / "soak.json", tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "mbostream.cli", "bench", "soak", "--minutes", str(MINUTES),
        "--result", str(result_file), "--server-log", str(log),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=repo(), timeout=MINUTES * 60 + STARTUP_BUDGET
    )
    print(proc.stdout)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    verdict_line = json.loads(proc.stdout.strip().splitlines()[-1])["soak"]
    result = json.loads(result_file.read_text())
    assert verdict_line["totals"] == result["totals"]
    totals, samples = result["totals"], result["samples"]
    cfg = result["config"]
    assert cfg["rate"] == 200_000 and cfg["clients"] == 100

    # Every StreamEvents client: data, and not one record missing or repeated across its resumes.
    events = result["events_clients"]
    assert len(events) > cfg["events_clients"], "no StreamEvents client was replaced by a new one"
    churns = len(churn_offsets(MINUTES * 60, cfg["churn_seconds"]))
    assert totals["events_resumes"] >= churns - 2, totals
    for client in events:
        assert client["records"] > 0, client
        assert client["gaps"] == 0 and client["records_missed"] == 0, client
        assert client["duplicates"] == 0, client
        assert client["out_of_range"] == 0 and not client["errors"], client
    assert result["lossless"] is True

    # Every StreamBook group (mbostream-load process): data, no stream error, none ended early.
    groups = result["book_groups"]
    assert sum(g["streams"] for g in groups) > cfg["clients"], "no StreamBook group was replaced"
    for group in groups:
        assert group["messages"] > 0, group
        assert not group["error"] and not group["errors"] and group["streams_ended_early"] == 0, group

    # RSS bounded (see the module docstring for the bound).
    third = MINUTES * 60 / 3
    first = max(s["rss_mib"] for s in samples if s["t"] <= third)
    last = max(s["rss_mib"] for s in samples if s["t"] >= 2 * third)
    print(f"soak RSS: first-third peak {first} MiB, last-third peak {last} MiB (bound +{RSS_GROWTH_BOUND_MIB})")
    assert last - first <= RSS_GROWTH_BOUND_MIB, samples

    # A clean server: exit 0, no traceback.
    assert result["server"]["exit_code"] == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]

    verdict = result["verdict"]
    print(
        f"soak figures (not asserted): book p99 first third {verdict['book_p99_ms_first_third']} ms, "
        f"last third {verdict['book_p99_ms_last_third']} ms; RSS slope over the second half "
        f"{verdict['rss_slope_mib_per_min_second_half']} MiB/min; replayed records/s per interval "
        f"{[s['replayed_records_per_second'] for s in samples]}"
    )


def test_no_client_churns_in_the_last_seconds_of_a_soak() -> None:
    """A StreamEvents client replaced at the soak's very end left with no record (CI: events2.5,
    records 0, the last churn of a 180 s soak falling at 180 s). Churns stop 3 s before the end."""
    assert churn_offsets(180, 10) == [float(10 * k) for k in range(1, 18)]
    assert churn_offsets(182.9, 10)[-1] == 170
    assert churn_offsets(183, 10)[-1] == 180
    assert churn_offsets(2, 10) == []
