"""Real servers for tests: in-process on port 0 (App) or a `mbostream serve` subprocess.

Every wait is bounded; subprocess servers are stopped by PID by the fixture that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import grpc
import numpy as np
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mbostream.config import Settings, load_settings
from mbostream.replay import _STEP_SECONDS as PACING_STEP_SECONDS
from mbostream.server.app import App
from mbostream_core.v1 import market_data_pb2_grpc, replay_pb2_grpc
from mbostream_core.records import F_LAST

T = TypeVar("T")
TOKEN = "test-control-token"
#: Upper bound of one RPC or one stream read in these tests.
RPC_TIMEOUT: Final = 10.0
#: Pacing steps a rate-paced release may be stamped late: the OS may preempt the server between
#: its pacing decision and the publish (``ts_out``) on two cores shared with other jobs.
LATE_STEPS: Final = 5


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Runs a test coroutine with a hard timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def settings(**overrides: Any) -> Settings:
    base = load_settings({}, environ={})
    values = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "control_token": TOKEN,
        "log_level": "warning",
        "store": False,  # storage has its own tests; these servers need no spool
    }
    values.update(overrides)
    return replace(base, **values)


@asynccontextmanager
async def in_process(s: Settings, wait_loaded: bool = True):
    """An App on a free port; yields (app, channel)."""
    app = App(s)
    await asyncio.wait_for(app.start(), 60)
    if wait_loaded:
        await asyncio.wait_for(app.replayer.loaded.wait(), 30)
    channel = grpc_aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, channel
    finally:
        await asyncio.wait_for(channel.close(), RPC_TIMEOUT)
        await asyncio.wait_for(app.shutdown(), 30)


def stubs(channel: grpc_aio.Channel) -> tuple[market_data_pb2_grpc.MarketDataServiceStub, replay_pb2_grpc.ReplayServiceStub]:
    return market_data_pb2_grpc.MarketDataServiceStub(channel), replay_pb2_grpc.ReplayServiceStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for a server that must come back on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_sockets(port: int, pid: int | None = None) -> int:
    """How many TCP sockets listen on ``port`` (any address), from the kernel's tables; with
    ``pid``, only that process's (the inodes of its file descriptors)."""
    inodes: set[str] | None = None
    if pid is not None:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    count += inodes is None or inode in inodes
    return count


class ServeProcess:
    """A real ``mbostream serve`` (or ``run``) subprocess on 127.0.0.1, stopped by PID by whoever started it.

    The port comes from the server's JSON ready line (``{"listening": "127.0.0.1:P", ...}``).
    Its log goes to ``log_path``; its stdout is drained so it can never block on a full pipe.
    ``start`` returns once the server answers health checks with SERVING. With ``command="run"``
    the ready line also has the edge's ``url``, and the line after it says which URL to open
    (``page_url``). ``token=None`` starts it with no control token configured at all.
    """

    def __init__(
        self,
        *args: str,
        port: int = 0,
        log_path: Path,
        token: str | None = TOKEN,
        env: dict[str, str] | None = None,
        command: str = "serve",
        cwd: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.args = args
        self.log_level = log_level
        self.requested_port = port
        self.log_path = log_path
        self.token = token
        self.env = env or {}
        self.command = command
        self.cwd = cwd
        self.port = 0
        self.metrics_port = -1
        #: StreamBook on the native transport (``--book-port``); -1 when not served.
        self.book_port = -1
        self.url = ""
        self.page_url = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> ServeProcess:
        """Starts the server and waits (at most ``timeout`` s) until it listens and is SERVING."""
        command = [
            sys.executable, "-m", "mbostream.cli", "--log-level", self.log_level, "--log-format", "text",
            self.command, "--host", "127.0.0.1", "--port", str(self.requested_port), "--metrics-port", "-1",
            *self.args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MBOSTREAM_CONTROL_TOKEN")}
        if self.token is not None:
            env["MBOSTREAM_CONTROL_TOKEN"] = self.token
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**env, "MBOSTREAM_STORE": "false", **self.env},
            cwd=self.cwd,
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=_drain, args=(self.process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout

        def next_line() -> str:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"mbostream {self.command} did not start:\n{self.log_path.read_text()[-4000:]}")
            return line

        while not ((line := next_line()).startswith("{") and "listening" in line):
            pass
        ready = json.loads(line)
        self.port = int(ready["listening"].rsplit(":", 1)[1])
        self.metrics_port = int(ready["metrics_port"])
        self.book_port = int(ready.get("book_port", -1))
        if "url" in ready:
            self.url = ready["url"]
            self.page_url = next_line().split("open ", 1)[1].split()[0]
        self._wait_serving(deadline)
        return self

    def _wait_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.1)
        raise TimeoutError(f"mbostream {self.command} never reported SERVING")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, grace: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        process, self.process = self.process, None
        return stop_process(process, grace)


def stop_process(process: subprocess.Popen[Any] | None, grace: float) -> int | None:
    """Stops a process this test started, by its PID: SIGTERM, then SIGKILL after ``grace``
    seconds; returns its exit code (None when there was none to stop)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(grace)


def _drain(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 20, every: float = 0.05) -> None:
    """Polls an async predicate until it holds; TimeoutError after ``timeout`` s, even mid-call."""
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(every)
    except TimeoutError:
        raise TimeoutError(f"condition not met within {timeout} s") from None


def last_event_records(flags: bytes | np.ndarray) -> int:
    """Records in the last event of a batch (from its last-but-one F_LAST, or the whole batch).

    A paced release completes the event it stops in, so this bounds how far one release can run
    ahead of its budget.
    """
    marks = np.flatnonzero(np.frombuffer(bytes(flags), dtype=np.uint8)[:-1] & F_LAST)
    return len(flags) - (int(marks[-1]) + 1 if len(marks) else 0)


def longest_event_records(flags: np.ndarray) -> int:
    """The most records of one event (up to and including its F_LAST record) in a file's flags."""
    marks = np.flatnonzero(flags & F_LAST)
    return int(np.diff(marks, prepend=-1).max()) if len(marks) else len(flags)


def paced_records_slack(rate: float, overshoot: int) -> float:
    """How far the records a rate-paced replay publishes over an interval may be from rate × interval.

    Measured between two releases by their ``ts_out``: a release brings the released total to
    ``rate × elapsed`` (rounded down) plus the records that complete its last event (``overshoot``,
    over both ends), and its stamp may come up to :data:`LATE_STEPS` pacing steps after the pacing
    decision, at each end. One record more for the rounding at each end.
    """
    return overshoot + 2 * rate * LATE_STEPS * PACING_STEP_SECONDS + 2


def repo() -> Path:
    return Path(__file__).resolve().parent.parent


def pinned_tool(variable: str, script: str) -> str:
    """A tool's binary: ``$variable`` if set, else the path ``scripts/<script>`` prints (it builds the
    pinned version into its cache first if it is missing). A failed build is an error, never a skip."""
    configured = os.environ.get(variable, "").strip()
    if configured:
        return configured
    result = subprocess.run([str(repo() / "scripts" / script)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/{script} failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def is_rpc_error(exc: BaseException, code: grpc.StatusCode) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == code
