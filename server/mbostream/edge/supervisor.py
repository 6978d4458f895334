"""Edge supervisor room: :class:`Edge`, one Envoy child process from start to stop.

Envoy runs in its own session (so a Ctrl-C reaches the launcher, which chooses the stop order)
and also ends if the launcher dies; it is ready once its admin interface reports the listener's
bound port and ``/ready`` says LIVE. Its rendered config and admin address live in a private
``mbostream-edge-*`` folder under the system temp dir only until Envoy has read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from mbostream.edge.admin import AdminClient
from mbostream.edge.binary import find_envoy
from mbostream.edge.config import DEFAULT_TEMPLATE, EdgeConfig, EdgeTls
from mbostream.edge.envoy_log import ENVOY_LEVELS, LOG_FORMAT, EnvoyLogForwarder
from mbostream.edge.errors import EdgeError, EdgeStartError
from mbostream.edge.render import LISTENER_NAME, UPSTREAM_CLUSTER, render_config
from mbostream.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_SECONDS: Final = 15.0
DEFAULT_STOP_GRACE_SECONDS: Final = 5.0
RUNTIME_DIR_PREFIX: Final = "mbostream-edge-"
_POLL_SECONDS: Final = 0.05
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


@dataclass
class _Running:
    """One Envoy child process and what was learnt about it while it started."""

    process: asyncio.subprocess.Process
    runtime_dir: Path
    log: EnvoyLogForwarder = field(default_factory=EnvoyLogForwarder)
    log_task: asyncio.Task[None] | None = None
    admin: AdminClient | None = None
    listen_port: int = 0


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
        upstream_ports: Sequence[int] = (),
        replayer_port: int | None = None,
        tls: EdgeTls | None = None,
        book_port: int | None = None,
        book_ports: Sequence[int] = (),
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
            upstream_ports=tuple(upstream_ports),
            replayer_port=replayer_port,
            tls=tls or EdgeTls(),
            book_port=book_port,
            book_ports=tuple(book_ports),
        )
        if concurrency < 1:
            raise ConfigError("concurrency", "must be at least 1 worker thread")
        if log_level not in ENVOY_LEVELS:
            raise ConfigError("log_level", f"{log_level!r} is not one of {', '.join(ENVOY_LEVELS)}")
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
        scheme = "https" if self.config.tls.downstream else "http"
        return f"{scheme}://{host}:{self.port}"

    def page_url(self, token: str) -> str:
        """The UI's URL handing it an operator token in the fragment (``…/#token=…``), as Jupyter does.

        A fragment is never sent to a server, so the token stays out of Envoy's and any proxy's
        logs; the page takes it into memory and drops it from the address bar.
        """
        return f"{self.url}/#token={urllib.parse.quote(token, safe='')}"

    @property
    def admin_url(self) -> str:
        """Envoy's admin interface (loopback only); Prometheus stats are at ``/stats/prometheus``."""
        return self._admin().url

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
        not ready within ``timeout`` seconds; Envoy is stopped and its folder removed before any
        error is raised.
        """
        if self._running is not None:
            raise EdgeError("the edge is already started")
        binary = self._envoy or find_envoy()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise EdgeStartError(f"cannot run {binary}: not an executable file", ())
        runtime_dir = Path(tempfile.mkdtemp(prefix=RUNTIME_DIR_PREFIX))
        try:
            running = await self._launch(binary, runtime_dir)
        except BaseException:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        self._running = running
        try:
            await asyncio.wait_for(self._wait_ready(running), timeout)
        except TimeoutError:
            await self.stop()
            raise EdgeStartError(f"not ready after {timeout:g} s", running.log.tail) from None
        except BaseException:
            await self.stop()
            raise
        # Envoy has read its config and written its admin address: nothing needs the folder any
        # more, and without it a launcher killed later (even by SIGKILL) leaves nothing behind.
        shutil.rmtree(runtime_dir, ignore_errors=True)
        log.info("envoy ready", extra={"pid": running.process.pid, "url": self.url, "admin": self.admin_url})

    async def stop(self, *, grace: float = DEFAULT_STOP_GRACE_SECONDS) -> None:
        """Stops Envoy: SIGTERM, then SIGKILL after ``grace`` seconds; removes its runtime folder."""
        running, self._running = self._running, None
        if running is None:
            return
        process = running.process
        running.log.stopping = True
        try:
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
        finally:
            shutil.rmtree(running.runtime_dir, ignore_errors=True)
        log.info("envoy stopped", extra={"pid": process.pid, "exit_code": process.returncode})

    async def wait_exited(self) -> int:
        """Waits until the running Envoy exits (on :meth:`stop`, or by itself) and returns its exit code."""
        return await self._require_running().process.wait()

    async def upstream_healthy(self) -> bool:
        """True when Envoy's gRPC health check currently passes for the server."""
        host = f"{self.config.upstream_host}:{self.config.upstream_port}"
        return await self._admin().host_healthy(UPSTREAM_CLUSTER, host)

    async def wait_upstream_healthy(self, *, timeout: float) -> None:
        """Waits until Envoy's gRPC health check passes; raises TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not await self.upstream_healthy():
                await asyncio.sleep(_POLL_SECONDS)

    async def prometheus_stats(self) -> str:
        """Envoy's stats in the Prometheus text format."""
        return await self._admin().prometheus_stats()

    def _require_running(self) -> _Running:
        if self._running is None or not self._running.listen_port:
            raise EdgeError("the edge is not running")
        return self._running

    def _admin(self) -> AdminClient:
        admin = self._require_running().admin
        assert admin is not None, "a running edge has an admin address"
        return admin

    async def _launch(self, binary: Path, runtime_dir: Path) -> _Running:
        """Writes the rendered config into ``runtime_dir`` and starts Envoy on it, forwarding its log."""
        config_path = runtime_dir / "envoy.yaml"
        config_path.write_text(render_config(self.config))
        command = [
            *_die_with_parent(),
            str(binary),
            "--config-path",
            str(config_path),
            "--admin-address-path",
            str(runtime_dir / "admin-address"),
            "--disable-hot-restart",
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
            "--log-format",
            LOG_FORMAT,
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
            raise EdgeStartError(f"cannot run {binary}: {exc}", ()) from exc
        running = _Running(process=process, runtime_dir=runtime_dir)
        assert process.stderr is not None
        running.log_task = asyncio.create_task(running.log.forward(process.stderr, process.pid), name="envoy-log")
        log.info("envoy starting", extra={"pid": process.pid, "config": str(config_path)})
        return running

    async def _wait_ready(self, running: _Running) -> None:
        admin_address_path = running.runtime_dir / "admin-address"
        while True:
            if running.process.returncode is not None:
                if running.log_task is not None:
                    # Let the forwarder read Envoy's last words, which say why it exited.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(running.log_task), 1.0)
                raise EdgeStartError(f"exited with code {running.process.returncode}", running.log.tail)
            if running.admin is None and admin_address_path.is_file():
                address = admin_address_path.read_text().strip()
                running.admin = AdminClient(address) if address else None
            if running.admin is not None:
                port = await running.admin.listener_port(LISTENER_NAME)
                # The socket is bound when the listener is created, but it accepts only once
                # initialisation (the cluster's first health check) is over: /ready says LIVE.
                if port and await running.admin.is_live():
                    running.listen_port = port
                    return
            await asyncio.sleep(_POLL_SECONDS)


def _die_with_parent() -> list[str]:
    """A prefix that makes Envoy get SIGTERM if its launcher dies without stopping it (even by SIGKILL).

    ``setpriv`` (util-linux, always on Debian) sets the parent-death signal and execs Envoy, so the
    child's PID stays Envoy's; where it is missing Envoy runs as is and only ``stop`` ends it.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv and sys.platform.startswith("linux") else []
