"""Fault injection for tests: Shopify's toxiproxy between the hops, and the roles as killable processes.

The proxy is toxiproxy v2.5.0 as ``scripts/install-toxiproxy`` builds it (``MBOSTREAM_TOXIPROXY``
overrides it), run on 127.0.0.1 and driven through its HTTP API (``/proxies``, ``/toxics``)::

    with toxiproxy(tmp_path) as proxy:
        port = proxy.create("nats", upstream_port)        # listens on a free port of 127.0.0.1
        with proxy.toxic("nats", "latency", latency=200, jitter=100):
            ...
        with proxy.partition("nats"):                     # the proxy disabled: every link cut
            ...

Every role is a :class:`Role`: ``kill()`` sends SIGKILL by PID, ``restart()`` starts it again on
the same port with the same store, as a supervisor would (``mbostream run``'s policy), and returns
once the new process is ready. Every wait is bounded; whoever starts a process stops it by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, TypeVar

from mbostream.edge.supervisor import Edge

from influx.harness import InfluxEngine
from nats_harness import NatsServer
from server_harness import ServeProcess, free_port, pinned_tool

T = TypeVar("T")

#: Upper bound of one toxiproxy API call, and of its start.
API_TIMEOUT: Final = 10.0
TOXIPROXY_VARIABLE: Final = "MBOSTREAM_TOXIPROXY"
POLL_SECONDS: Final = 0.1


def toxiproxy_binary() -> str:
    """``MBOSTREAM_TOXIPROXY``, else the pinned build of ``scripts/install-toxiproxy`` (built if missing)."""
    return pinned_tool(TOXIPROXY_VARIABLE, "install-toxiproxy")


class Toxiproxy:
    """One ``toxiproxy-server`` on 127.0.0.1 and the proxies it holds (see the module docstring)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.api_port = free_port()
        self.binary = toxiproxy_binary()
        self.process: subprocess.Popen[bytes] | None = None
        #: Toxics added, by type (what the figures count).
        self.injected: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def start(self) -> Toxiproxy:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-host", "127.0.0.1", "-port", str(self.api_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + API_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"toxiproxy exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
                with contextlib.suppress(OSError):
                    self._api("GET", "/proxies")
                    return self
                time.sleep(POLL_SECONDS)
            raise TimeoutError(f"toxiproxy did not answer within {API_TIMEOUT} s")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(API_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(API_TIMEOUT)

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"toxiproxy {method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(text) if text.strip() else None

    def create(self, name: str, upstream_port: int) -> int:
        """A proxy ``name`` from a free port of 127.0.0.1 to ``upstream_port``; returns its port."""
        port = free_port()
        self._api("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{upstream_port}"})
        return port

    def add_toxic(self, proxy: str, kind: str, *, stream: str = "downstream", **attributes: int) -> str:
        """Adds a toxic of type ``kind`` to ``proxy`` (toxicity 1: every connection); returns its name."""
        name = f"{kind}_{stream}"
        self._api("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._api("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        """Disabling a proxy closes its listener and every link through it (a full partition)."""
        self._api("POST", f"/proxies/{proxy}", {"enabled": enabled})
        if not enabled:
            self.injected["partition"] = self.injected.get("partition", 0) + 1

    @contextlib.contextmanager
    def toxic(self, proxies: tuple[str, ...], kind: str, *, stream: str = "downstream", **attributes: int) -> Iterator[None]:
        """The toxic on every one of ``proxies`` while the block runs."""
        added = [(proxy, self.add_toxic(proxy, kind, stream=stream, **attributes)) for proxy in proxies]
        try:
            yield
        finally:
            for proxy, name in added:
                self.remove_toxic(proxy, name)

    @contextlib.contextmanager
    def partition(self, proxies: tuple[str, ...]) -> Iterator[None]:
        """Every one of ``proxies`` disabled while the block runs, then healed."""
        for proxy in proxies:
            self.set_enabled(proxy, False)
        try:
            yield
        finally:
            for proxy in proxies:
                self.set_enabled(proxy, True)


@contextlib.contextmanager
def toxiproxy(tmp_path: Path) -> Iterator[Toxiproxy]:
    """A running :class:`Toxiproxy` logging to ``tmp_path/toxiproxy.log``; stopped on exit."""
    server = Toxiproxy(tmp_path / "toxiproxy.log").start()
    try:
        yield server
    finally:
        server.stop()


# -- the roles ---------------------------------------------------------------------------------------
class Role:
    """A process of the system that a fault cycle kills with SIGKILL and restarts (same port, same store)."""

    name: str
    log_paths: tuple[Path, ...]

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """kill -9 by PID; returns once the process is gone."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Starts the role again as a supervisor would; returns once it is ready."""
        self.start()

    def exited(self) -> bool:
        """True when the process is gone or a zombie: it exited without being killed by the test."""
        try:
            pid = self.pid
        except AssertionError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")


class CliRole(Role):
    """An ``mbostream`` command (replay, gateway, store) on a fixed port; ready when its health says SERVING."""

    def __init__(self, name: str, command: str, *args: str, log_path: Path, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.name = name
        self.command = command
        self.args = args
        self.env = env
        self.port = free_port()
        self.log_paths = (log_path,)
        self.timeout = timeout
        self.process: ServeProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.process is not None, f"{self.name} is not running"
        return self.process.process.pid

    def start(self) -> None:
        # Held before it is ready, so a test stopped during the start (a timeout) still stops it.
        self.process = ServeProcess(*self.args, port=self.port, command=self.command, log_path=self.log_paths[0], env=self.env)
        self.process.start(timeout=self.timeout)

    def kill(self) -> None:
        process, self.process = self.process, None
        assert process is not None and process.process is not None, f"{self.name} is not running"
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait(30)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()


class NatsRole(Role):
    """nats-server (tests/nats_harness.py): restarted on its port and store, ready once JetStream is healthy."""

    def __init__(self, server: NatsServer) -> None:
        self.name = "nats-server"
        self.server = server
        self.log_paths = (server.log_path,)

    @property
    def pid(self) -> int:
        return self.server.pid

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()


class InfluxRole(Role):
    """InfluxDB 1.8 (tests/influx): restarted on its ports and data directory, ready once ``/ping`` answers."""

    def __init__(self, engine: InfluxEngine) -> None:
        self.name = "influxd"
        self.engine = engine
        self.log_paths = (engine.directory / "influxd.log",)

    @property
    def pid(self) -> int:
        process = self.engine.process
        assert process is not None and process.popen is not None, "influxd is not running"
        return process.popen.pid

    def start(self) -> None:
        self.engine.start()

    def kill(self) -> None:
        self.engine.kill()

    def stop(self) -> None:
        self.engine.stop()


class LoopThread:
    """An event loop on a thread of its own, for the parts that are asyncio objects (Envoy's supervisor, clients)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class EnvoyRole(Role):
    """Envoy (:class:`mbostream.edge.supervisor.Edge`) on a fixed port, restarted with the same config."""

    def __init__(self, loop: LoopThread, make: Callable[[], Edge]) -> None:
        self.name = "envoy"
        self.loop = loop
        self.make = make
        self.edge: Edge | None = None
        # Envoy's own log is forwarded to the test process's logging by Edge; nothing to scan here.
        self.log_paths = ()

    @property
    def pid(self) -> int:
        assert self.edge is not None and self.edge.pid is not None, "envoy is not running"
        return self.edge.pid

    def start(self) -> None:
        edge = self.make()
        self.loop.call(edge.start(timeout=60), timeout=90)
        self.edge = edge

    def kill(self) -> None:
        edge, self.edge = self.edge, None
        assert edge is not None and edge.pid is not None, "envoy is not running"
        os.kill(edge.pid, signal.SIGKILL)
        self.loop.call(edge.stop(), timeout=30)  # reaps the dead process and its log task

    def stop(self) -> None:
        edge, self.edge = self.edge, None
        if edge is not None:
            self.loop.call(edge.stop(), timeout=30)


# -- what the invariants read -------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS``), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class LogScanner:
    """Finds any of ``patterns`` in the logs it watches, reading each file only from where it stopped last time."""

    def __init__(self, patterns: tuple[bytes, ...] = (b"Traceback",)) -> None:
        self.patterns = patterns
        self.offsets: dict[Path, int] = {}

    def new_findings(self, paths: list[Path]) -> list[str]:
        found = []
        for path in paths:
            if not path.is_file():
                continue
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                text = f.read()
                self.offsets[path] = f.tell()
            for pattern in self.patterns:
                if pattern in text:
                    at = text.index(pattern)
                    found.append(f"{path.name}: {text[at : at + 1500].decode(errors='replace')}")
        return found


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank rule."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def wait_until(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Polls ``check`` every 100 ms; returns the seconds it took, AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - start
