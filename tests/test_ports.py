"""Ports are bound exclusively: a second server on a taken port fails at start, naming the port.

Before, gRPC's SO_REUSEPORT let a second ``mbostream serve`` share the first one's port, and the
kernel spread new clients between two different replays. The server's own ``listeners`` gRPC
servers do share the port (SO_REUSEPORT, so each has its own accept queue); what keeps other
processes out is the probe bind without SO_REUSEPORT before it, which fails on any bound port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from conftest import shared_file
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import RPC_TIMEOUT, ServeProcess, free_port, listening_sockets

from mbostream_core.v1 import replay_pb2_grpc
from mbostream_core.v1 import replay_pb2 as rp


def second_server(command: str, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "--log-format", "text", command, "--host", "127.0.0.1", *flags,
         str(shared_file("CLX5_mbo.dbn"))],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "MBOSTREAM_STORE": "false"},
    )  # fmt: skip


def assert_refused(proc: subprocess.CompletedProcess[str], command: str, setting: str, port: int) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"mbostream {command}: error: {setting}"), lines[0]
    assert f"127.0.0.1:{port} is already in use" in lines[0]
    assert "listening" not in proc.stdout



def _epochs_of_new_connections(port: int, token: str, *, check_health: bool = False) -> set[str]:
    """The run identities 20 new connections to ``port`` reach (each asserted SERVING first if asked)."""
    epochs = set()
    for _ in range(20):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if check_health:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            status = replay_pb2_grpc.ReplayServiceStub(channel).GetStatus(
                rp.GetStatusRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=RPC_TIMEOUT
            )
            epochs.add(status.status.epoch)
    return epochs

def test_a_second_server_on_a_taken_grpc_port_fails_and_the_first_keeps_every_client(tmp_path: Path) -> None:
    port = free_port()
    first = ServeProcess("--rate", "1000", str(shared_file("CLX5_mbo.dbn")), port=port, log_path=tmp_path / "first.log")
    first.start()
    try:
        proc = second_server("serve", "--port", str(port), "--metrics-port", "-1")
        assert_refused(proc, "serve", "--port / MBOSTREAM_PORT", port)
        # `run` binds gRPC before it starts its edge, so it fails the same way (no Envoy needed).
        proc = second_server("run", "--port", str(port), "--metrics-port", "-1", "--edge-port", "0")
        assert_refused(proc, "run", "--port / MBOSTREAM_PORT", port)
        # Every new connection still reaches the one replay there is (one run identity).
        assert len(_epochs_of_new_connections(port, first.token, check_health=True)) == 1
    finally:
        assert first.stop() == 0


def test_a_taken_metrics_port_fails_naming_it() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = second_server("serve", "--port", "0", "--metrics-port", str(port))
    assert_refused(proc, "serve", "--metrics-port / MBOSTREAM_METRICS_PORT", port)


def test_the_listeners_share_the_port_and_every_one_serves(tmp_path: Path) -> None:
    """``--listeners 3``: three listening sockets of the one process on the port, and new
    connections, spread over them by the kernel, all reach a serving server of the one replay."""
    port = free_port()
    server = ServeProcess(
        "--listeners", "3", "--rate", "1000", str(shared_file("CLX5_mbo.dbn")), port=port, log_path=tmp_path / "serve.log"
    )
    server.start()
    try:
        assert server.process is not None
        assert listening_sockets(port, server.process.pid) == 3
        assert len(_epochs_of_new_connections(port, server.token, check_health=True)) == 1
    finally:
        assert server.stop() == 0


def test_a_port_shared_by_a_reuseport_listener_is_still_refused() -> None:
    """Another process that opted into SO_REUSEPORT does not make our bind shared: the probe bind
    before ours does not opt in, so it fails on the port the other process holds."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = second_server("serve", "--port", str(port), "--metrics-port", "-1")
    assert_refused(proc, "serve", "--port / MBOSTREAM_PORT", port)


def test_a_second_run_on_a_taken_edge_port_fails_naming_it_and_the_first_keeps_every_client(tmp_path: Path) -> None:
    """Two ``mbostream run`` on one edge port, each with its own gRPC port: the second's Envoy used
    to share the first's port (SO_REUSEPORT) and browsers were spread between the two replays."""
    edge_port = free_port()
    first = ServeProcess(
        "--edge-port", str(edge_port), "--rate", "1000", str(shared_file("CLX5_mbo.dbn")),
        command="run", log_path=tmp_path / "first.log",
    )  # fmt: skip
    first.start()
    try:
        # Refused before it loads anything; bounded, as a second run that started would never end.
        proc = second_server("run", "--port", "0", "--metrics-port", "-1", "--edge-port", str(edge_port), timeout=30)
        assert_refused(proc, "run", "--edge-port / MBOSTREAM_EDGE_PORT", edge_port)
        assert len(_epochs_of_new_connections(edge_port, first.token)) == 1
    finally:
        assert first.stop() == 0
