"""Edge cluster room: ``mbostream run --gateways N``, the scale-out roles on one machine, supervised.

Start order, each step ready before the next::

    nats-server (JetStream, a private store dir) → replayer (creates the streams, writes the meta)
      → N gateways → the store → Envoy (ReplayService → the replayer; MarketDataService, health and
        reflection → the gateways: least-request, gRPC health-checked, retried on another gateway)

then one JSON line on stdout: ``{"url", "grpc", "nats", "replayer": {"pid", "port"}, "gateways":
[{"pid", "port"}, ...], "store": {"pid"}, "admin"}`` (``store`` is null with ``--no-store``;
``admin`` is Envoy's loopback admin interface, whose ``/clusters`` shows which gateway serves what;
each role's entry also has its Prometheus ``metrics_port``, a free port kept across restarts).

Supervision policy: **restart**. A child that exits while the run is up is started again on the same
port (Envoy's config names the ports) after a backoff (0.2 s, doubling, at most 5 s): every role is
built to be restarted (gateways are stateless replicas, the store is a durable consumer, the
replayer continues its positions on the bus, nats-server recovers its streams from its store). A
child restarted more than :data:`MAX_RESTARTS` times within :data:`RESTART_WINDOW_SECONDS` is
crash-looping: the whole run stops, logging which child and its exit code, and exits 1.

Shutdown (SIGTERM/SIGINT): Envoy, then the gateways, the store and the replayer (SIGTERM; SIGKILL
after the grace period), nats-server last. Every child also gets SIGTERM if this launcher dies
(``setpriv --pdeathsig``, as Envoy does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mbostream.edge.config import REPO_ROOT, EdgeTls
from mbostream.edge.errors import EdgeError
from mbostream.edge.supervisor import Edge, _die_with_parent
from mbostream.errors import ConfigError
from mbostream.lifecycle import on_stop_signals, print_ready_line

log = logging.getLogger(__name__)

#: Restarts of one child allowed within :data:`RESTART_WINDOW_SECONDS` before the run gives up. A
#: child that fails at once is restarted after 0.2, 0.4, … 5 s: ten take about half a minute.
MAX_RESTARTS: Final = 10
RESTART_WINDOW_SECONDS: Final = 60.0
RESTART_BACKOFF_SECONDS: Final = (0.2, 5.0)
#: Longest wait for one child's ready line (a replayer's first start reads and checks its files).
START_TIMEOUT_SECONDS: Final = 120.0
STOP_GRACE_SECONDS: Final = 10.0
NATS_SERVER_VARIABLE: Final = "MBOSTREAM_NATS_SERVER"
INSTALL_SCRIPT: Final = REPO_ROOT / "scripts" / "install-nats-server"
EXIT_CRASH_LOOP: Final = 1


class ClusterError(EdgeError):
    """A child of ``mbostream run --gateways N`` could not start, or keeps dying."""


@dataclass(frozen=True, kw_only=True)
class ClusterTls:
    """The certificates of the run's hops (PEM paths, as the ``MBOSTREAM_*`` settings of the same
    names say; empty: plaintext on that hop).

    ``cert_file``/``key_file`` are the replayer's and every gateway's gRPC TLS (Envoy pins that
    certificate) and, with ``nats_ca_file``, nats-server's too: one host, one server certificate,
    signed by ``nats_ca_file`` (which the roles verify it against). ``client_ca_file``: mTLS at the
    replayer and gateways, Envoy presenting ``edge_client_cert_file``; ``nats_cert_file``: mTLS at
    nats-server, which then asks every role for a certificate of ``nats_ca_file``.
    ``edge_cert_file``/``edge_key_file``: HTTPS towards browsers.
    """

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    nats_ca_file: str = ""
    nats_cert_file: str = ""
    nats_key_file: str = ""
    edge_cert_file: str = ""
    edge_key_file: str = ""
    edge_client_cert_file: str = ""
    edge_client_key_file: str = ""

    def __post_init__(self) -> None:
        if self.nats_ca_file and not self.cert_file:
            raise ConfigError(
                "MBOSTREAM_NATS_TLS_CA_FILE", "run --gateways serves its nats-server with the servers' certificate: set MBOSTREAM_TLS_CERT_FILE and the key"
            )
        if self.client_ca_file and not self.edge_client_cert_file:
            raise ConfigError(
                "MBOSTREAM_TLS_CLIENT_CA_FILE", "with mTLS at the servers the edge needs a client certificate: set MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE and the key"
            )

    def edge(self) -> EdgeTls:
        """Envoy's TLS: HTTPS for browsers, TLS (and mTLS) to the replayer and the gateways."""
        return EdgeTls(
            cert_file=self.edge_cert_file,
            key_file=self.edge_key_file,
            upstream_cert_file=self.cert_file,
            upstream_client_cert_file=self.edge_client_cert_file,
            upstream_client_key_file=self.edge_client_key_file,
        )

    def role_env(self) -> dict[str, str]:
        """The variables every role reads its TLS from (an empty one is unset: an inherited value is overridden)."""
        return {
            "MBOSTREAM_TLS_CERT_FILE": self.cert_file,
            "MBOSTREAM_TLS_KEY_FILE": self.key_file,
            "MBOSTREAM_TLS_CLIENT_CA_FILE": self.client_ca_file,
            "MBOSTREAM_NATS_TLS_CA_FILE": self.nats_ca_file,
            "MBOSTREAM_NATS_TLS_CERT_FILE": self.nats_cert_file,
            "MBOSTREAM_NATS_TLS_KEY_FILE": self.nats_key_file,
        }

    def nats_args(self) -> list[str]:
        """nats-server's TLS flags: TLS required on the client port, client certificates with mTLS."""
        if not self.nats_ca_file:
            return []
        verify = ["--tlsverify", "--tlscacert", self.nats_ca_file] if self.nats_cert_file else ["--tls"]
        return [*verify, "--tlscert", self.cert_file, "--tlskey", self.key_file]


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """What ``mbostream run --gateways N`` starts (built by the server's CLI from its settings)."""

    gateways: int
    files: tuple[str, ...]
    #: Flags passed to the replayer as they are (pacing, loop, batch size).
    replay_flags: tuple[str, ...] = ()
    #: Flags passed to every gateway as they are (streams, book interval).
    gateway_flags: tuple[str, ...] = ()
    store: bool = True
    control_token: str | None = None
    nats_server: str | None = None
    edge_port: int = 8080
    host: str = "127.0.0.1"
    static_dir: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "json"
    tls: ClusterTls = field(default_factory=ClusterTls)
    #: Each gateway also serves StreamBook on a native port of its own (a free one, kept across
    #: its restarts), which the edge routes StreamBook to.
    book_ports: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.gateways <= 64:
            raise ConfigError("--gateways", f"{self.gateways} is not 1 to 64")


def find_nats_server(explicit: str | None = None) -> str:
    """``--nats-server``, else ``MBOSTREAM_NATS_SERVER``, else the build ``scripts/install-nats-server`` caches."""
    configured = explicit or os.environ.get(NATS_SERVER_VARIABLE, "").strip()
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise ConfigError(f"--nats-server / {NATS_SERVER_VARIABLE}", f"{configured} is not an executable file")
        return configured
    if not INSTALL_SCRIPT.is_file():
        raise ConfigError(f"--nats-server / {NATS_SERVER_VARIABLE}", "required outside a source checkout (no scripts/install-nats-server)")
    # The script prints the cached binary's path (it builds it first, once, if it is missing).
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise ClusterError(f"scripts/install-nats-server failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_healthy(monitor_port: int) -> bool:
    """nats-server's ``/healthz`` on 127.0.0.1:``monitor_port`` says ok (JetStream included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=1) as reply:
            return bool(json.load(reply).get("status") == "ok")
    except (OSError, urllib.error.URLError, ValueError):
        return False


@dataclass
class _Child:
    """One supervised process; ``argv(child)`` makes its command line from its ports (0s on the first start)."""

    name: str
    argv: Callable[[_Child], list[str]]
    env: dict[str, str] | None = None
    #: Python roles print a JSON ready line with their port; nats-server is probed instead.
    ready_line: bool = True
    probe: Callable[[], bool] | None = None
    port: int = 0
    metrics_port: int = 0
    #: A gateway's native book port once it listened (-1: none).
    book_port: int = -1
    process: asyncio.subprocess.Process | None = None
    restarts: deque[float] = field(default_factory=deque)
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class Cluster:
    """The children of one ``mbostream run --gateways N`` and their supervision (module docstring)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.nats_binary = find_nats_server(spec.nats_server)
        self._store_dir = Path(tempfile.mkdtemp(prefix="mbostream-nats-"))
        self.nats_port = free_port()
        self._monitor_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.nats = _Child("nats-server", self._nats_argv, ready_line=False, probe=self._nats_healthy)
        role_env = {**os.environ, **spec.tls.role_env()}
        replayer_env = dict(role_env)
        if spec.control_token:
            replayer_env["MBOSTREAM_CONTROL_TOKEN"] = spec.control_token
        self.replayer = _Child("replayer", lambda c: self._role("replay", c, *spec.files, "--no-store", *spec.replay_flags), replayer_env)
        self.gateways = [_Child(f"gateway-{i + 1}", self._gateway_argv, role_env) for i in range(spec.gateways)]
        self.store = _Child("store", lambda c: self._role("store", c), role_env) if spec.store else None
        self.edge: Edge | None = None
        self.failed: str | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def children(self) -> list[_Child]:
        """Roles in start order (nats-server excluded)."""
        return [self.replayer, *self.gateways, *([self.store] if self.store else [])]

    def _nats_argv(self, _child: _Child) -> list[str]:
        return [
            self.nats_binary, "-js", "-a", "127.0.0.1", "-p", str(self.nats_port),
            "-m", str(self._monitor_port), "-sd", str(self._store_dir), *self.spec.tls.nats_args(),
        ]  # fmt: skip

    def _role(self, role: str, child: _Child, *extra: str) -> list[str]:
        s = self.spec
        return [
            sys.executable, "-m", "mbostream.cli", "--log-level", s.log_level, "--log-format", s.log_format,
            role, "--nats", self.nats_url, "--host", "127.0.0.1", "--port", str(child.port), "--metrics-port", str(child.metrics_port), *extra,
        ]  # fmt: skip

    def _gateway_argv(self, gateway: _Child) -> list[str]:
        """A gateway's command line; with book ports, its own (free on its first start, then the same)."""
        books = ("--book-port", str(max(gateway.book_port, 0))) if self.spec.book_ports else ()
        return self._role("gateway", gateway, *self.spec.gateway_flags, *books)

    def _nats_healthy(self) -> bool:
        return nats_healthy(self._monitor_port)

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts every child in order, then Envoy; on any failure, stops what started and raises."""
        try:
            await self._start(self.nats)
            for child in self.children:
                await self._start(child)
            s = self.spec
            self.edge = Edge(
                listen_port=s.edge_port,
                upstream_port=self.gateways[0].port,
                upstream_ports=[g.port for g in self.gateways],
                book_ports=[g.book_port for g in self.gateways] if s.book_ports else (),
                replayer_port=self.replayer.port,
                static_dir=s.static_dir,
                allowed_origins=s.allowed_origins,
                listen_host=s.host,
                tls=s.tls.edge(),
            )
            await self.edge.start()
        except BaseException:
            await self.stop()
            raise
        for child in (self.nats, *self.children):
            self._watchers.append(asyncio.create_task(self._watch(child), name=f"watch-{child.name}"))
        self._watchers.append(asyncio.create_task(self._watch_edge(self.edge), name="watch-envoy"))

    def ready(self) -> dict[str, Any]:
        """The run's one JSON line."""
        assert self.edge is not None
        return {
            "url": self.edge.url,
            "grpc": self.edge.url.split("://", 1)[1],
            "nats": self.nats_url,
            "replayer": _entry(self.replayer),
            "gateways": [_entry(g) for g in self.gateways],
            "store": _entry(self.store) if self.store else None,
            "admin": self.edge.admin_url,
        }

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Envoy, the gateways, the store, the replayer, then nats-server; safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        if self.edge is not None:
            await self.edge.stop()
        await asyncio.gather(*(self._terminate(g) for g in self.gateways))
        if self.store is not None:
            await self._terminate(self.store)
        await self._terminate(self.replayer)
        await self._terminate(self.nats)
        shutil.rmtree(self._store_dir, ignore_errors=True)
        self._stopped.set()

    # -- one child --------------------------------------------------------------------------------
    async def _start(self, child: _Child) -> None:
        argv = [*_die_with_parent(), *child.argv(child)]
        try:
            child.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the role's log goes to the run's stderr
                env=child.env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ClusterError(f"cannot start {child.name}: {exc}") from exc
        try:
            await asyncio.wait_for(self._wait_ready(child), START_TIMEOUT_SECONDS)
        except TimeoutError:
            raise ClusterError(f"{child.name} was not ready within {START_TIMEOUT_SECONDS:g} s") from None
        log.info("cluster child ready", extra={"child": child.name, "pid": child.pid, "port": child.port})

    async def _wait_ready(self, child: _Child) -> None:
        process = child.process
        assert process is not None and process.stdout is not None
        if not child.ready_line:
            assert child.probe is not None
            while not await asyncio.to_thread(child.probe):
                if process.returncode is not None:
                    raise ClusterError(f"{child.name} exited with code {process.returncode} while starting")
                await asyncio.sleep(0.05)
            child.drain = asyncio.create_task(_drain(process.stdout))
            return
        while True:
            line = await process.stdout.readline()
            if not line:
                code = await process.wait()
                raise ClusterError(f"{child.name} exited with code {code} while starting (its log is above)")
            text = line.decode(errors="replace").strip()
            if text.startswith("{") and '"listening"' in text:
                ready = json.loads(text)
                child.port = int(ready["listening"].rsplit(":", 1)[1])
                child.metrics_port = int(ready.get("metrics_port", -1))
                child.book_port = int(ready.get("book_port", -1))
                child.drain = asyncio.create_task(_drain(process.stdout))
                return

    async def _watch(self, child: _Child) -> None:
        """Restarts ``child`` whenever it exits, until it crash-loops (then the run stops)."""
        delay = RESTART_BACKOFF_SECONDS[0]
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            now = time.monotonic()
            child.restarts.append(now)
            while child.restarts and child.restarts[0] < now - RESTART_WINDOW_SECONDS:
                child.restarts.popleft()
            if len(child.restarts) > MAX_RESTARTS:
                self.failed = f"{child.name} exited {len(child.restarts)} times within {RESTART_WINDOW_SECONDS:g} s (last exit code {code})"
                log.error("cluster stops: %s", self.failed)
                asyncio.get_running_loop().create_task(self.stop())
                return
            log.warning("%s exited with code %s; restarting on port %d in %.1f s", child.name, code, child.port, delay)
            await asyncio.sleep(delay)
            try:
                await self._start(child)
                delay = RESTART_BACKOFF_SECONDS[0]
            except ClusterError as exc:
                log.error("restarting %s failed: %s", child.name, exc)
                delay = min(delay * 2, RESTART_BACKOFF_SECONDS[1])

    async def _watch_edge(self, edge: Edge) -> None:
        """Envoy is the run's one address: if it exits while the run is up, the run stops (exit 1).

        Not restarted like a role: its port is the one clients hold, and a second Envoy that cannot
        bind it would hide the failure; a supervisor above the run (systemd, Kubernetes) restarts
        the whole run instead, as it does for ``serve``.
        """
        pid = edge.pid
        code = await edge.wait_exited()
        if self._stopping:
            return
        self.failed = f"envoy (pid {pid}) exited with code {code}"
        log.error("cluster stops: %s", self.failed)
        asyncio.get_running_loop().create_task(self.stop())

    async def _terminate(self, child: _Child) -> None:
        process = child.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("%s ignored SIGTERM; killing it", child.name)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if child.drain is not None:
            child.drain.cancel()


def _entry(child: _Child) -> dict[str, int]:
    entry = {"pid": child.pid, "port": child.port, "metrics_port": child.metrics_port}
    if child.book_port >= 0:
        entry["book_port"] = child.book_port
    return entry


async def _drain(stream: asyncio.StreamReader) -> None:
    """Reads a child's stdout after its ready line so it never blocks on a full pipe."""
    while await stream.readline():
        pass


async def run_cluster(spec: ClusterSpec, *, page_token: str | None = None) -> int:
    """Runs the cluster until SIGTERM/SIGINT (or a crash-looping child); prints the JSON line."""
    cluster = Cluster(spec)
    loop = asyncio.get_running_loop()
    on_stop_signals(lambda _: loop.create_task(cluster.stop()))
    await cluster.start()
    print_ready_line(cluster.ready())
    assert cluster.edge is not None
    page = cluster.edge.url if page_token is None else cluster.edge.page_url(page_token)
    print(f"mbostream cluster is up: open {page} (UI, gRPC-Web and gRPC on one origin); Ctrl-C stops", flush=True)
    await cluster.wait_stopped()
    return EXIT_CRASH_LOOP if cluster.failed else 0


def spec_flags(pairs: Sequence[tuple[str, object | None]]) -> tuple[str, ...]:
    """``("--flag", value)`` pairs as arguments: None is left out, True is the bare flag."""
    out: list[str] = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        out.extend([flag] if value is True else [flag, str(value)])
    return tuple(out)
