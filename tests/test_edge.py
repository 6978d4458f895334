"""Edge checks: the rendered Envoy config validates, and a real Envoy in front of the real server
(``mbostream serve``) serves native gRPC, gRPC-Web with CORS, the operator token, gRPC health,
long quiet streams, reflection for grpcurl and the UI, all on one port.

One test needs a server that turns NOT_SERVING on demand; it uses a small grpc.aio server that
only registers the standard health service. Real servers come from ``server_harness.ServeProcess``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import os
import re
import select
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
SERVER_DIR: Final = REPO_ROOT / "server"
if str(SERVER_DIR) not in sys.path:
    sys.path.insert(0, str(SERVER_DIR))

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
import yaml  # noqa: E402

from mbostream.edge.binary import find_envoy, validate_config  # noqa: E402
from mbostream.edge.config import EdgeConfig  # noqa: E402
from mbostream.edge.errors import EdgeError, EdgeStartError, EnvoyNotFoundError  # noqa: E402
from mbostream.edge.render import render_config  # noqa: E402
from mbostream.edge.supervisor import Edge  # noqa: E402
from mbostream.errors import ConfigError  # noqa: E402
from server_harness import ServeProcess, listening_sockets  # noqa: E402
from mbostream_core.v1 import book_pb2, market_data_pb2, market_data_pb2_grpc, replay_pb2, replay_pb2_grpc  # noqa: E402

from server_harness import TOKEN  # noqa: E402
AUTH: Final = (("authorization", f"Bearer {TOKEN}"),)
ALLOWED_ORIGIN: Final = "http://localhost:5173"
FOREIGN_ORIGIN: Final = "http://evil.example"
SCENARIO_TIMEOUT_SECONDS: Final = 60
RPC_TIMEOUT_SECONDS: Final = 10
HTTP_TIMEOUT_SECONDS: Final = 10
SERVER_START_TIMEOUT_SECONDS: Final = 120
SERVER_STOP_GRACE_SECONDS: Final = 20
#: Upper bound for one start or stop of an edge or of the test's own gRPC server: a hang guard,
#: generous for a loaded 2-core machine (an Edge gives up on a start after 15 s and kills Envoy 5 s
#: into a stop), and below SCENARIO_TIMEOUT_SECONDS so a hang fails at the call that hung.
EDGE_CALL_TIMEOUT_SECONDS: Final = 45
# Envoy's default route timeout is 15 s: a stream older than that proves `timeout: 0s` is in force.
QUIET_STREAM_SECONDS: Final = 16.5
GRPC_STATUS_OK: Final = 0
GRPC_STATUS_UNAUTHENTICATED: Final = 16
GRPC_WEB_TRAILER_FLAG: Final = 0x80
BOOK_DEPTH: Final = 5
RUNTIME_FOLDERS: Final = "mbostream-edge-*"
UPSTREAM_REQUESTS: Final = 'envoy_cluster_upstream_rq_total{envoy_cluster_name="mbostream_grpc"}'

T = TypeVar("T")


def envoy_or_skip() -> Path:
    """The Envoy binary, or a skip that says how to install it."""
    try:
        return find_envoy()
    except EnvoyNotFoundError as exc:
        pytest.skip(str(exc))


def server_or_skip() -> None:
    """Skips unless the real gRPC server (``mbostream serve``) is installed."""
    if importlib.util.find_spec("mbostream.server") is None or importlib.util.find_spec("mbostream.server.app") is None:
        pytest.skip("the gRPC server (mbostream serve, package mbostream.server) is not installed")


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The real server on a free port, replaying the generated sample in a loop."""
    server_or_skip()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    server = ServeProcess("--rate", "5000", "--loop", log_path=log_path).start()
    try:
        yield server
    finally:
        server.stop()


def _run(scenario: Callable[[], Awaitable[None]], timeout: float = SCENARIO_TIMEOUT_SECONDS) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), timeout)

    asyncio.run(bounded())


async def _bounded(call: Awaitable[T], timeout: float = EDGE_CALL_TIMEOUT_SECONDS) -> T:
    """``await call``, failing with TimeoutError after ``timeout`` seconds."""
    return await asyncio.wait_for(call, timeout)


@contextlib.asynccontextmanager
async def _running(edge: Edge) -> AsyncIterator[Edge]:
    """``async with edge``, its start and its stop each bounded."""
    await _bounded(edge.start())
    try:
        yield edge
    finally:
        await _bounded(edge.stop())


def _write_ui(static_dir: Path) -> None:
    (static_dir / "assets").mkdir(parents=True)
    (static_dir / "index.html").write_text('<!doctype html><script type="module" src="/assets/app-1a2b.js"></script>')
    # Larger than Envoy's default 4 KiB direct-response limit, which the edge must raise.
    (static_dir / "assets" / "app-1a2b.js").write_text("console.log('mbostream');\n" * 2000)


@contextlib.asynccontextmanager
async def _edge(upstream_port: int, tmp_path: Path, book_port: int | None = None) -> AsyncIterator[Edge]:
    static_dir = tmp_path / "dist"
    if not static_dir.exists():
        _write_ui(static_dir)
    edge = Edge(
        listen_port=0,
        upstream_port=upstream_port,
        static_dir=static_dir,
        allowed_origins=[ALLOWED_ORIGIN],
        envoy=envoy_or_skip(),
        book_port=book_port,
    )
    async with _running(edge):
        yield edge


@contextlib.asynccontextmanager
async def _channel(edge: Edge) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}")
    try:
        yield channel
    finally:
        await _bounded(channel.close(), RPC_TIMEOUT_SECONDS)


async def _first_instrument(channel: grpc.aio.Channel) -> market_data_pb2.InstrumentInfo:
    stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
    listed = await stub.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT_SECONDS)
    assert listed.instruments, "the server lists no instrument"
    return listed.instruments[0]


def _book_request(info: market_data_pb2.InstrumentInfo, rate: float = 0) -> market_data_pb2.StreamBookRequest:
    selector = market_data_pb2.InstrumentSelector(instrument_id=info.instrument_id, publisher_id=info.publisher_id)
    return market_data_pb2.StreamBookRequest(instruments=[selector], depth=BOOK_DEPTH, max_updates_per_second=rate)


@dataclass
class _GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def grpc_status(self) -> int:
        """From the trailer frame, or from the headers of a trailers-only reply."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


def _grpc_web_frames(response: http.client.HTTPResponse, max_messages: int) -> Iterator[tuple[int, bytes]]:
    for _ in range(max_messages + 1):
        prefix = response.read(5)
        if len(prefix) < 5:
            return
        flag, length = struct.unpack(">BI", prefix)
        yield flag, response.read(length)


def _grpc_web_call(
    port: int, path: str, request: bytes, *, headers: dict[str, str] | None = None, max_messages: int = 100
) -> _GrpcWebReply:
    """One gRPC-Web call over HTTP/1.1, framed as a browser's; stops after ``max_messages``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        connection.request(
            "POST",
            path,
            body=struct.pack(">BI", 0, len(request)) + request,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **(headers or {})},
        )
        response = connection.getresponse()
        reply = _GrpcWebReply(response.status, {k.lower(): v for k, v in response.getheaders()}, [], {})
        for flag, payload in _grpc_web_frames(response, max_messages):
            if flag & GRPC_WEB_TRAILER_FLAG:
                for line in payload.decode().split("\r\n"):
                    key, _, value = line.partition(":")
                    if key:
                        reply.trailers[key.strip().lower()] = value.strip()
            else:
                reply.messages.append(payload)
                if len(reply.messages) == max_messages:
                    break
        return reply
    finally:
        connection.close()


def _http(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _preflight(port: int, origin: str) -> tuple[int, dict[str, str]]:
    """A browser's CORS preflight for a gRPC-Web call from ``origin``: status and headers."""
    status, headers, _ = _http(
        port,
        "OPTIONS",
        "/mbostream.v1.MarketDataService/StreamBook",
        {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,authorization",
        },
    )
    return status, headers


def _upstream_requests(prometheus_stats: str) -> int:
    """How many requests Envoy has sent to the gRPC server, from its Prometheus stats."""
    for line in prometheus_stats.splitlines():
        if line.startswith(UPSTREAM_REQUESTS + " "):
            return int(line.split()[-1])
    raise AssertionError(f"no {UPSTREAM_REQUESTS} in Envoy's stats")


def _runtime_folders(temp_dir: Path) -> list[Path]:
    """The edge's ``mbostream-edge-*`` folders under ``temp_dir``."""
    return sorted(temp_dir.glob(RUNTIME_FOLDERS))


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh system temp dir for this test (``tempfile.gettempdir()``), to see what the edge leaves there."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _assert_sane_book(book: book_pb2.BookSnapshot) -> None:
    assert book.bids or book.asks
    if book.bids and book.asks and not (book.crossed or book.locked):
        assert book.bids[0].price < book.asks[0].price


# --- the config ---------------------------------------------------------------------------------


def test_rendered_config_passes_envoy_validate(tmp_path: Path) -> None:
    envoy = envoy_or_skip()
    static_dir = tmp_path / "dist"
    _write_ui(static_dir)
    config = EdgeConfig(listen_port=8080, upstream_port=50051, static_dir=static_dir, allowed_origins=(ALLOWED_ORIGIN,))
    validate_config(render_config(config), envoy=envoy)


def test_config_without_a_built_ui_passes_envoy_validate(tmp_path: Path) -> None:
    envoy = envoy_or_skip()
    config = EdgeConfig(listen_port=8080, upstream_port=50051, static_dir=tmp_path / "missing", allowed_origins=("*",))
    validate_config(render_config(config), envoy=envoy)


def test_envoy_validate_rejects_a_broken_config() -> None:
    envoy = envoy_or_skip()
    with pytest.raises(EdgeError, match="rejected"):
        validate_config("static_resources: {listeners: [{name: 1, nonsense: true}]}\n", envoy=envoy)


def test_rendered_config_is_typed_v3_with_long_streams_and_a_loopback_admin() -> None:
    text = render_config(EdgeConfig(listen_port=8080, upstream_port=50051, static_dir=None))
    assert "${" not in text
    assert "envoy.api.v2" not in text
    assert "typed_config" in text
    assert "timeout: 0s" in text
    assert "stream_idle_timeout: 0s" in text
    admin_section = text.split("\nadmin:", 1)[1].split("\n\n", 1)[0]
    assert "address: 127.0.0.1," in admin_section
    filters = [line.split("name:")[1].strip() for line in text.splitlines() if "- name: envoy.filters.http." in line]
    assert filters == ["envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"listen_port": 70000}, "listen_port"),
        ({"admin_port": -1}, "admin_port"),
        ({"upstream_port": 0}, "upstream_port"),
        ({"allowed_origins": ("localhost:5173",)}, "allowed_origins"),
        ({"allowed_origins": ("http://localhost:5173/app",)}, "allowed_origins"),
        ({"template": Path("/nonexistent/envoy.yaml")}, "template"),
    ],
)
def test_bad_settings_are_rejected_by_name(overrides: dict[str, object], setting: str) -> None:
    settings: dict[str, object] = {"listen_port": 8080, "upstream_port": 50051, "static_dir": None, **overrides}
    with pytest.raises(ConfigError) as raised:
        EdgeConfig(**settings)  # type: ignore[arg-type]
    assert raised.value.setting == setting


def test_a_taken_port_fails_start_with_envoys_reason_and_leaves_nothing_running(tmp_path: Path) -> None:
    envoy = envoy_or_skip()

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            edge = Edge(listen_port=taken.getsockname()[1], upstream_port=50051, static_dir=None, envoy=envoy)
            with pytest.raises(EdgeStartError) as raised:
                await _bounded(edge.start())
        assert "exited with code" in str(raised.value)
        assert raised.value.log_tail, "the error carries Envoy's last log lines"
        assert edge.pid is None

    _run(scenario)


def test_a_second_edge_on_a_running_edges_port_fails_and_the_first_keeps_it(tmp_path: Path) -> None:
    """Envoy binds its listener with SO_REUSEPORT unless told not to: two edges (two ``mbostream
    run``) on one port both started, and the kernel spread browsers between two replays."""
    envoy = envoy_or_skip()

    async def scenario() -> None:
        async with _running(Edge(listen_port=0, upstream_port=50051, static_dir=None, envoy=envoy)) as first:
            second = Edge(listen_port=first.port, upstream_port=50052, static_dir=None, envoy=envoy)
            try:
                with pytest.raises(EdgeStartError) as raised:
                    await _bounded(second.start())
            finally:
                await _bounded(second.stop())  # started by mistake: stopped by its own PID here
            assert second.pid is None
            assert any("already in use" in line.lower() for line in raised.value.log_tail), raised.value.log_tail
            # The first edge keeps the port, alone, and answers on it (no UI built: 503).
            assert listening_sockets(first.port) == 1
            status, _, _ = await asyncio.to_thread(_http, first.port, "GET", "/")
            assert status == 503

    _run(scenario)


def test_envoy_dies_with_a_launcher_killed_without_stopping_it_and_leaves_no_folder(tmp_path: Path) -> None:
    envoy_or_skip()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, mbostream.edge.supervisor as e\n"
            "async def main():\n"
            "    edge = e.Edge(listen_port=0, upstream_port=50051, static_dir=None)\n"
            "    await edge.start()\n"
            "    print(edge.pid, flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=SERVER_DIR,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert launcher.stdout is not None
        ready, _, _ = select.select([launcher.stdout], [], [], SERVER_START_TIMEOUT_SECONDS)
        assert ready, "the launcher printed no Envoy pid"
        envoy_pid = int(launcher.stdout.readline())
        os.kill(envoy_pid, 0)
    finally:
        launcher.kill()
        launcher.wait(RPC_TIMEOUT_SECONDS)
    deadline = time.monotonic() + RPC_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(envoy_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(envoy_pid, signal.SIGKILL)
        pytest.fail("Envoy outlived its killed launcher")
    # Nothing removes a folder after a SIGKILL: the edge must not need one once Envoy is ready.
    assert _runtime_folders(tmp_path) == []


def test_a_missing_envoy_binary_fails_start_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        edge = Edge(listen_port=0, upstream_port=50051, static_dir=None, envoy=tmp_path / "no-envoy")
        with pytest.raises(EdgeStartError, match="cannot run"):
            await _bounded(edge.start())

    _run(scenario)


def test_a_running_or_stopped_edge_leaves_no_folder_in_the_temp_dir(temp_dir: Path) -> None:
    envoy = envoy_or_skip()

    async def scenario() -> None:
        async with _running(Edge(listen_port=0, upstream_port=50051, static_dir=None, envoy=envoy)) as edge:
            assert edge.pid is not None
            # Envoy has read its config and written its admin address: the folder is gone already.
            assert _runtime_folders(temp_dir) == []
        assert _runtime_folders(temp_dir) == []

    _run(scenario)


def test_a_failed_start_leaves_no_folder_in_the_temp_dir(temp_dir: Path, tmp_path: Path) -> None:
    envoy = envoy_or_skip()
    unfilled = tmp_path / "unfilled.template.yaml"
    unfilled.write_text("admin: {address: {socket_address: {address: 127.0.0.1, port_value: ${no_such_setting}}}}\n")

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            edge = Edge(listen_port=taken.getsockname()[1], upstream_port=50051, static_dir=None, envoy=envoy)
            with pytest.raises(EdgeStartError):
                await _bounded(edge.start())
        assert _runtime_folders(temp_dir) == []
        edge = Edge(listen_port=0, upstream_port=50051, static_dir=None, envoy=envoy, template=unfilled)
        with pytest.raises(KeyError, match="no_such_setting"):
            await _bounded(edge.start())
        assert _runtime_folders(temp_dir) == []
        assert edge.pid is None

    _run(scenario)


# --- Envoy in front of the real server ------------------------------------------------------------


def test_native_grpc_unary_and_stream_through_envoy(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge, _channel(edge) as channel:
            info = await _first_instrument(channel)
            stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
            call = stub.StreamBook(_book_request(info))
            received = [await asyncio.wait_for(call.read(), RPC_TIMEOUT_SECONDS) for _ in range(3)]
            call.cancel()
            assert all(isinstance(r, market_data_pb2.StreamBookResponse) for r in received)
            assert received[0].is_snapshot
            sequences = [r.book.replay_sequence for r in received]
            assert sequences == sorted(sequences)
            for reply in received:
                assert reply.book.instrument_id == info.instrument_id
                assert len(reply.book.bids) <= BOOK_DEPTH
                _assert_sane_book(reply.book)

    _run(scenario)


def test_grpc_web_unary_and_stream_through_envoy(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge:
            listed = await asyncio.to_thread(
                _grpc_web_call, edge.port, "/mbostream.v1.MarketDataService/ListInstruments", b""
            )
            assert listed.http_status == 200
            assert listed.headers["content-type"].startswith("application/grpc-web")
            assert listed.grpc_status == GRPC_STATUS_OK
            (message,) = listed.messages
            info = market_data_pb2.ListInstrumentsResponse.FromString(message).instruments[0]

            request = _book_request(info).SerializeToString()
            streamed = await asyncio.to_thread(
                _grpc_web_call, edge.port, "/mbostream.v1.MarketDataService/StreamBook", request, max_messages=3
            )
            replies = [market_data_pb2.StreamBookResponse.FromString(m) for m in streamed.messages]
            assert len(replies) == 3
            assert replies[0].is_snapshot and replies[0].ts_out > 0
            for reply in replies:
                _assert_sane_book(reply.book)

    _run(scenario)


def test_operator_token_passes_through_and_its_absence_is_visible_to_browsers(
    real_server: ServeProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge, _channel(edge) as channel:
            path = "/mbostream.v1.ReplayService/GetStatus"
            denied = await asyncio.to_thread(_grpc_web_call, edge.port, path, b"", headers={"origin": ALLOWED_ORIGIN})
            assert denied.grpc_status == GRPC_STATUS_UNAUTHENTICATED
            assert denied.grpc_message
            # A cross-origin page can read the status only if Envoy exposes it.
            assert denied.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
            exposed = {h.strip() for h in denied.headers["access-control-expose-headers"].split(",")}
            assert {"grpc-status", "grpc-message"} <= exposed

            allowed = await asyncio.to_thread(
                _grpc_web_call, edge.port, path, b"", headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert allowed.grpc_status == GRPC_STATUS_OK
            status = replay_pb2.GetStatusResponse.FromString(allowed.messages[0]).status
            assert status.state == replay_pb2.REPLAY_STATE_RUNNING

            stub = replay_pb2_grpc.ReplayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetStatus(replay_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_SECONDS)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.GetStatus(replay_pb2.GetStatusRequest(), metadata=AUTH, timeout=RPC_TIMEOUT_SECONDS)
            assert reply.status.state == replay_pb2.REPLAY_STATE_RUNNING

    _run(scenario)


def test_a_stream_older_than_envoys_default_timeout_survives_a_paused_replay(
    real_server: ServeProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge, _channel(edge) as channel:
            info = await _first_instrument(channel)
            replay = replay_pb2_grpc.ReplayServiceStub(channel)
            call = market_data_pb2_grpc.MarketDataServiceStub(channel).StreamBook(_book_request(info))
            first = await asyncio.wait_for(call.read(), RPC_TIMEOUT_SECONDS)
            assert isinstance(first, market_data_pb2.StreamBookResponse)
            await replay.Pause(replay_pb2.PauseRequest(), metadata=AUTH, timeout=RPC_TIMEOUT_SECONDS)
            try:
                await asyncio.sleep(QUIET_STREAM_SECONDS)
            finally:
                await replay.Resume(replay_pb2.ResumeRequest(), metadata=AUTH, timeout=RPC_TIMEOUT_SECONDS)
            # Updates sent before the pause took effect may be queued; what matters is that the
            # stream still delivers the books made after the resume.
            async with asyncio.timeout(RPC_TIMEOUT_SECONDS):
                while True:
                    later = await call.read()
                    assert isinstance(later, market_data_pb2.StreamBookResponse), f"the stream ended: {call.code()}"
                    if later.book.replay_sequence > first.book.replay_sequence and later.ts_out > first.ts_out + int(
                        QUIET_STREAM_SECONDS * 1e9
                    ):
                        break
            call.cancel()

    _run(scenario, timeout=SCENARIO_TIMEOUT_SECONDS + QUIET_STREAM_SECONDS)


def test_health_and_reflection_reach_the_server_through_envoy(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge, _channel(edge) as channel:
            await edge.wait_upstream_healthy(timeout=RPC_TIMEOUT_SECONDS)
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_SECONDS
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            grpcurl = shutil.which("grpcurl") or shutil.which(str(Path.home() / "go" / "bin" / "grpcurl"))
            if grpcurl:
                listed = await asyncio.to_thread(
                    subprocess.run,
                    [grpcurl, "-plaintext", f"127.0.0.1:{edge.port}", "list"],
                    capture_output=True,
                    text=True,
                    timeout=RPC_TIMEOUT_SECONDS,
                    check=False,
                )
                assert listed.returncode == 0, listed.stderr
                assert "mbostream.v1.MarketDataService" in listed.stdout.split()

    _run(scenario)


def test_cors_preflight_allows_configured_origins_only(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge:
            _, allowed = await asyncio.to_thread(_preflight, edge.port, ALLOWED_ORIGIN)
            assert allowed["access-control-allow-origin"] == ALLOWED_ORIGIN
            assert "authorization" in allowed["access-control-allow-headers"]
            assert "x-grpc-web" in allowed["access-control-allow-headers"]
            _, refused = await asyncio.to_thread(_preflight, edge.port, FOREIGN_ORIGIN)
            assert "access-control-allow-origin" not in refused

    _run(scenario)


def test_a_foreign_origins_preflight_is_refused_by_envoy_and_never_reaches_the_server(
    real_server: ServeProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge:
            before = _upstream_requests(await _bounded(edge.prometheus_stats(), RPC_TIMEOUT_SECONDS))
            status, headers = await asyncio.to_thread(_preflight, edge.port, FOREIGN_ORIGIN)
            assert "access-control-allow-origin" not in headers, "a browser would let the foreign page call"
            # Forwarded, the bare OPTIONS came back from the gRPC server as grpc-status 13.
            assert "grpc-status" not in headers, f"the preflight reached the server: {headers}"
            assert not headers.get("content-type", "").startswith("application/grpc")
            assert status < 500
            assert _upstream_requests(await _bounded(edge.prometheus_stats(), RPC_TIMEOUT_SECONDS)) == before

    _run(scenario)


def test_ui_files_are_served_on_the_same_origin(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge:
            static_dir = tmp_path / "dist"
            status, headers, body = await asyncio.to_thread(_http, edge.port, "GET", "/")
            assert status == 200
            assert headers["content-type"].startswith("text/html")
            assert body == (static_dir / "index.html").read_bytes()
            assert "default-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            status, headers, body = await asyncio.to_thread(_http, edge.port, "GET", "/assets/app-1a2b.js")
            assert status == 200
            assert headers["content-type"].startswith("text/javascript")
            assert "immutable" in headers["cache-control"]
            assert body == (static_dir / "assets" / "app-1a2b.js").read_bytes()
            status, _, _ = await asyncio.to_thread(_http, edge.port, "GET", "/assets/../../etc/passwd")
            assert status == 404

    _run(scenario)


def test_ui_responses_forbid_framing_and_send_no_referrer(real_server: ServeProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge:
            for path in ("/", "/index.html", "/assets/app-1a2b.js"):
                status, headers, _ = await asyncio.to_thread(_http, edge.port, "GET", path)
                assert status == 200, path
                assert headers.get("x-frame-options") == "DENY", path
                assert headers.get("referrer-policy") == "no-referrer", path
            _, headers, _ = await asyncio.to_thread(_http, edge.port, "GET", "/")
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
        # The page that says how to build a missing UI too.
        async with _running(
            Edge(listen_port=0, upstream_port=real_server.port, static_dir=None, envoy=envoy_or_skip())
        ) as unbuilt:
            status, headers, _ = await asyncio.to_thread(_http, unbuilt.port, "GET", "/")
            assert status == 503
            assert headers.get("x-frame-options") == "DENY"
            assert headers.get("referrer-policy") == "no-referrer"

    _run(scenario)


def test_admin_is_on_loopback_with_prometheus_stats_and_stop_ends_envoy(
    real_server: ServeProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _edge(real_server.port, tmp_path) as edge, _channel(edge) as channel:
            assert edge.admin_url.startswith("http://127.0.0.1:")
            await _first_instrument(channel)
            stats = await _bounded(edge.prometheus_stats(), RPC_TIMEOUT_SECONDS)
            assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="mbostream_grpc"}' in stats
            pid = edge.pid
            assert pid is not None
            await _bounded(edge.stop())
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    _run(scenario)


def test_streambook_is_routed_to_the_servers_native_book_port(tmp_path: Path) -> None:
    """With the server's --book-port, Envoy sends StreamBook (gRPC and gRPC-Web) to the native
    transport and everything else to the gRPC port: both clusters count their requests."""
    server_or_skip()
    server = ServeProcess("--rate", "5000", "--loop", "--book-port", "0", log_path=tmp_path / "serve.log").start()
    try:

        async def scenario() -> None:
            async with _edge(server.port, tmp_path, book_port=server.book_port) as edge, _channel(edge) as channel:
                info = await _first_instrument(channel)
                call = market_data_pb2_grpc.MarketDataServiceStub(channel).StreamBook(_book_request(info))
                received = [await asyncio.wait_for(call.read(), RPC_TIMEOUT_SECONDS) for _ in range(3)]
                call.cancel()
                assert received[0].is_snapshot and all(r.book.instrument_id == info.instrument_id for r in received)
                streamed = await asyncio.to_thread(
                    _grpc_web_call, edge.port, "/mbostream.v1.MarketDataService/StreamBook",
                    _book_request(info).SerializeToString(), max_messages=2,
                )  # fmt: skip
                assert streamed.http_status == 200 and len(streamed.messages) == 2
                stats = await _bounded(edge.prometheus_stats(), RPC_TIMEOUT_SECONDS)
                requests = {
                    cluster: int(re.search(rf'envoy_cluster_upstream_rq_total{{envoy_cluster_name="{cluster}"}} (\d+)', stats).group(1))
                    for cluster in ("mbostream_books", "mbostream_grpc")
                }
                assert requests["mbostream_books"] == 2, requests  # the two StreamBook calls
                assert requests["mbostream_grpc"] >= 1, requests  # ListInstruments

        _run(scenario)
    finally:
        server.stop()


@pytest.mark.parametrize("book_port", [False, True], ids=["grpc-port", "book-port"])
def test_a_slow_book_reader_behind_the_edge_finds_at_most_a_window_of_old_books_in_envoy(
    tmp_path: Path, generated_small: Path, book_port: bool
) -> None:
    """Envoy holds at most STREAM_WINDOW_BYTES for one stream on each side (its HTTP/2 stream
    window, which its per-stream buffers toward a client take as their limit too), so a book stream
    paused behind the edge reads at most those two windows, its own and the message begun of old
    books before live ones; the server conflates the rest. With Envoy's defaults (256 MiB) the same
    3 s pause left 31-50 MB of old books in Envoy (measured, on the StreamBook routes of both ports)."""
    from mbostream_client import MIN_RECEIVE_WINDOW
    from slow_reader import OldBooks, old_books_after_a_pause

    from mbostream.edge.render import STREAM_WINDOW_BYTES

    server_or_skip()
    server = ServeProcess(
        str(generated_small), "--no-store", "--rate", "20000", "--loop", *(["--book-port", "0"] if book_port else []),
        log_path=tmp_path / "serve.log",
    ).start()  # fmt: skip
    try:

        async def scenario() -> OldBooks:
            async with _edge(server.port, tmp_path, book_port=server.book_port if book_port else None) as edge:
                return await old_books_after_a_pause(f"127.0.0.1:{edge.port}", MIN_RECEIVE_WINDOW, 3.0, RPC_TIMEOUT_SECONDS)

        old = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_SECONDS))
    finally:
        server.stop()
    assert 0 < old.read <= MIN_RECEIVE_WINDOW + 2 * STREAM_WINDOW_BYTES + 2 * old.largest, old


def test_the_native_book_port_is_refused_with_gateways_on_several_ports(tmp_path: Path) -> None:
    # Gateways behind one address (one upstream port, a name DNS resolves to each): accepted.
    EdgeConfig(listen_port=0, upstream_port=50051, upstream_ports=(50051,), replayer_port=50053, static_dir=None, book_port=50052)
    for overrides, reason in (
        ({"upstream_ports": (50051, 50052)}, "not with several upstream ports"),
        ({"book_port": 0}, "not a port number"),
    ):
        with pytest.raises(ConfigError, match=reason):
            EdgeConfig(listen_port=0, upstream_port=50051, static_dir=None, **{"book_port": 50060, **overrides})
    # Gateways on one host (`run --gateways N`): one book port each, in their order.
    for overrides, reason in (
        ({"book_ports": (50061,)}, "one book port per upstream port"),
        ({"book_ports": (50061, 50062), "book_port": 50060}, "not both"),
        ({"book_ports": (50061, 0)}, "not a port number"),
    ):
        with pytest.raises(ConfigError, match=reason):
            EdgeConfig(listen_port=0, upstream_port=50051, upstream_ports=(50051, 50052), replayer_port=50053, static_dir=None, **overrides)


def test_gateways_on_one_host_each_have_their_book_port_checked_through_their_grpc_port(tmp_path: Path) -> None:
    """The books cluster of `run --gateways 2 --book-port 0`: one endpoint per gateway's book port,
    each health-checked on that gateway's gRPC port; Envoy accepts the config."""
    config = EdgeConfig(
        listen_port=8080, upstream_port=50051, upstream_ports=(50051, 50052), replayer_port=50053,
        book_ports=(50061, 50062), static_dir=None,
    )  # fmt: skip
    text = render_config(config)
    books = next(c for c in yaml.safe_load(text)["static_resources"]["clusters"] if c["name"] == "mbostream_books")
    endpoints = books["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [(e["endpoint"]["address"]["socket_address"]["port_value"], e["endpoint"]["health_check_config"]["port_value"]) for e in endpoints] == [
        (50061, 50051),
        (50062, 50052),
    ]
    assert books["health_checks"] and books["lb_policy"] == "LEAST_REQUEST"
    validate_config(text, envoy=envoy_or_skip())


# --- Envoy's health checking, against a server that turns NOT_SERVING on demand ------------------


def test_envoy_health_checks_the_server_with_grpc_health(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await _bounded(server.start())
        try:
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            async with _edge(port, tmp_path) as edge:
                await edge.wait_upstream_healthy(timeout=RPC_TIMEOUT_SECONDS)
                await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                async with asyncio.timeout(RPC_TIMEOUT_SECONDS):
                    while await edge.upstream_healthy():
                        await asyncio.sleep(0.1)
                await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
                await edge.wait_upstream_healthy(timeout=RPC_TIMEOUT_SECONDS)
        finally:
            await _bounded(server.stop(grace=None))

    _run(scenario)


# --- `mbostream run`: the server and the edge as one command ----------------------------------------


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``secret``."""
    found = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):  # a file removed while we look, or a socket
            if path.is_file() and secret in path.read_bytes():
                found.append(path)
    return found


def _replay_state(edge_url: str, metadata: tuple[tuple[str, str], ...]) -> replay_pb2.ReplayState.ValueType:
    """GetStatus through the edge, with ``metadata``."""
    with grpc.insecure_channel(edge_url.removeprefix("http://")) as channel:
        stub = replay_pb2_grpc.ReplayServiceStub(channel)
        return stub.GetStatus(replay_pb2.GetStatusRequest(), metadata=metadata, timeout=RPC_TIMEOUT_SECONDS).status.state


def test_run_without_a_token_makes_one_prints_it_in_the_page_url_and_writes_it_nowhere(
    tmp_path: Path, generated_small: Path
) -> None:
    envoy_or_skip()
    server_or_skip()
    work, temp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    # Storage on, with its spool in the run's folder: one more place a token must not reach.
    env = {"TMPDIR": str(temp), "MBOSTREAM_STORE": "true", "MBOSTREAM_SPOOL_DIR": str(work / "spool")}
    run = ServeProcess(
        str(generated_small), "--rate", "5000", "--loop", "--edge-port", "0",
        command="run", token=None, cwd=work, env=env, log_path=tmp_path / "run.log",
    ).start(timeout=SERVER_START_TIMEOUT_SECONDS)  # fmt: skip
    try:
        assert run.url.startswith("http://127.0.0.1:")
        prefix = f"{run.url}/#token="
        assert run.page_url.startswith(prefix), run.page_url
        token = run.page_url.removeprefix(prefix)
        assert len(token) >= 43 and set(token) <= set(string.ascii_letters + string.digits + "-_")  # token_urlsafe(32)
        assert _replay_state(run.url, (("authorization", f"Bearer {token}"),)) == replay_pb2.REPLAY_STATE_RUNNING
        with pytest.raises(grpc.RpcError) as denied:
            _replay_state(run.url, ())
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # While it runs: the spool is in the working directory, the log beside it; Envoy's
        # rendered config left TMPDIR once Envoy had read it.
        assert _runtime_folders(temp) == []
        deadline = time.monotonic() + RPC_TIMEOUT_SECONDS
        while not list((work / "spool").glob("segment-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((work / "spool").glob("segment-*")), "the spool was never written"
        assert _files_holding(tmp_path, token.encode()) == []
    finally:
        assert run.stop(SERVER_STOP_GRACE_SECONDS) == 0
    assert _files_holding(tmp_path, token.encode()) == []
    assert _runtime_folders(temp) == []


def test_run_with_a_configured_token_prints_the_plain_url(tmp_path: Path, generated_small: Path) -> None:
    envoy_or_skip()
    server_or_skip()
    run = ServeProcess(
        str(generated_small), "--rate", "5000", "--edge-port", "0", command="run", log_path=tmp_path / "run.log",
    ).start(timeout=SERVER_START_TIMEOUT_SECONDS)  # fmt: skip
    try:
        assert run.page_url == run.url
        assert _replay_state(run.url, AUTH) == replay_pb2.REPLAY_STATE_RUNNING
    finally:
        assert run.stop(SERVER_STOP_GRACE_SECONDS) == 0


def _child_pids(pid: int) -> list[int]:
    """The process ids of ``pid``'s children, from the kernel's tables."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def test_run_whose_envoy_dies_stops_with_exit_1_and_one_error_line(tmp_path: Path, generated_small: Path) -> None:
    """The edge is part of `mbostream run`: Envoy gone, the URL it printed is dead, so the process
    stops and says why (before, it went on serving gRPC alone, silently, and never exited)."""
    envoy_or_skip()
    server_or_skip()
    log_path = tmp_path / "run.log"
    run = ServeProcess(
        str(generated_small), "--rate", "5000", "--loop", "--edge-port", "0", command="run", log_path=log_path,
    ).start(timeout=SERVER_START_TIMEOUT_SECONDS)  # fmt: skip
    try:
        assert run.process is not None
        envoys = [pid for pid in _child_pids(run.process.pid) if "envoy" in Path(f"/proc/{pid}/comm").read_text()]
        assert len(envoys) == 1, _child_pids(run.process.pid)
        os.kill(envoys[0], signal.SIGKILL)
        code = run.wait(SERVER_STOP_GRACE_SECONDS)
    finally:
        run.stop(SERVER_STOP_GRACE_SECONDS)
    assert code == 1
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"envoy (pid {envoys[0]}) exited" in errors[0] and "exit 1" in errors[0], errors
