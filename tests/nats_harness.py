"""A real NATS server (JetStream) for tests: 127.0.0.1, a free port, a temporary store; stopped by PID.

The binary is the pinned build of ``scripts/install-nats-server`` (cached by version), or the one
``MBOSTREAM_NATS_SERVER`` names. A missing binary is a failure, never a skip (tests/conftest.py).

Usage::

    with nats_server(tmp_path) as nats:   # nats.url, nats.pid
        ...
        nats.kill()                       # kill -9, the store stays
        nats.restart()                    # same port, same store: JetStream recovers its streams

Every wait is bounded; whoever starts a server stops it (the context manager does, by PID).
A test's own NATS client calls go through :func:`nats_call`, so a hung call fails at its line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

from server_harness import free_port, pinned_tool, stop_process

T = TypeVar("T")

#: Upper bound for a server to answer its health check after a (re)start.
START_TIMEOUT: Final = 30.0
#: Upper bound for one NATS client call in a test (connect, publish, a JetStream API call, fetch,
#: flush, close): a hang guard for a loaded 2-core CI machine, not a speed check. Each takes
#: milliseconds here; nats-py's own request timeout is 5 s. Below the 60 s of ``server_harness.run``,
#: so a hung call fails here, naming itself, before the whole scenario times out.
NATS_CALL_TIMEOUT_SECONDS: Final = 30.0


async def nats_call(call: Awaitable[T], timeout: float = NATS_CALL_TIMEOUT_SECONDS) -> T:
    """``await call``, or a TimeoutError naming it after ``timeout`` seconds.

    A TimeoutError the call raises itself (nats-py's request timeout) passes through unchanged.
    """
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await call
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        name = getattr(call, "__qualname__", repr(call))
        raise TimeoutError(f"NATS call {name} did not finish within {timeout:g} s") from exc


def nats_server_binary() -> str:
    """The nats-server to run: ``MBOSTREAM_NATS_SERVER``, else the pinned cached build (built if missing)."""
    return pinned_tool("MBOSTREAM_NATS_SERVER", "install-nats-server")


class NatsServer:
    """One ``nats-server -js`` process on 127.0.0.1 with its store under ``store_dir``.

    The client port and the monitoring port are chosen once, so a restart comes back on the same
    URL (clients reconnect to it) and the same store (JetStream recovers its streams from disk).
    """

    def __init__(self, store_dir: Path, *, log_path: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        self.store_dir = store_dir
        #: More nats-server flags (e.g. ``--tls --tlscert …``: tests/test_tls_hops.py).
        self.extra_args = tuple(extra_args)
        self.log_path = log_path or store_dir.parent / f"{store_dir.name}.log"
        self.port = free_port()
        self.monitor_port = free_port()
        self.binary = nats_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT) -> NatsServer:
        """Starts the server; returns once JetStream reports healthy (streams recovered)."""
        assert self.process is None, "already running"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-m", str(self.monitor_port), "-sd", str(self.store_dir), *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"nats-server exited with {code}:\n{self.log_path.read_text()[-4000:]}")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server not healthy within {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(json.load(reply).get("status") == "ok")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self) -> None:
        """kill -9 (no flush, no goodbye); the store stays for :meth:`restart`."""
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(START_TIMEOUT)

    def restart(self, timeout: float = START_TIMEOUT) -> NatsServer:
        """Starts again on the same port and store (after :meth:`kill` or :meth:`stop`)."""
        if self.process is not None:
            self.stop()
        return self.start(timeout)

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``grace`` seconds; returns the exit code."""
        process, self.process = self.process, None
        return stop_process(process, grace)


@contextlib.contextmanager
def nats_server(tmp_path: Path, name: str = "nats") -> Iterator[NatsServer]:
    """A running :class:`NatsServer` with its store in ``tmp_path / name``; stopped on exit."""
    server = NatsServer(tmp_path / name).start()
    try:
        yield server
    finally:
        server.stop()
