"""Application wiring: data → market → hub → {gRPC services, storage, metrics}, and shutdown.

Start-up: resolve the data (the generated sample when no file is given), build the market, hub and
replayer, start gRPC (health NOT_SERVING), start the replay, and flip health to SERVING once the
first data is applied. Shutdown, on the first SIGTERM/SIGINT: health NOT_SERVING → stop the
replay → end every stream gracefully → ``stop(grace)`` on every gRPC server (stop accepting, let RPCs finish
within the grace period) → stop sinks → exit 0. A second signal exits at once. A background task
that fails (the replay, the book ticker) takes the same shutdown path, and the process exits 2 for
an mbostream error (a data file found bad mid-replay) or 1 for anything else, never 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from mbostream.config import SOURCES, Settings, read_tls_files
from mbostream_core.dbn import DbnReader, verify_framing
from mbostream.errors import AddressInUseError, ConfigError, MbostreamError
from mbostream.feed import Publisher
from mbostream.hub import Hub, Sink
from mbostream.lifecycle import on_stop_signals, print_ready_line
from mbostream_core.market import Market
from mbostream.metrics import METRICS
from mbostream.replay import Replayer, ReplayState
from mbostream.server import market_data, replay_control
from mbostream.server.wire import ProtobufBookEncoder, ProtobufEventEncoder
from mbostream.server.interceptors import ErrorMappingInterceptor, quiet_client_disconnects
from mbostream.server.native_books import NativeBookTransport
from mbostream_core.synth import ensure_sample
from mbostream_core.v1 import market_data_pb2, replay_pb2

if TYPE_CHECKING:
    from mbostream.edge.supervisor import Edge

log = logging.getLogger(__name__)

#: Exit codes of a server that stopped (the command line's convention: 2 is bad input or settings).
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2

SERVICE_NAMES = (
    market_data_pb2.DESCRIPTOR.services_by_name["MarketDataService"].full_name,
    replay_pb2.DESCRIPTOR.services_by_name["ReplayService"].full_name,
)
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # SO_REUSEPORT, so that the process's ``listeners`` gRPC servers share the one port, the kernel
    # spreading new connections over their accept queues. Another process cannot join them: start-up
    # first probes the port with a bind that does not set SO_REUSEPORT (:func:`_check_port_free`),
    # and that bind fails while any socket is bound to it, so a second server on an occupied port is
    # an error, never a silent split of the clients between two replays.
    ("grpc.so_reuseport", 1),
]


def _checked_files(files: list[str]) -> tuple[dict[int, str], list[str]]:
    """Every file's symbols and dataset, once each file was checked as far as can be before serving.

    Metadata, schema and readability always; the record framing of plain files and the zstd
    framing of compressed ones (:func:`~mbostream_core.dbn.verify_framing`). Raises the DataFileError of
    the first bad file.
    """
    symbols: dict[int, str] = {}
    datasets = []
    for path in files:
        with DbnReader(path) as reader:
            symbols.update(reader.info.symbols)
            datasets.append(reader.info.dataset)
        verify_framing(path)
    return symbols, datasets


def _setting_names(setting: str) -> str:
    return " / ".join(SOURCES[setting])


def _check_port_free(setting: str, host: str, port: int) -> None:
    """Raises AddressInUseError when another process listens on ``host:port`` (0: any free port).

    A probe bind with the listeners' own options (SO_REUSEADDR, never SO_REUSEPORT) says so
    before gRPC tries: gRPC's own bind failure is a generic error and a line of C logging.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gRPC reports an unresolvable host itself
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(_setting_names(setting), host, port) from None


class Feed(Protocol):
    """What feeds the market and the hub: the files' :class:`Replayer`, or a gateway's bus ingest."""

    #: Set once the first data is applied (health turns SERVING then).
    loaded: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def _server_credentials(tls: tuple[bytes, bytes, bytes | None] | None) -> grpc.ServerCredentials | None:
    """TLS for the gRPC listeners when a certificate is configured (mTLS with a client CA); None:
    plaintext. ``tls``: :func:`~mbostream.config.read_tls_files`."""
    if tls is None:
        return None
    chain, key, client_ca = tls
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None)


class App:
    """One running mbostream server.

    ``serve`` runs it as it is: the files replayed into the local hub. The bus roles
    (:mod:`mbostream.server.roles`) change what it is fed from and by, and where it publishes,
    through the hooks :meth:`_open_source`, :meth:`_publisher`, :meth:`_make_feed`,
    :meth:`_handlers`, :meth:`_background` and :meth:`_close_source`.
    """

    def __init__(self, settings: Settings, *, sinks: list[Sink] | None = None) -> None:
        self.settings = settings
        self.extra_sinks = sinks or []
        self.port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        #: The gRPC servers on the one port (``listeners`` of them), once listening.
        self.servers: list[grpc_aio.Server] = []
        #: StreamBook on the native transport (``book_port``), once listening; its port.
        self.books: NativeBookTransport | None = None
        self.book_port = -1
        self._started_sinks: list[Sink] = []
        #: The metrics HTTP server and the storage metrics' unregistering, once started.
        self._httpd: WSGIServer | None = None
        self._unregister_storage_metrics: Callable[[], None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        #: What the process should exit with once stopped: 0 unless a background task failed.
        self.exit_code = EXIT_OK

    def _data_files(self) -> list[str]:
        s = self.settings
        if s.files:
            return list(s.files)
        path = ensure_sample(s.sample_records, s.sample_instruments, s.sample_seed)
        log.info("serving the generated sample", extra={"file": str(path)})
        return [str(path)]

    async def _open_source(self) -> tuple[list[str], dict[int, str], str, str]:
        """``(files, symbols, dataset, epoch)`` of the data this server will serve."""
        files = await asyncio.to_thread(self._data_files)
        symbols, datasets = await asyncio.to_thread(_checked_files, files)
        return files, symbols, datasets[0], secrets.token_hex(8)  # a new run: positions restart with it

    def _publisher(self) -> Publisher:
        """Where the replay publishes its batches: the local hub."""
        return self.hub

    def _make_feed(self, files: list[str]) -> Feed:
        """The replayer of the files, publishing to :meth:`_publisher`."""
        s = self.settings
        self.replayer = Replayer(
            files,
            self.market,
            self._publisher(),
            mode=s.pacing,
            rate=s.rate,
            speed=s.speed,
            loop=s.loop,
            batch_records=s.batch_records,
        )
        METRICS.replay_running.set_function(lambda: self.replayer.state is ReplayState.RUNNING)
        return self.replayer

    def _handlers(self, dataset: str) -> tuple[grpc.GenericRpcHandler, ...]:
        """The gRPC services besides health and reflection."""
        self.service = market_data.MarketDataService(self.market, self.hub, dataset)
        return (
            market_data.handler(self.service),
            replay_control.handler(replay_control.ReplayControlService(self.replayer, self.settings.control_token, self.hub.epoch)),
        )

    def _background(self) -> list[tuple[str, Any]]:
        """Extra ``(name, coroutine)`` tasks that run with the feed (a failure stops the server)."""
        return []

    async def _close_source(self) -> None:
        """Releases what :meth:`_open_source` opened (the bus connection), after everything stopped."""

    async def start(self) -> None:
        s = self.settings
        files, symbols, dataset, epoch = await self._open_source()
        self.market = Market(symbols)
        hub = Hub(
            self.market,
            event_encoder=ProtobufEventEncoder(epoch),
            book_encoder=ProtobufBookEncoder(),
            replay_buffer_records=s.replay_buffer_records,
            subscriber_buffer_batches=s.subscriber_buffer_batches,
            max_streams=s.max_streams,
            max_streams_per_peer=s.max_streams_per_peer,
            book_interval=s.book_interval_ms / 1000.0,
            book_interval_max=s.book_interval_max_ms / 1000.0,
            book_cpu_target=s.book_cpu_target,
            epoch=epoch,
        )
        self.hub = hub
        if s.store:
            self.extra_sinks.append(self._storage_sink())
        self.hub.sinks.extend(self.extra_sinks)
        try:
            self.feed = self._make_feed(files)
            await self._listen(dataset)
        except BaseException:
            await self._abandon_start()
            raise
        self._tasks = [
            asyncio.create_task(self.feed.run(), name="replay"),
            asyncio.create_task(hub.run_ticker(), name="book-ticker"),
            asyncio.create_task(self._serving_when_loaded(), name="health"),
            *(asyncio.create_task(coro, name=name) for name, coro in self._background()),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        log.info(
            "mbostream listening",
            extra={"grpc": f"{s.host}:{self.port}", "metrics_port": self.metrics_port, "files": files},
        )

    async def _listen(self, dataset: str) -> None:
        """gRPC (health NOT_SERVING), then metrics, then the sinks (the storage opens its spool).

        ``listeners`` gRPC servers share the port. grpc.aio admits one new call per server at a
        time (the next is requested once the loop has run the last one's admission), and while the
        loop is busy serving streams each admission waits its turn, so one server admitted about 15
        new streams a second under load and a crowd of 1,000 clients waited most of a minute
        (docs/performance.md). Each server has its own accept queue and its own call in flight.
        """
        s = self.settings
        quiet_client_disconnects()
        self.health = HealthServicer()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        handlers = self._handlers(dataset)
        _check_port_free("port", s.host, s.port)
        # Read once, for the gRPC listeners and the book port alike (the same bytes even if the
        # files are replaced while the server starts).
        tls = read_tls_files(s)
        credentials = _server_credentials(tls)
        port = s.port
        for _ in range(s.listeners):
            server = grpc_aio.server(interceptors=[ErrorMappingInterceptor()], options=_GRPC_OPTIONS)
            self.servers.append(server)
            server.add_generic_rpc_handlers(handlers)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
            address = f"{s.host}:{port}"  # the first listener picks the port when it is 0
            try:
                port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
            except RuntimeError as exc:  # grpc's "Failed to bind": the port was taken since, or a bad host
                raise ConfigError(_setting_names("port"), f"cannot listen on {s.host}:{s.port} ({exc})") from None
        self.port = port
        for server in self.servers:
            await server.start()
        if s.book_port >= 0:
            self._listen_books(s.host, s.book_port, tls)
        if s.metrics_port >= 0:
            _check_port_free("metrics_port", s.host, s.metrics_port)
            try:
                httpd, _ = start_http_server(s.metrics_port, addr=s.host)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(_setting_names("metrics_port"), s.host, s.metrics_port) from None
                reason = f"cannot listen on {s.host}:{s.metrics_port} ({exc.strerror})"
                raise ConfigError(_setting_names("metrics_port"), reason) from None
            self.metrics_port = httpd.server_port
            self._httpd = httpd
        for sink in self.extra_sinks:
            await sink.start()
            self._started_sinks.append(sink)

    def _listen_books(self, host: str, port: int, tls: tuple[bytes, bytes, bytes | None] | None) -> None:
        """StreamBook on the native transport (mbostream.server.native_books), on ``book_port``,
        with the gRPC listeners' TLS (``tls``: :func:`~mbostream.config.read_tls_files`)."""
        _check_port_free("book_port", host, port)
        s = self.settings
        self.books = NativeBookTransport(lambda: self.service, host, port, tls, threads=s.book_threads, realtime_priority=s.book_thread_priority)
        try:
            self.books.start()
        except PermissionError as exc:  # SCHED_FIFO refused: no CAP_SYS_NICE, RLIMIT_RTPRIO too low
            self.books = None
            raise ConfigError(_setting_names("book_thread_priority"), str(exc)) from None
        except ValueError as exc:  # a certificate or key the gRPC listeners took but rustls refuses
            self.books = None
            raise ConfigError(_setting_names("tls_cert_file"), f"the native book port cannot use it: {exc}") from None
        except OSError as exc:
            self.books = None
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(_setting_names("book_port"), host, port) from None
            raise ConfigError(_setting_names("book_port"), f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self.book_port = self.books.port

    async def _abandon_start(self) -> None:
        """Undoes a start that failed half-way (a port taken, the spool locked): nothing is left
        listening, running or registered, and no gRPC server is left for the garbage collector to
        stop after the event loop is closed."""
        await asyncio.gather(*(server.stop(None) for server in self.servers))
        if self.books is not None:
            await self.books.stop(0)
        for sink in self._started_sinks:
            await sink.stop(0)
        self._close_metrics()
        await self._close_source()

    def _close_metrics(self) -> None:
        """Stops serving /metrics and unregisters the storage metrics (each once, if started)."""
        unregister, self._unregister_storage_metrics = self._unregister_storage_metrics, None
        if unregister is not None:
            unregister()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def _storage_sink(self) -> Any:
        from mbostream.storage.prometheus import register_storage_metrics
        from mbostream.storage.sink import StorageSink

        levels = self.settings.storage.depth_levels
        market = self.market
        sink = StorageSink(
            self.settings.storage,
            depth_source=lambda: market.depth_table(levels),
            symbols=market.symbol,
        )
        self._unregister_storage_metrics = register_storage_metrics(sink.metrics)
        return sink

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A background task that fails stops the server, which then exits non-zero (see serve).

        One error line says which task and why: an mbostream error (a data file that turns out bad
        mid-replay) is a message for the operator, exit 2; anything else is a bug, exit 1, and the
        line carries its traceback.
        """
        if task.cancelled() or self._stopping or task.exception() is None:
            return
        exc = task.exception()
        expected = isinstance(exc, MbostreamError)
        self.exit_code = EXIT_BAD_INPUT if expected else EXIT_FAILED
        log.error(
            "%s failed: %s; the server stops (exit %d)",
            task.get_name(),
            exc if expected else repr(exc),
            self.exit_code,
            exc_info=None if expected else exc,
            extra={"task": task.get_name(), "exit_code": self.exit_code},
        )
        asyncio.get_running_loop().create_task(self.shutdown())

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        METRICS.serving.set(status == health_pb2.HealthCheckResponse.SERVING)

    async def _serving_when_loaded(self) -> None:
        await self.feed.loaded.wait()
        if not self._stopping:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"position": self.hub.position})

    async def shutdown(self) -> None:
        """Graceful shutdown in the documented order; safe to call more than once."""
        if self._stopping:
            return
        self._stopping = True
        s = self.settings
        log.info("shutting down", extra={"grace_seconds": s.grace_seconds})
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.feed.stop()
        self.hub.close()
        await asyncio.gather(
            *(server.stop(s.grace_seconds) for server in self.servers),
            *([self.books.stop(s.grace_seconds)] if self.books is not None else []),
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.extra_sinks:
            await sink.stop(s.grace_seconds)
        self._close_metrics()
        await self._close_source()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(
    settings: Settings,
    *,
    sinks: list[Sink] | None = None,
    ready_line: bool = True,
    static_dir: Path | None = None,
    with_edge: bool = False,
    page_token: str | None = None,
    app: App | None = None,
) -> int:
    """Runs a server (and, ``with_edge``, Envoy in front of it) until SIGTERM/SIGINT.

    ``page_token``: the operator token to hand to the web UI in the URL printed for it (a token
    this run made up; a configured one is never printed).
    ``app``: a server made by the caller (a bus role); by default the embedded replay of ``settings``.
    """
    app = app or App(settings, sinks=sinks)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(130)
        log.info("signal received", extra={"signal": signum.name})
        loop.create_task(app.shutdown())

    on_stop_signals(on_signal)
    if with_edge:  # one line naming the port before anything starts (Envoy binds it exclusively too)
        _check_port_free("edge_port", settings.host, settings.edge_port)
    await app.start()
    edge = None
    ready: dict[str, Any] = {"listening": f"{settings.host}:{app.port}", "metrics_port": app.metrics_port}
    if app.books is not None:
        ready["book_port"] = app.book_port
    if with_edge:
        from mbostream.edge.config import EdgeTls
        from mbostream.edge.supervisor import Edge

        origins = tuple(o.strip() for o in settings.allowed_origins.split(",") if o.strip())
        edge = Edge(
            listen_port=settings.edge_port,
            upstream_port=app.port,
            static_dir=static_dir,
            allowed_origins=origins,
            listen_host=settings.host,
            upstream_host="127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host,
            tls=EdgeTls(
                cert_file=settings.edge_tls_cert_file,
                key_file=settings.edge_tls_key_file,
                upstream_cert_file=settings.tls_cert_file,
                upstream_client_cert_file=settings.edge_tls_client_cert_file,
                upstream_client_key_file=settings.edge_tls_client_key_file,
            ),
            book_port=app.book_port if app.books is not None else None,
        )
        try:
            await edge.start()
        except BaseException:
            await app.shutdown()
            raise
        ready["url"] = edge.url
    if ready_line:
        print_ready_line(ready)
    if edge is not None:
        page = edge.url if page_token is None else edge.page_url(page_token)
        print(f"mbostream is up: open {page} (UI, gRPC-Web and gRPC on one origin); Ctrl-C stops", flush=True)
        await _stop_when_the_edge_exits(app, edge)
    await app.wait_stopped()
    if edge is not None:
        await edge.stop()
    return app.exit_code


async def _stop_when_the_edge_exits(app: App, edge: Edge) -> None:
    """Returns once the server stops; if Envoy exits first, the URL printed for it is dead: one
    error line, and the server stops with exit 1 like any other failed part of it."""
    pid = edge.pid
    exited = asyncio.ensure_future(edge.wait_exited())
    stopped = asyncio.ensure_future(app.wait_stopped())
    try:
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done() and not app._stopping:
            app.exit_code = EXIT_FAILED
            log.error(
                "the edge failed: envoy (pid %d) exited with code %d; the server stops (exit %d)",
                pid, exited.result(), app.exit_code, extra={"task": "edge", "exit_code": app.exit_code},
            )  # fmt: skip
            await app.shutdown()
    finally:
        exited.cancel()
        stopped.cancel()
