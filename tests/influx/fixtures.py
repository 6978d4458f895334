"""pytest fixtures of the storage tests: the real InfluxDB stack and the CLX5 sample.

Test modules load them with ``pytest_plugins = ["influx.fixtures"]``. ``influx_with_clx5`` is one
engine for the whole session, holding the CLX5 feed as the sink stored it: only for tests that
read. A missing ``influxd`` is an error naming ``scripts/install-influxd``, not a skip; tests that
need the CLX5 sample skip with the reason when ``../shared/data`` is absent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from mbostream_core.dbn import FileInfo, read_records
from mbostream.storage import StorageSettings, StorageSink

from influx.harness import InfluxStack, influx_stack
from influx.replay import Replay

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CLX5_PATH: Final = REPO_ROOT.parent / "shared" / "data" / "CLX5_mbo.dbn"
SINK_TIMEOUT_SECONDS: Final = 60.0


@pytest.fixture(scope="session")
def clx5() -> tuple[FileInfo, np.ndarray]:
    """The CLX5 sample (38,212 MBO records) and its metadata."""
    if not CLX5_PATH.is_file():
        pytest.skip(f"real data sample absent: {CLX5_PATH} (../shared/data is not in this checkout)")
    return read_records(CLX5_PATH)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxStack]:
    """A fresh InfluxDB 1.8 with an empty bucket, written to through its 2.x API; stopped by PID afterwards."""
    with influx_stack(tmp_path / "influx") as stack:
        yield stack


@pytest.fixture
def influx_down(tmp_path: Path) -> Iterator[InfluxStack]:
    """The same stack with the engine not started yet: connections are refused until ``engine.start()``."""
    with influx_stack(tmp_path / "influx", start_engine=False) as stack:
        yield stack


async def _store(stack: InfluxStack, info: FileInfo, records: np.ndarray, spool_dir: Path) -> None:
    """Replays ``records`` through a sink (``mbo`` on, depth every minute) into ``stack``; stops it."""
    replay = Replay(info, records)
    settings = StorageSettings(
        url=stack.url, org=stack.org, bucket=stack.bucket, token=stack.token,
        spool_dir=spool_dir, store_mbo=True, depth_interval=60.0,
    )  # fmt: skip
    sink = StorageSink(settings, depth_source=replay.depth_source, symbols=replay.symbols)
    await asyncio.wait_for(sink.start(), 10)
    for chunk in replay.chunks(500):
        replay.step(sink.offer, chunk)
        # Paced like a replay: flat out, the sink skips depth samples to spare the loop, and the
        # docs' "depth at a moment" examples need samples in every part of the session.
        await asyncio.sleep(0.05)
    await asyncio.wait_for(sink.stop(SINK_TIMEOUT_SECONDS), SINK_TIMEOUT_SECONDS + 10)


@pytest.fixture(scope="session")
def influx_with_clx5(tmp_path_factory: pytest.TempPathFactory, clx5: tuple[FileInfo, np.ndarray]) -> Iterator[InfluxStack]:
    """One engine holding the whole CLX5 feed (``mbo`` on), stored by the real sink, with Flux; read-only tests."""
    info, records = clx5
    directory = tmp_path_factory.mktemp("influx-clx5")
    with influx_stack(directory / "influx", flux=True) as stack:
        asyncio.run(_store(stack, info, records, directory / "spool"))
        assert stack.count("mbo") == len(records), "the feed did not reach the engine"
        yield stack
