"""Real servers for tests: in-process on port 0 (App) or a `mbostream serve` subprocess.

Every wait is bounded; subprocess servers are stopped by PID by the fixture that started them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio as grpc_aio

from mbostream.config import Settings, load_settings
from mbostream.server.app import App
from mbostream.v1 import market_data_pb2_grpc, replay_pb2_grpc

T = TypeVar("T")
TOKEN = "test-control-token"


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Runs a test coroutine with a hard timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def settings(**overrides: Any) -> Settings:
    base = load_settings({}, environ={})
    values = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "control_token": TOKEN, "log_level": "warning"}
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
        await channel.close()
        await asyncio.wait_for(app.shutdown(), 30)


def stubs(channel: grpc_aio.Channel) -> tuple[market_data_pb2_grpc.MarketDataServiceStub, replay_pb2_grpc.ReplayServiceStub]:
    return market_data_pb2_grpc.MarketDataServiceStub(channel), replay_pb2_grpc.ReplayServiceStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


class ServerProcess:
    """A `mbostream serve` subprocess; the address comes from its JSON ready line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "MBOSTREAM_CONTROL_TOKEN": TOKEN, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mbostream.cli", "--log-level", "warning", "serve", "--host", "127.0.0.1", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("{") and "listening" in line or not line and self.proc.poll() is not None:
                break
        if not line.startswith("{"):
            self.stop()
            raise RuntimeError(f"server did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        ready = json.loads(line)
        self.address = ready["listening"]
        self.port = int(self.address.rsplit(":", 1)[1])
        self.metrics_port = ready["metrics_port"]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 20, every: float = 0.05) -> None:
    """Polls an async predicate until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise TimeoutError("condition not met in time")


def repo() -> Path:
    return Path(__file__).resolve().parent.parent


def is_rpc_error(exc: BaseException, code: grpc.StatusCode) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == code
