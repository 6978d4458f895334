"""Bench cluster room: ``mbostream bench cluster``, the scale-out roles measured as real processes.

One ``mbostream run --gateways N --no-store`` (nats-server, the replayer, N gateways, Envoy) per
phase, measured from outside:

* **each role alone** (a nats-server and one role at a time, nothing else of ours running):
  the latency the bus adds at ``--rate R`` (below) with only the replayer publishing, the
  replayer's ``--max`` publishing rate (replay positions acknowledged by JetStream per second)
  with its CPU, then — the replayer stopped, its stream left full — one new gateway applying that
  whole stream from position 1: its ingest rate between 10% and 90% of the stream, with its CPU.
  These are each role's ceilings on one core, as the targets are stated;
* **replayer → bus with the gateways**, ``--max`` (``run --gateways N``): replay positions
  acknowledged per second (the last record message's ``Mbostream-Last-Seq``, read back from the
  stream, over a window), the bytes the stream grows by per record, and each gateway's
  ``mbostream_records_ingested_total`` over the same window, every process's CPU beside it — all
  roles sharing this machine's cores, so bounded by the sum of their costs;
* **bus latency** at ``--rate R``: receive time of every record message at a plain NATS subscriber
  minus its ``Mbostream-Ts-Out`` (stamped by the replayer just before publishing): p50/p99;
* **cold start**: a new ``mbostream gateway`` process until its health says SERVING;
* **failover**: a Python ``EventFollower`` through Envoy; the gateway serving it is killed (SIGKILL)
  and the time to its first resumed batch is taken, a few times.

Everything shares this machine's cores (so do other jobs): figures are what it shows, not a
cluster's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mbostream.errors import BenchError

#: The record stream's byte limit in every phase (the lone gateway applies all of it; no window
#: loses messages to retention).
ALONE_STREAM_BYTES: Final = 8 << 30
#: Seconds allowed for ``mbostream run --gateways`` to print its JSON line.
START_TIMEOUT_SECONDS: Final = 240.0
LATENCY_WINDOW_SECONDS: Final = 5.0


@dataclass(frozen=True, kw_only=True)
class ClusterBenchConfig:
    files: tuple[str, ...]
    gateways: int = 2
    seconds: float = 10.0
    rate: float = 500_000.0
    failovers: int = 3


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class _Run:
    """One ``mbostream run --gateways N --no-store`` process, stopped by PID."""

    def __init__(self, cfg: ClusterBenchConfig, *pacing: str) -> None:
        command = [
            sys.executable, "-m", "mbostream.cli", "--log-level", "error", "run", *cfg.files, *pacing, "--loop",
            "--gateways", str(cfg.gateways), "--edge-port", "0", "--no-store",
        ]  # fmt: skip
        self.started = time.monotonic()
        env = {
            **os.environ,
            "MBOSTREAM_CONTROL_TOKEN": os.environ.get("MBOSTREAM_CONTROL_TOKEN") or "bench-cluster-token",
            # Retention must drop nothing during a window, or the stream's bytes per record read low.
            "MBOSTREAM_BUS_MAX_BYTES": str(ALONE_STREAM_BYTES),
        }
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.process.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(START_TIMEOUT_SECONDS)
        if not ready or not ready[0].startswith("{"):
            self.stop()
            raise BenchError("mbostream run --gateways did not print its ready line")
        self.ready: dict[str, Any] = json.loads(ready[0])
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def stop(self) -> None:
        _stop(self.process)


def _metric(port: int, name: str) -> float:
    from mbostream.tools.bench_server import read_metric

    value = read_metric("127.0.0.1", port, name, timeout=5)
    if value is None:
        raise BenchError(f"metric {name} not exported on port {port}")
    return value


async def _last_position(nats_url: str) -> tuple[int, int, int]:
    """The record stream's last replay position, its bytes and its messages."""
    from mbostream.bus.streams import LAST_SEQ, RECORDS_STREAM, connect

    nc = await connect(nats_url, name="bench-cluster")
    try:
        js = nc.jetstream()
        # One consistent reading: the stream's state, then the position of its last message then.
        info = await js.stream_info(RECORDS_STREAM)
        last = await js.get_msg(RECORDS_STREAM, seq=info.state.last_seq)
        return int((last.headers or {})[LAST_SEQ]), int(info.state.bytes), int(info.state.messages)
    finally:
        await nc.close()


def _throughput(cfg: ClusterBenchConfig) -> dict[str, Any]:
    from mbostream.tools.bench_server import process_cpu_seconds

    run = _Run(cfg, "--max")
    try:
        _wait(lambda: _last_position_or_zero(run.ready["nats"]) > 0, "the first record message", 60)
        time.sleep(2.0)  # warm-up
        gateways = [g["metrics_port"] for g in run.ready["gateways"]]
        pids = {"replayer": run.ready["replayer"]["pid"], **{f"gateway-{i + 1}": g["pid"] for i, g in enumerate(run.ready["gateways"])}}
        pos0, bytes0, msgs0 = asyncio.run(_last_position(run.ready["nats"]))
        ingested0 = [_metric(port, "mbostream_records_ingested_total") for port in gateways]
        cpu0 = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        time.sleep(cfg.seconds)
        pos1, bytes1, msgs1 = asyncio.run(_last_position(run.ready["nats"]))
        ingested1 = [_metric(port, "mbostream_records_ingested_total") for port in gateways]
        cpu1 = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        elapsed = time.monotonic() - t0
        records = pos1 - pos0
        return {
            "bus_acked_records_per_second": round(records / elapsed),
            "bus_messages_per_second": round((msgs1 - msgs0) / elapsed),
            "stream_bytes_per_record": round((bytes1 - bytes0) / records, 1) if records and bytes1 > bytes0 else None,
            "gateway_ingest_records_per_second": [round((b - a) / elapsed) for a, b in zip(ingested0, ingested1)],
            "cpu_percent": {name: round(100 * (cpu1[name] - cpu0[name]) / elapsed, 1) for name in pids},
            "window_seconds": round(elapsed, 2),
        }
    finally:
        run.stop()


class _Nats:
    """A nats-server of its own (JetStream, a temp store) on 127.0.0.1, stopped by PID."""

    def __init__(self) -> None:
        from mbostream.edge.cluster import find_nats_server, free_port, nats_healthy

        self.store = tempfile.mkdtemp(prefix="mbostream-bench-nats-")
        #: The roles' errors (``_role``), kept with the store and removed with it.
        self.log = Path(self.store) / "roles.log"
        self.port, monitor = free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        argv = [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(monitor), "-sd", self.store]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: nats_healthy(monitor), "nats-server", 30)

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.store, ignore_errors=True)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _role(role: str, nats_url: str, log: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``mbostream ROLE --nats URL ...`` started (its errors to ``log``) and its JSON ready line read."""
    command = [sys.executable, "-m", "mbostream.cli", "--log-level", "error", role, *extra, "--nats", nats_url, "--port", "0"]
    env = {**os.environ, "MBOSTREAM_CONTROL_TOKEN": os.environ.get("MBOSTREAM_CONTROL_TOKEN") or "bench-cluster-token"}
    with log.open("a") as errors:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("{"):
        _stop(process)
        raise BenchError(f"mbostream {role} did not print its ready line: {_tail(log)}")
    return process, json.loads(line)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:].strip() or "(nothing logged)"


def _alone(cfg: ClusterBenchConfig) -> dict[str, Any]:
    """Each role's ceiling with nothing else of ours running (module docstring)."""
    from mbostream.tools.bench_server import process_cpu_seconds

    nats = _Nats()
    # No snapshots (the gateway below starts at position 1) and room for the whole fill.
    quiet_stream = ("--loop", "--no-store", "--metrics-port", "-1", "--snapshot-interval-seconds", "3600", "--bus-max-bytes", str(ALONE_STREAM_BYTES))
    try:
        replayer, _ = _role("replay", nats.url, nats.log, *cfg.files, "--rate", str(cfg.rate), *quiet_stream)
        try:
            _wait(lambda: _last_position_or_zero(nats.url) > 0, "the first record message", 60)
            time.sleep(1.0)
            latencies = asyncio.run(_bus_latency(nats.url, LATENCY_WINDOW_SECONDS))
        finally:
            _stop(replayer)
        replayer, _ = _role("replay", nats.url, nats.log, *cfg.files, "--max", *quiet_stream)  # goes on from the positions above
        try:
            _wait(lambda: _last_position_or_zero(nats.url) > 0, "the first record message", 60)
            time.sleep(2.0)  # warm-up
            pos0, cpu0, t0 = asyncio.run(_last_position(nats.url))[0], process_cpu_seconds(replayer.pid), time.monotonic()
            time.sleep(cfg.seconds)
            pos1, cpu1, t1 = asyncio.run(_last_position(nats.url))[0], process_cpu_seconds(replayer.pid), time.monotonic()
        finally:
            _stop(replayer)
        total = asyncio.run(_last_position(nats.url))[0]
        from mbostream.edge.cluster import free_port

        metrics_port = free_port()
        gateway, _ = _role("gateway", nats.url, nats.log, "--metrics-port", str(metrics_port))
        try:
            samples: list[tuple[float, float, float]] = []  # (time, records ingested, gateway CPU seconds)

            def caught_up() -> bool:
                if gateway.poll() is not None:
                    raise BenchError(f"the gateway exited with {gateway.returncode} while applying the stream: {_tail(nats.log)}")
                samples.append((time.monotonic(), _metric(metrics_port, "mbostream_records_ingested_total"), process_cpu_seconds(gateway.pid)))
                return samples[-1][1] >= total

            _wait(caught_up, "the gateway applying the whole stream", START_TIMEOUT_SECONDS)
        finally:
            _stop(gateway)
        a = next(x for x in samples if x[1] >= 0.1 * total)
        b = next(x for x in samples if x[1] >= 0.9 * total)
        return {
            "bus_latency_ms": _latency_summary(latencies, cfg.rate),
            "replayer_acked_records_per_second": round((pos1 - pos0) / (t1 - t0)),
            "replayer_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "gateway_records_applied": total,
            "gateway_ingest_records_per_second": round((b[1] - a[1]) / (b[0] - a[0])) if b[0] > a[0] else None,
            "gateway_cpu_percent": round(100 * (b[2] - a[2]) / (b[0] - a[0]), 1) if b[0] > a[0] else None,
        }
    finally:
        nats.stop()


def _last_position_or_zero(nats_url: str) -> int:
    try:
        return asyncio.run(_last_position(nats_url))[0]
    except Exception:  # noqa: BLE001 - the stream may not exist yet
        return 0


async def _bus_latency(nats_url: str, seconds: float) -> list[float]:
    from mbostream.bus.streams import RECORDS_SUBJECT, TS_OUT, connect

    nc = await connect(nats_url, name="bench-cluster-latency")
    samples: list[float] = []

    async def on_message(msg: Any) -> None:
        received = time.time_ns()
        stamped = int((msg.headers or {}).get(TS_OUT, "0"))
        if stamped:
            samples.append((received - stamped) / 1e6)

    try:
        await nc.subscribe(RECORDS_SUBJECT, cb=on_message)
        await asyncio.sleep(seconds)
    finally:
        await nc.close()
    return samples


def _latency_summary(latencies: list[float], rate: float) -> dict[str, Any]:
    return {
        "rate_records_per_second": rate,
        "messages": len(latencies),
        "p50": round(_percentile(latencies, 0.5), 3),
        "p99": round(_percentile(latencies, 0.99), 3),
        "max": round(max(latencies), 3) if latencies else None,
    }


def _cold_start(nats_url: str) -> float:
    """Seconds from launching a new gateway until its health check says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    started = time.monotonic()
    command = [sys.executable, "-m", "mbostream.cli", "--log-level", "error", "gateway", "--nats", nats_url, "--port", "0", "--metrics-port", "-1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("{"):
            raise BenchError("the cold-start gateway did not print its ready line")
        address = json.loads(line)["listening"]
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - started < START_TIMEOUT_SECONDS:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        raise BenchError("the cold-start gateway never reported SERVING")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _serving_port(admin: str) -> int | None:
    with urllib.request.urlopen(f"{admin}/clusters", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "mbostream_grpc" and parts[2] == "rq_active" and int(parts[3]) > 0:
                return int(parts[1].rsplit(":", 1)[1])
    return None


def _pid_on_port(port: int, first: dict[int, int]) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"gateway" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1 : argv.index(b"--port") + 2] == [str(port).encode()]:
                return int(proc.name)
    return first[port]


def _failovers(run: _Run, count: int) -> list[float]:
    """Seconds from SIGKILL of the serving gateway to the follower's next batch, ``count`` times."""
    from mbostream_client import Backoff, EventFollower, MarketDataClient

    received: list[float] = []
    stop = threading.Event()

    async def follow() -> None:
        async with MarketDataClient(run.ready["grpc"]) as client:
            follower = EventFollower(client, with_snapshot=False, backoff=Backoff(base=0.02, factor=2, cap=0.5))
            async for batch, _ in follower.follow():
                if len(batch) and not batch.snapshot:
                    received.append(time.monotonic())
                if stop.is_set():
                    follower.stop()

    thread = threading.Thread(target=lambda: asyncio.run(follow()), daemon=True)
    thread.start()
    first = {g["port"]: g["pid"] for g in run.ready["gateways"]}
    killed: set[int] = set()
    times: list[float] = []
    try:
        for _ in range(count):
            _wait(lambda: len(received) > 5, "the follower streaming", 60)
            port = None

            def serving() -> bool:
                nonlocal port
                port = _serving_port(run.ready["admin"])
                return port is not None and _pid_on_port(port, first) not in killed

            _wait(serving, "a gateway serving the follower", 120)
            assert port is not None
            pid = _pid_on_port(port, first)
            seen = len(received)
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            _wait(lambda: len(received) > seen, "the follower resumed", 60)
            times.append(received[seen] - killed_at)
            time.sleep(8.0)  # let `mbostream run` restart the killed gateway
    finally:
        stop.set()
        thread.join(10)
    return times


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def run_cluster_bench(cfg: ClusterBenchConfig) -> dict[str, Any]:
    """Every figure of the module docstring, in one document."""
    results: dict[str, Any] = {"gateways": cfg.gateways, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    results["alone"] = _alone(cfg)
    results["max"] = _throughput(cfg)
    run = _Run(cfg, "--rate", str(cfg.rate))
    try:
        results["cold_start_to_json_line_seconds"] = round(time.monotonic() - run.started, 2)
        _wait(lambda: _last_position_or_zero(run.ready["nats"]) > 0, "the first record message", 60)
        latencies = asyncio.run(_bus_latency(run.ready["nats"], LATENCY_WINDOW_SECONDS))
        results["bus_latency_ms"] = _latency_summary(latencies, cfg.rate)
        results["gateway_cold_start_to_serving_seconds"] = round(_cold_start(run.ready["nats"]), 2)
        failovers = _failovers(run, cfg.failovers)
        results["failover_to_first_resumed_batch_seconds"] = {
            "each": [round(t, 3) for t in failovers],
            "median": round(statistics.median(failovers), 3) if failovers else None,
        }
    finally:
        run.stop()
    return results


def format_summary(r: dict[str, Any]) -> str:
    a, m, lat, fo = r["alone"], r["max"], r["bus_latency_ms"], r["failover_to_first_resumed_batch_seconds"]
    cpu = ", ".join(f"{name} {value}%" for name, value in m["cpu_percent"].items())
    return "\n".join(
        [
            f"mbostream bench cluster: {r['gateways']} gateways on {r['cpus']} CPUs (load average {', '.join(f'{x:.1f}' for x in r['load_average'])})",
            f"  alone: replayer -> bus (--max) {a['replayer_acked_records_per_second']:,} records/s acknowledged at {a['replayer_cpu_percent']}% CPU; "
            f"one gateway applying the stream ({a['gateway_records_applied']:,} records) {a['gateway_ingest_records_per_second']:,} records/s at {a['gateway_cpu_percent']}% CPU",
            f"  alone: bus latency at {a['bus_latency_ms']['rate_records_per_second']:,.0f} records/s: p50 {a['bus_latency_ms']['p50']} ms, "
            f"p99 {a['bus_latency_ms']['p99']} ms (max {a['bus_latency_ms']['max']} ms, {a['bus_latency_ms']['messages']} messages)",
            f"  with {r['gateways']} gateways, replayer -> bus (--max): {m['bus_acked_records_per_second']:,} records/s acknowledged, "
            f"{m['bus_messages_per_second']:,} messages/s, {m['stream_bytes_per_record']} stream bytes/record",
            f"  gateway ingest (same window): {', '.join(f'{x:,}' for x in m['gateway_ingest_records_per_second'])} records/s (CPU: {cpu})",
            f"  with {r['gateways']} gateways, bus latency at {lat['rate_records_per_second']:,.0f} records/s: p50 {lat['p50']} ms, p99 {lat['p99']} ms "
            f"(max {lat['max']} ms, {lat['messages']} messages)",
            f"  cold start: run --gateways to its JSON line {r['cold_start_to_json_line_seconds']} s; "
            f"one more gateway to SERVING {r['gateway_cold_start_to_serving_seconds']} s",
            f"  failover (SIGKILL of the serving gateway -> first resumed batch): {fo['each']} s, median {fo['median']} s",
        ]
    )


def _cmd_cluster(args: argparse.Namespace) -> int:
    files = tuple(args.file) or (str(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "CLX5_mbo.dbn"),)
    cfg = ClusterBenchConfig(files=files, gateways=args.gateways, seconds=args.seconds, rate=args.rate, failovers=args.failovers)
    results = run_cluster_bench(cfg)
    print(json.dumps(results, indent=2) if args.json else format_summary(results))
    return 0
