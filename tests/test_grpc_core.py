"""The serving commands choose gRPC core's I/O path before gRPC starts (mbostream.server.grpc_core).

Checked on a real ``mbostream serve`` through gRPC core's own TCP trace: iomgr's TCP endpoint logs
from ``tcp_posix.cc``, EventEngine's from ``endpoint.cc``. An operator's GRPC_EXPERIMENTS wins.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import shared_file
from server_harness import ServeProcess

from mbostream.server.grpc_core import SERVER_GRPC_EXPERIMENTS

#: gRPC core's TCP trace, at the level that prints it.
_TRACE = {"GRPC_TRACE": "tcp", "GRPC_VERBOSITY": "debug"}


def _server_log(tmp_path: Path, env: dict[str, str]) -> str:
    """The log of a serve that started, answered the health checks of its start-up, and stopped."""
    log = tmp_path / "serve.log"
    server = ServeProcess("--rate", "1000", "--listeners", "1", str(shared_file("CLX5_mbo.dbn")), log_path=log, env=env)
    server.start()
    assert server.stop() == 0
    return log.read_text()


def test_serve_does_its_tcp_io_without_event_engine_endpoints(tmp_path: Path) -> None:
    text = _server_log(tmp_path, _TRACE)
    assert "tcp_posix.cc" in text  # iomgr's endpoint carried the health checks
    assert "Unknown experiment" not in text


def test_an_operators_grpc_experiments_win(tmp_path: Path) -> None:
    text = _server_log(tmp_path, {**_TRACE, "GRPC_EXPERIMENTS": ""})  # gRPC's own defaults
    assert "tcp_posix.cc" not in text
    assert "endpoint.cc" in text  # EventEngine's endpoint, the one gRPC 1.85 uses by default


def test_the_experiments_are_known_to_the_installed_grpc() -> None:
    """A gRPC upgrade that renames or drops them is a log line at start-up: caught here, with a
    made-up name as the proof that the check can fail."""
    code = (
        "import asyncio\nfrom grpc import aio\n"
        "async def main():\n    s = aio.server()\n    s.add_insecure_port('127.0.0.1:0')\n    await s.start()\n    await s.stop(None)\n"
        "asyncio.run(main())\n"
    )
    for experiments, known in ((SERVER_GRPC_EXPERIMENTS, True), ("-no_such_experiment", False)):
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
            env={"GRPC_EXPERIMENTS": experiments, "GRPC_VERBOSITY": "debug", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert ("Unknown experiment" not in proc.stderr) is known, proc.stderr
