"""A gateway resyncs in place after a gap in the bus (issue 14, docs/bus.md "Gaps").

Real nats-server, real ``mbostream replay`` and ``gateway`` processes, the Python and Go clients.
The gap is made as retention makes it: the gateway is cut off from the bus by a TCP proxy, the
stream is purged past the gateway's position while it is away, and the proxy lets it back. Every
wait is bounded; every process is stopped by PID by this test.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import grpc
import nats as nats_client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mbostream.bus.ingest import stream_seq_after
from mbostream.bus.streams import FIRST_SEQ, RECORDS_STREAM
from mbostream_core.v1 import replay_pb2
from followers import GoFollower, PythonFollower, assert_no_silent_gap, build_go_follower
from nats_harness import nats_call
from server_harness import AUTH, RPC_TIMEOUT, run, stubs
from test_bus import _gateway_position, _health, _scrape, books, feed, gateway, nats, replay_position, replayer, wait_position

__all__ = ["feed", "nats"]  # the fixtures this module takes from test_bus


class CuttableProxy:
    """A TCP proxy to ``127.0.0.1:upstream_port`` whose connections can all be cut, and new ones
    refused, until :meth:`restore` (the bus goes away for the gateway only)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refusing = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                if self.refusing:
                    raise OSError("refusing")
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Closes every proxied connection and refuses new ones."""
        self.refusing = True
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


class HealthWatch(threading.Thread):
    """Every health status the server reports (gRPC health Watch), in order."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.statuses: list[int] = []

    def run(self) -> None:
        call = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(), timeout=300)
        with contextlib.suppress(grpc.RpcError):
            for reply in call:
                self.statuses.append(reply.status)

    def stop(self) -> None:
        self.channel.close()
        self.join(10)


async def purge_after(url: str, position: int, messages: int) -> tuple[int, int]:
    """Purges the record stream up to ``messages`` messages past the one holding ``position + 1``,
    as retention would; returns the replay positions now missing after ``position``."""
    nc = await nats_call(nats_client.connect(url))
    try:
        js = nc.jetstream()
        stream_seq, last = await nats_call(stream_seq_after(js, position))
        assert stream_seq + messages <= last, "the replay has not published past the gateway yet"
        await nats_call(js.purge_stream(RECORDS_STREAM, seq=stream_seq + messages))
        first = (await nats_call(js.stream_info(RECORDS_STREAM))).state.first_seq
        return position + 1, int((await nats_call(js.get_msg(RECORDS_STREAM, seq=first))).headers[FIRST_SEQ]) - 1
    finally:
        await nats_call(nc.close())


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def test_gateway_resyncs_in_place_after_a_gap(nats, feed, tmp_path) -> None:
    """A gap in the bus under a SERVING gateway with live Python and Go clients: the process stays
    up (same PID), reports NOT_SERVING then SERVING, counts the gap and the resync and logs one
    line; both clients either get contiguous positions or start over from an explicit snapshot
    (never a silent gap or duplicate); afterwards its books equal the replayer's at the same position."""
    go_binary = build_go_follower(tmp_path)
    replay = replayer(nats, feed, tmp_path, "--rate", "20000", "--loop", "--snapshot-interval-seconds", "0.5")
    proxy = CuttableProxy(nats.port)
    gw = gateway(nats, tmp_path, "--metrics-port", "0", "--nats", f"nats://127.0.0.1:{proxy.port}")
    assert gw.process is not None
    pid = gw.process.pid
    watch = HealthWatch(gw.address)
    python = PythonFollower(gw.address)
    go = GoFollower(go_binary, gw.address, tmp_path / "go.log", snapshots=True)
    try:
        watch.start()
        python.start()
        wait_until(lambda: len(python.batches) > 5 and len(go.batches) > 5, "both clients streaming")

        proxy.cut()  # the gateway loses the bus; the replay goes on
        before = -1
        while (position := _gateway_position(gw.address)) != before:
            before = position
            time.sleep(0.5)
        missing = run(purge_after(nats.url, position, 5))
        proxy.restore()

        wait_until(lambda: "bus gap:" in gw.log_path.read_text(), "the resync's log line")
        wait_until(lambda: _health(gw.address) == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
        resynced_at = _gateway_position(gw.address)
        wait_until(
            lambda: any(b[0] > resynced_at for b in python.batches) and any(b[0] > resynced_at for b in go.batches),
            "both clients streaming after the resync",
        )

        with grpc.insecure_channel(replay.address) as channel:
            stubs(channel)[1].Pause(replay_pb2.PauseRequest(), timeout=RPC_TIMEOUT, metadata=AUTH)
        paused = replay_position(replay)
        wait_position(gw, paused)
        gateway_books, replayed = books(gw), books(replay)
        assert gateway_books.keys() == replayed.keys() and len(replayed) == 4
        assert {k: v.SerializeToString() for k, v in gateway_books.items()} == {
            k: v.SerializeToString() for k, v in replayed.items()
        }

        python.stop()
        assert not python.is_alive(), "the Python follower did not stop"
        assert go.stop() == 0
        assert python.error is None, python.error
        for name, seen in (("python", python.seen), ("go", go.seen)):
            assert assert_no_silent_gap(name, seen) == 1, f"{name}: expected one explicit start-over, saw {seen}"
        # The one start-over is the server's explicit OUT_OF_RANGE (the positions are gone), not a
        # discontinuity the client had to catch itself.
        assert python.stats is not None and python.stats.rebuilds == 1, python.stats
        assert python.start_over.causes == ["ResumeOutOfRangeError"], python.start_over.causes
        assert go.stats is not None and go.stats[2:] == (1, 1, 0, 0), go.stats

        assert gw.process is not None and gw.process.poll() is None and gw.process.pid == pid
        log = gw.log_path.read_text()
        assert log.count("bus gap:") == 1, log[-3000:]
        assert f"positions {missing[0]}..{missing[1]}" in log, (missing, log[-3000:])
        metrics = _scrape(gw.metrics_port)
        assert metrics["mbostream_bus_gaps_total"] == 1
        assert metrics["mbostream_bus_resyncs_total"] == 1
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        transitions = [s for i, s in enumerate(watch.statuses) if i == 0 or s != watch.statuses[i - 1]]
        assert transitions[-3:] == [serving, not_serving, serving], watch.statuses
    finally:
        watch.stop()
        python.stop()
        if go.process.poll() is None:
            go.process.kill()
            go.process.wait(10)
        gw.stop()
        proxy.close()
        replay.stop()
