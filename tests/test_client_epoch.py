"""A client never keeps another server run's books: the replica and ``mbostream-client events``
against a real server restarted on the same port, with another file or with the same one.

Before epochs, a replica whose resume point the restarted server had already passed resumed into
the new run without noticing and kept books that differed from the server's. Each scenario makes
the new server pass the replica's position before the replica reconnects, so the resume point is
valid by number and only the epoch tells the runs apart.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_client import (  # noqa: F401 (servers is a pytest fixture, used by name)
    TOKEN,
    Servers,
    assert_replica_matches_server,
    paused_position,
    run,
    running,
    servers,
    wait_until,
    within,
)

from mbostream_core.synth import generate_file
from mbostream_client import Backoff, BookReplica, MarketDataClient, ReplayClient

#: Where the replica stands when the first server stops.
REPLICA_POSITION = 5_000


@pytest.mark.parametrize("second_file", ["another file", "the same file"])
def test_replica_rebuilds_when_the_restarted_server_runs_another_epoch(
    servers: Servers, generated_small: Path, tmp_path: Path, second_file: str
) -> None:
    if second_file == "another file":
        other = tmp_path / "other.mbo.dbn"
        generate_file(other, records=60_000, instruments=4, seed=99)
    else:
        other = generated_small
    first = servers.start([generated_small], "--rate", "20000", "--loop")

    async def scenario() -> None:
        async with MarketDataClient(first.address) as client:
            replica = BookReplica(client, backoff=Backoff(base=0.2, cap=0.5))
            async with running(replica):
                await wait_until(
                    lambda: replica.stats.records_applied > 1_000 and (replica.last_sequence or 0) > REPLICA_POSITION,
                    "live records on the replica",
                )
                old_epoch = replica.epoch
                assert first.stop() == 0
                second = servers.start([other], "--rate", "200000", "--loop", port=first.port)
                async with ReplayClient(second.address, token=TOKEN) as replay:
                    # The new run passes the replica's resume point: by number it is valid there, and
                    # only the epoch can tell the runs apart (the server checks it before the range).
                    status = await within(replay.status())
                    for _ in range(100):
                        if status.replay_sequence > REPLICA_POSITION + 10_000:
                            break
                        await asyncio.sleep(0.05)
                        status = await within(replay.status())
                    assert status.replay_sequence > REPLICA_POSITION + 10_000
                    assert status.epoch and status.epoch != old_epoch
                    await wait_until(lambda: replica.stats.epoch_changes >= 1, "the epoch change noticed")
                    await wait_until(lambda: replica.epoch == status.epoch, "a replica of the new run")
                    position = await paused_position(replay)
                    await assert_replica_matches_server(replica, client, position)
                assert replica.stats.rebuilds >= 1 and replica.stats.snapshots == 2

    run(scenario())


def test_events_cli_reconnects_and_resumes_without_gap_or_duplicate(
    servers: Servers, generated_small: Path
) -> None:
    """``mbostream-client events`` across a server restart: resumes in place after UNAVAILABLE when
    it can, and restarts from a snapshot (printed as such) when the server runs another epoch."""
    first = servers.start([generated_small], "--rate", "20000", "--loop")
    command = [sys.executable, "-m", "mbostream_client", "--target", first.address, "events", "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        try:
            assert cli.stdout is not None
            before = _read_records(cli.stdout, 3_000)
            assert first.stop() == 0
            second = servers.start([generated_small], "--rate", "20000", "--loop", port=first.port)
            after = _read_records(cli.stdout, 3_000, after_snapshot=True)
        finally:
            cli.send_signal(signal.SIGINT)
            _, stderr = cli.communicate(timeout=30)
    live_before = [r["replay_sequence"] for r in before if not r["snapshot"]]
    assert live_before == list(range(live_before[0], live_before[0] + len(live_before))), "gap or duplicate"
    snapshot_at = next(i for i, r in enumerate(after) if r["snapshot"])
    live_after = [r["replay_sequence"] for r in after[snapshot_at:] if not r["snapshot"]]
    assert live_after and live_after == list(range(live_after[0], live_after[0] + len(live_after)))
    assert "starting over from a snapshot" in stderr, stderr


def test_events_cli_with_no_reconnect_ends_on_the_first_error_with_one_line(
    servers: Servers, generated_small: Path
) -> None:
    """``--no-reconnect``: the server going away ends the command, exit 1 and one stderr line that
    names the status, instead of the reconnects and resumes the command does by default."""
    first = servers.start([generated_small], "--rate", "20000", "--loop")
    command = [sys.executable, "-m", "mbostream_client", "--target", first.address, "events", "--json", "--no-reconnect"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        try:
            assert cli.stdout is not None
            _read_records(cli.stdout, 1_000)
            assert first.stop() == 0
            _, stderr = cli.communicate(timeout=30)  # a reconnecting command would still be running
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait(10)
    assert cli.returncode == 1, (cli.returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert lines[0].startswith("mbostream-client events: error: StreamEvents: UNAVAILABLE"), lines[0]


def _read_records(stream, count: int, after_snapshot: bool = False) -> list[dict]:
    """JSON records from the CLI's stdout until ``count`` live ones (after a snapshot, if asked),
    read on a thread with a bound."""

    def read() -> list[dict]:
        records: list[dict] = []
        live = 0
        seen_snapshot = not after_snapshot
        while live < count:
            line = stream.readline()
            assert line, "the CLI ended its output"
            records.append(json.loads(line))
            seen_snapshot = seen_snapshot or records[-1]["snapshot"]
            live += seen_snapshot and not records[-1]["snapshot"]
        return records

    return asyncio.run(asyncio.wait_for(asyncio.to_thread(read), 60))
