"""The scale-out cluster (issue 14), bus-ops side: the store role as a durable consumer of the bus.

Real parts only: a real ``nats-server -js`` (tests/nats_harness.py), a real InfluxDB 1.8 written to
through its 2.x API (tests/influx), and ``mbostream store`` as a real process, killed with SIGKILL.
The record stream is filled by this test exactly as the contract (docs/bus.md) says the replayer
fills it: one message per replay step ending at an F_LAST, the raw 48-byte records, positions in
headers (encoded by ``mbostream.bus.codec``, the replayer's own encoder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mbostream.bus.codec import Meta, record_headers, record_payload
from mbostream.bus.streams import META_SUBJECT, RECORDS_SUBJECT, connect, ensure_streams
from mbostream.edge.cluster import MAX_RESTARTS, RESTART_WINDOW_SECONDS
from mbostream.feed import Batch
from mbostream_core.dbn import FileInfo, read_records
from mbostream_core.records import F_LAST
from mbostream_core.v1 import market_data_pb2

from conftest import shared_file
from influx.harness import InfluxStack, influx_stack
from nats_harness import NatsServer, nats_call, nats_server, nats_server_binary
from followers import GoFollower, PythonFollower, build_go_follower
from server_harness import TOKEN, ServeProcess
from store_checks import MEASUREMENTS, WAIT_SECONDS, acked_stream_seq, delete_consumer, fingerprint, wait_acked

#: Records per published step at most (a step always ends at an F_LAST, as the replayer's do).
STEP_RECORDS: Final = 256
EPOCH: Final = "test-epoch"


def steps(records: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first position, records)`` of replay steps of about ``size`` records, each ending at an F_LAST."""
    closing = np.flatnonzero(records["flags"] & F_LAST)
    start = 0
    while start < len(records):
        i = np.searchsorted(closing, start + size - 1)
        cut = int(closing[i]) + 1 if i < len(closing) else len(records)
        yield start + 1, records[start:cut]
        start = cut


async def publish(
    url: str,
    info: FileInfo,
    records: np.ndarray,
    *,
    start: int = 0,
    stop: int | None = None,
    pause: float = 0.0,
    epoch: str = EPOCH,
) -> int:
    """Publishes the steps whose first record is in ``[start, stop)`` (record indexes), ``pause`` s apart; their count."""
    nc = await nats_call(connect(url, name="test-replayer"))
    try:
        js = nc.jetstream()
        await nats_call(ensure_streams(js, max_age_seconds=3600, max_bytes=1 << 30))
        meta = Meta(epoch, info.dataset, dict(info.symbols), ("CLX5_mbo.dbn",))
        await nats_call(js.publish(META_SUBJECT, meta.encode()))
        count = 0
        for first, chunk in steps(records, STEP_RECORDS):
            if first - 1 < start or (stop is not None and first - 1 >= stop):
                continue
            batch = Batch(first, chunk, np.empty(0), time.time_ns())
            await nats_call(js.publish(RECORDS_SUBJECT, record_payload(batch), headers=record_headers(batch, epoch, "test")))
            count += 1
            if pause:
                await asyncio.sleep(pause)
        return count
    finally:
        await nats_call(nc.close())


def start_store(nats: NatsServer, influx: InfluxStack, bucket: str, spool: Path, log: Path) -> ServeProcess:
    env = {
        "INFLUX_URL": influx.url,
        "INFLUX_ORG": influx.org,
        "INFLUX_BUCKET": bucket,
        "INFLUX_TOKEN": influx.token,
        "MBOSTREAM_STORE_MBO": "true",
        # Depth samples are taken at the store's pace (see mbostream.bus.store): not compared here.
        "MBOSTREAM_DEPTH_INTERVAL": "0",
    }
    args = ("--nats", nats.url, "--spool-dir", str(spool), "--ack-interval", "0.2")
    return ServeProcess(*args, command="store", log_path=log, env=env).start(timeout=60)


@pytest.fixture(scope="module")
def clx5_path() -> Path:
    return shared_file("CLX5_mbo.dbn")


@pytest.fixture(scope="module")
def clx5(clx5_path: Path) -> tuple[FileInfo, np.ndarray]:
    return read_records(clx5_path)


def test_store_killed_and_restarted_stores_what_an_uncrashed_run_stores(tmp_path: Path, clx5: tuple[FileInfo, np.ndarray]) -> None:
    """(6) kill -9 the store mid-stream, restart it: every measurement equals a run without the crash."""
    info, records = clx5
    half = len(records) // 3
    with nats_server(tmp_path) as nats, influx_stack(tmp_path / "influx") as influx:
        influx.engine.query('CREATE DATABASE "clean"')
        total = asyncio.run(publish(nats.url, info, records, stop=half))
        store = start_store(nats, influx, "mbostream", tmp_path / "spool-crash", tmp_path / "store-crash.log")
        try:
            first_acked = wait_acked(nats, at_least=total)
            # The rest is published at a pace, as a replay would; the store is killed while it flows.
            with ThreadPoolExecutor(1) as pool:
                rest = pool.submit(asyncio.run, publish(nats.url, info, records, start=half, pause=0.02))
                wait_acked(nats, at_least=first_acked + 10)
                assert store.process is not None
                os.kill(store.process.pid, signal.SIGKILL)
                store.wait(10)
                total += rest.result(WAIT_SECONDS)
        finally:
            store.stop()
        acked_at_kill, last = asyncio.run(acked_stream_seq(nats.url))
        assert first_acked < acked_at_kill < last == total, "the kill did not land mid-stream; the test proves nothing"
        restarted = start_store(nats, influx, "mbostream", tmp_path / "spool-crash", tmp_path / "store-restart.log")
        try:
            wait_acked(nats, at_least=total)
        finally:
            assert restarted.stop() == 0
        # The run without a crash: the same stream from its start, a fresh consumer, another database.
        asyncio.run(delete_consumer(nats.url))
        clean = start_store(nats, influx, "clean", tmp_path / "spool-clean", tmp_path / "store-clean.log")
        try:
            wait_acked(nats, at_least=total)
        finally:
            assert clean.stop() == 0
        results: dict[str, Any] = {}
        for measurement in MEASUREMENTS:
            crashed = fingerprint(influx.engine, "mbostream", measurement)
            uncrashed = fingerprint(influx.engine, "clean", measurement)
            results[measurement] = (crashed, uncrashed)
            assert crashed == uncrashed, f"{measurement}: {crashed} after the crash, {uncrashed} without"
        assert results["mbo"][0][0] == len(records), "every record is stored once as an mbo point"
        assert results["trades"][0][0] > 0 and results["bbo"][0][0] > 0


def test_store_state_of_another_run_is_not_used(tmp_path: Path, clx5: tuple[FileInfo, np.ndarray]) -> None:
    """A store moved to a new bus (another epoch) with its old spool starts cold instead of skipping positions."""
    info, records = clx5
    spool = tmp_path / "spool"
    with nats_server(tmp_path, "nats-a") as first, influx_stack(tmp_path / "influx") as influx:
        influx.engine.query('CREATE DATABASE "second"')
        total = asyncio.run(publish(first.url, info, records))
        store = start_store(first, influx, "mbostream", spool, tmp_path / "store-a.log")
        try:
            wait_acked(first, at_least=total)
        finally:
            assert store.stop() == 0
        with nats_server(tmp_path, "nats-b") as second:
            asyncio.run(publish(second.url, info, records, epoch="another-run"))
            store = start_store(second, influx, "second", spool, tmp_path / "store-b.log")
            try:
                wait_acked(second, at_least=total)
            finally:
                assert store.stop() == 0
        assert influx.count("mbo") == len(records)
        assert fingerprint(influx.engine, "second", "mbo")[0] == len(records), "the second bus's feed was stored whole"


# -- (1) failover through Envoy: kill -9 the gateway serving a client, 20 times -------------------
KILLS: Final = 20
GATEWAYS: Final = 3
#: Replay rate of the failover run: slow enough for three gateways and two clients on two busy cores.
FAILOVER_RATE: Final = "5000"
STEP_TIMEOUT: Final = 90.0


class ClusterRun:
    """``mbostream run --gateways N`` as a real process; stopped by PID (SIGTERM) by the test."""

    def __init__(self, log: Path, *args: str) -> None:
        env = {
            **os.environ,
            "MBOSTREAM_NATS_SERVER": nats_server_binary(),
            "MBOSTREAM_CONTROL_TOKEN": TOKEN,
            # A record stream bounded as in production (a few MB) with frequent snapshots: a restarted
            # gateway cold-starts from the snapshots in a second instead of re-applying the whole run.
            "MBOSTREAM_BUS_MAX_BYTES": str(4 << 20),
            "MBOSTREAM_SNAPSHOT_INTERVAL_SECONDS": "1",
        }
        command = [sys.executable, "-m", "mbostream.cli", "--log-level", "warning", "--log-format", "text", "run", *args]
        with log.open("ab") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=_lines, args=(self.process.stdout, lines), daemon=True).start()
        line = lines.get(timeout=240)
        if line is None:
            raise AssertionError(f"mbostream run --gateways did not start:\n{log.read_text()[-4000:]}")
        self.ready: dict[str, Any] = json.loads(line)
        self.log = log
        self.first_pids = {g["port"]: g["pid"] for g in self.ready["gateways"]}
        self.killed: set[int] = set()
        self.kill_times: dict[int, list[float]] = {}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def stop_cleanly(self) -> None:
        """Stops the run and asserts it exits 0, with the end of its log if it does not."""
        code = self.stop()
        assert code == 0, f"mbostream run exited {code}:\n{self.log.read_text(errors='replace')[-4000:]}"

    def kill_gateway(self, port: int) -> None:
        """kill -9 the gateway on ``port``, noting when (see :meth:`within_restart_budget`)."""
        pid = self.gateway_pid(port)
        assert pid is not None, f"the gateway on {port} is not running"
        os.kill(pid, signal.SIGKILL)
        self.killed.add(pid)
        self.kill_times.setdefault(port, []).append(time.monotonic())

    def within_restart_budget(self, port: int) -> bool:
        """Whether killing the gateway on ``port`` now keeps it inside the run's crash-loop policy.

        ``mbostream run`` gives up (exit 1) on a child that exits more than ``MAX_RESTARTS`` times
        within ``RESTART_WINDOW_SECONDS``; a test that kills faster than that tests the policy, not
        failover. The window is widened by a few seconds: the run dates an exit when it sees it.
        """
        since = time.monotonic() - RESTART_WINDOW_SECONDS - 5
        return sum(1 for t in self.kill_times.get(port, []) if t > since) < MAX_RESTARTS

    def clusters(self) -> str:
        with urllib.request.urlopen(f"{self.ready['admin']}/clusters", timeout=5) as reply:
            return str(reply.read().decode())

    def gateway_stat(self, stat: str, cluster: str = "mbostream_grpc") -> dict[int, str]:
        """``port → value`` of one per-host stat of a gateways' cluster in Envoy's ``/clusters``
        (the API's; ``mbostream_books``: their native book ports)."""
        out = {}
        for line in self.clusters().splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == stat:
                out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
        return out

    def gateway_pid(self, port: int) -> int | None:
        """The gateway process on ``port`` now (None between a kill and its restart).

        A restarted gateway has ``--port PORT`` on its command line; the first one ``--port 0``
        and its pid is in the ready line.
        """
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"gateway" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
                    return int(proc.name)
        first = self.first_pids[port]
        return first if Path(f"/proc/{first}").exists() and first not in self.killed else None

    def serving_again(self, port: int) -> bool:
        """A new process serves ``port`` (its own health check says SERVING) and Envoy sees it healthy."""
        pid = self.gateway_pid(port)
        if pid is None or pid in self.killed:
            return False
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING and self.gateway_stat("health_flags").get(port) == "healthy"


def _lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def assert_contiguous(name: str, batches: list[tuple[int, int, int, bool]]) -> None:
    """Every live batch is contiguous inside and starts right after the previous one: no gap, no duplicate."""
    assert batches, f"{name}: no live batch received"
    for (_, prev_last, _, _), (first, last, count, inside) in zip(batches, batches[1:]):
        assert first == prev_last + 1, f"{name}: after position {prev_last} came {first} (gap or duplicate)"
    for first, last, count, inside in batches:
        assert inside and last - first + 1 == count, f"{name}: batch {first}..{last} is not contiguous"


def wait_until(check: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.timeout(1500)  # 20 gateway restarts (cold start from the bus) on two shared cores
def test_clients_resume_on_another_gateway_when_theirs_is_killed_20_times(tmp_path: Path, clx5_path: Path) -> None:
    """(1) kill -9 the gateway serving each client, 20 times: both clients resume through Envoy, lossless."""
    go_binary = build_go_follower(tmp_path)
    run = ClusterRun(
        tmp_path / "run.log", str(clx5_path), "--rate", FAILOVER_RATE, "--loop", "--gateways", str(GATEWAYS),
        "--edge-port", "0", "--no-store",
    )  # fmt: skip
    followers: list[Any] = []
    try:
        ports = [g["port"] for g in run.ready["gateways"]]
        wait_until(lambda: all(v.startswith("healthy") for v in run.gateway_stat("health_flags").values()), "every gateway healthy")
        python = PythonFollower(run.ready["grpc"])
        python.start()
        go = GoFollower(go_binary, run.ready["grpc"], tmp_path / "go.log")
        followers = [python, go]
        wait_until(lambda: len(python.batches) > 5 and len(go.batches) > 5, "both clients streaming")
        for kill in range(KILLS):
            # Kill only when another gateway serves: one killed earlier is restarted by then (by
            # `mbostream run`, on the same port), so there is always one to fail over to; and only as
            # often as the run's crash-loop policy allows (within_restart_budget).
            active: list[int] = []

            def ready_to_kill() -> bool:
                active[:] = [port for port, value in run.gateway_stat("rq_active").items() if int(value) > 0]
                # Envoy may still count a stream on a gateway killed a moment ago: only live ones are targets.
                alive = all(run.gateway_pid(p) not in (None, *run.killed) for p in active)
                budget = all(run.within_restart_budget(p) for p in active)
                return bool(active) and alive and budget and any(run.serving_again(p) for p in ports if p not in active)

            wait_until(ready_to_kill, f"a gateway serving a client and another one up, before kill {kill}")
            seen = (len(python.batches), len(go.batches))
            for port in active:
                run.kill_gateway(port)
            wait_until(lambda: len(python.batches) > seen[0] + 3 and len(go.batches) > seen[1] + 3, f"both clients resumed after kill {kill}")
        python.stop()
        python.join(30)
        assert go.stop() == 0
        assert python.error is None, python.error
        assert_contiguous("python", python.batches)
        assert_contiguous("go", go.batches)
        assert python.stats.rebuilds == 0 and python.stats.resumes >= KILLS, python.stats
        assert go.stats is not None and go.stats[2] == 0 and go.stats[1] >= KILLS, go.stats
    finally:
        for follower in followers:
            if isinstance(follower, GoFollower) and follower.process.poll() is None:
                follower.process.kill()
        run.stop_cleanly()  # exit 1: the run judged a gateway crash-looping and gave up


def test_run_with_gateways_routes_streambook_to_each_gateways_native_book_port(tmp_path: Path, generated_small: Path) -> None:
    """``run --gateways 2 --book-port 0``: each gateway serves StreamBook on a free native port of
    its own, the edge health-checks each through its gRPC port and routes StreamBook there (the
    books cluster counts the calls); a killed gateway comes back on the same book port, healthy
    again, and a client's new StreamBook is served meanwhile."""
    run = ClusterRun(
        tmp_path / "run.log", str(generated_small), "--rate", "5000", "--loop", "--gateways", "2", "--book-port", "0",
        "--edge-port", "0", "--no-store",
    )  # fmt: skip
    try:
        gateways = run.ready["gateways"]
        books = {g["port"]: g["book_port"] for g in gateways}
        assert len(set(books.values())) == 2 and not set(books.values()) & set(books), books

        def books_healthy() -> bool:
            flags = run.gateway_stat("health_flags", "mbostream_books")
            return sorted(flags) == sorted(books.values()) and all(v == "healthy" for v in flags.values())

        wait_until(books_healthy, "both gateways' book ports healthy in Envoy")

        def stream_books(count: int) -> list[Any]:
            with grpc.insecure_channel(run.ready["grpc"]) as channel:
                call = channel.unary_stream(
                    "/mbostream.v1.MarketDataService/StreamBook",
                    request_serializer=lambda r: r.SerializeToString(),
                    response_deserializer=market_data_pb2.StreamBookResponse.FromString,
                )(market_data_pb2.StreamBookRequest(depth=3), timeout=STEP_TIMEOUT)
                messages = [next(call) for _ in range(count)]
                call.cancel()
                return messages

        assert all(m.book.bids or m.book.asks for m in stream_books(5))
        served = {int(port): int(value) for port, value in run.gateway_stat("rq_total", "mbostream_books").items()}
        assert sum(served.values()) >= 1, served
        victim = next(port for port, book in books.items() if served.get(book))
        run.kill_gateway(victim)
        other = next(book for port, book in books.items() if port != victim)

        def only_the_victims_book_port_out() -> bool:
            # Each book host is checked through its own gateway's gRPC port.
            flags = run.gateway_stat("health_flags", "mbostream_books")
            return flags.get(books[victim]) != "healthy" and flags.get(other) == "healthy"

        wait_until(only_the_victims_book_port_out, "the killed gateway's book port out of the books cluster, the other's in")
        assert len(stream_books(3)) == 3  # the other gateway serves meanwhile
        wait_until(lambda: run.serving_again(victim) and books_healthy(), "the killed gateway back on its book port")
        after = {int(port): int(value) for port, value in run.gateway_stat("rq_total", "mbostream_books").items()}
        assert sum(after.values()) >= sum(served.values()) + 1, (served, after)
    finally:
        run.stop_cleanly()


def test_run_whose_envoy_dies_stops_with_exit_1_and_one_error_line(tmp_path: Path, generated_small: Path) -> None:
    """Envoy is the run's one address: killed, the cluster stops and says why (exit 1), as ``serve``'s
    run does (before, the roles went on behind a dead URL and the run never exited)."""
    log = tmp_path / "run.log"
    run = ClusterRun(log, str(generated_small), "--rate", "5000", "--loop", "--gateways", "1", "--edge-port", "0", "--no-store")
    try:
        children = [int(c) for task in Path(f"/proc/{run.process.pid}/task").iterdir() for c in (task / "children").read_text().split()]
        envoys = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().strip() == "envoy"]
        assert len(envoys) == 1, children
        os.kill(envoys[0], signal.SIGKILL)
        code = run.process.wait(60)
    finally:
        run.stop()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"cluster stops: envoy (pid {envoys[0]}) exited with code" in errors[0], errors
