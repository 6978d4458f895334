"""TLS on the hops that leave a host (issue 18): Envoy → replayer and gateways, every role → NATS,
the store → InfluxDB, and all of them at once in ``mbostream run --gateways N``.

Real parts only, with certificates these tests make (``tests/test_tls.py::make_pki``): a real
``nats-server`` with TLS (and mTLS), a real InfluxDB 1.8 serving HTTPS, a real Envoy, real role
processes. Each hop is shown to refuse a client without the right CA or certificate, and to
serve ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import grpc
import nats
import pytest
import yaml
from grpc import aio as grpc_aio
from mbostream.bus.streams import META_STREAM, META_SUBJECT, TlsRequiredError, connect, ensure_streams, is_tls_refusal, tls_context
from mbostream.config import Settings, load_settings
from mbostream.edge.cluster import ClusterTls
from mbostream.edge.config import EdgeConfig, EdgeTls
from mbostream.edge.render import certificate_sha256, render_config
from mbostream.edge.supervisor import Edge
from mbostream.errors import ConfigError
from mbostream.server.app import App
from mbostream.storage import StorageSettings, blocks
from mbostream.storage.errors import DatabaseRefusedError, DatabaseUnavailableError
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.writer import InfluxWriter
from mbostream_client import MarketDataClient, ReplayClient, RpcError, TlsConfig
from mbostream_core.v1 import market_data_pb2

from influx.harness import HERE as INFLUX_HERE
from influx.harness import TEST_ORG, TEST_PASSWORD, TEST_TOKEN, TEST_USER, Process, free_port, influxd_binary
from nats_harness import NatsServer, nats_call
from server_harness import RPC_TIMEOUT, TOKEN, run, settings, stubs
from test_cluster import ClusterRun
from test_tls import Pki, make_pki

BUCKET: Final = "mbostream"
WAIT_SECONDS: Final = 120.0
#: Upper bound for one group of awaits on an edge or a client without a bound of their own (an
#: Edge's start and stop, a client's calls and its channel's close): a hang guard, generous for a
#: loaded 2-core machine (an Edge gives up on a start after 15 s, a client call after 10 s).
HOP_TIMEOUT_SECONDS: Final = 45.0
LINES: Final = b"".join(b"m,t=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(8))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _bus_settings(pki: Pki, *, client_cert: bool = False, stranger: bool = False) -> Settings:
    env = {"MBOSTREAM_NATS_TLS_CA_FILE": str(pki.ca)}
    if client_cert or stranger:
        cert, key = (pki.stranger_cert, pki.stranger_key) if stranger else (pki.client_cert, pki.client_key)
        env |= {"MBOSTREAM_NATS_TLS_CERT_FILE": str(cert), "MBOSTREAM_NATS_TLS_KEY_FILE": str(key)}
    return load_settings({}, environ=env)


@contextmanager
def _nats(tmp_path: Path, *extra: str) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", extra_args=extra).start()
    try:
        yield server
    finally:
        server.stop()


def _tls_args(pki: Pki, *, verify: bool) -> tuple[str, ...]:
    mode = ("--tlsverify", "--tlscacert", str(pki.ca)) if verify else ("--tls",)
    return (*mode, "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key))


def _plaintext_nats_exchange(port: int) -> tuple[bytes, bytes]:
    """What a client speaking plain NATS gets: the INFO line, then everything until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        info = sock.recv(65536)
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\nSUB x 1\r\n')
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return info, reply


async def _round_trip(url: str, settings: Settings) -> int:
    """Connects as the roles do, declares the streams and publishes one message; its stream sequence."""
    nc = await nats_call(connect(url, name="test-tls", tls=tls_context(settings)), 20)
    try:
        js = nc.jetstream()
        await nats_call(ensure_streams(js, max_age_seconds=3600, max_bytes=1 << 24))
        ack = await nats_call(js.publish(META_SUBJECT, b"tls", stream=META_STREAM))
        return int(ack.seq)
    finally:
        await nats_call(nc.close())


def _gateway_refused(url: str, log: Path, **env: str) -> str:
    """Starts ``mbostream gateway`` on the bus with ``env`` (its TLS settings); returns its log once it
    said the bus's TLS refused it (it retries, as for an unreachable bus: it is killed by PID then)."""
    command = [sys.executable, "-m", "mbostream.cli", "--log-format", "text", "gateway", "--nats", url, "--port", "0", "--metrics-port", "-1"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MBOSTREAM_NATS_TLS_")}
    with log.open("ab") as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env={**clean, **env})
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while "bus TLS refused" not in log.read_text():
            assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no TLS refusal logged:\n{log.read_text()[-4000:]}"
            time.sleep(0.1)
        assert "listening" not in log.read_text()
    finally:
        process.kill()
        process.wait(30)
    return log.read_text()


def _bus_env(pki: Pki, *, stranger: bool = False) -> dict[str, str]:
    """``MBOSTREAM_NATS_TLS_*`` of :func:`_bus_settings` as the roles read them."""
    s = _bus_settings(pki, stranger=stranger)
    return {f"MBOSTREAM_{name.upper()}": getattr(s, name) for name in ("nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file") if getattr(s, name)}


async def _plain_nats_py_refused(url: str, **options: Any) -> BaseException:
    """nats-py on its own (no retry), as any other client of the bus would be configured."""
    with pytest.raises(Exception) as failure:  # noqa: PT011 - ssl and nats errors are unrelated types
        nc = await nats_call(nats.connect(url, allow_reconnect=False, connect_timeout=5, **options), 20)
        await nats_call(nc.close())
    return failure.value


# -- NATS ----------------------------------------------------------------------------------------


def test_nats_over_tls_serves_ours_and_refuses_plain_clients(pki: Pki, tmp_path: Path) -> None:
    with _nats(tmp_path, *_tls_args(pki, verify=False)) as server:
        assert run(_round_trip(server.url, _bus_settings(pki))) >= 1
        # A client speaking plain NATS: told TLS is required, never answered (no PONG), hung up on.
        info, reply = _plaintext_nats_exchange(server.port)
        assert b'"tls_required":true' in info
        assert b"PONG" not in reply
        # nats-py without our CA (the system's trust store): the handshake fails on the certificate.
        assert "CERTIFICATE_VERIFY_FAILED" in str(run(_plain_nats_py_refused(server.url)))
        # A role without the CA configured: the same refusal, logged (and retried).
        assert "CERTIFICATE_VERIFY_FAILED" in _gateway_refused(server.url, tmp_path / "gateway.log")


def test_a_role_configured_for_tls_refuses_a_plaintext_bus(pki: Pki, tmp_path: Path) -> None:
    """nats-py would speak plaintext to a server that does not ask for TLS: ours refuses before CONNECT."""
    with _nats(tmp_path) as server:
        assert "does not require TLS" in _gateway_refused(server.url, tmp_path / "gateway.log", **_bus_env(pki))
        assert run(_round_trip(server.url, load_settings({}, environ={}))) >= 1  # the same bus, plaintext configured


def test_nats_mtls_needs_a_client_certificate_of_its_ca(pki: Pki, tmp_path: Path) -> None:
    with _nats(tmp_path, *_tls_args(pki, verify=True)) as server:
        assert run(_round_trip(server.url, _bus_settings(pki, client_cert=True))) >= 1
        ca_only = ssl.create_default_context(cafile=str(pki.ca))
        refused = run(_plain_nats_py_refused(server.url, tls=ca_only))
        assert not isinstance(refused, ssl.SSLCertVerificationError), refused  # the server's certificate was fine
        stranger = run(_plain_nats_py_refused(server.url, tls=tls_context(_bus_settings(pki, stranger=True))))
        assert not isinstance(stranger, ssl.SSLCertVerificationError), stranger
        # A role presenting another CA's certificate: refused by the server, logged (and retried).
        assert "UNKNOWN_CA" in _gateway_refused(server.url, tmp_path / "gateway.log", **_bus_env(pki, stranger=True))


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, reason.lower().replace("_", " "))
    error.reason = reason  # as OpenSSL's errors carry it
    return error


def test_a_tls_connection_that_ends_is_not_reported_as_a_refusal() -> None:
    """A CI run logged "bus TLS refused: APPLICATION_DATA_AFTER_CLOSE_NOTIFY" while the roles were
    closing their connections: an ended TLS connection is a lost connection, retried quietly; a
    wrong certificate or setting (the three refusals above) still is a refusal."""
    for ended in (_ssl_error("APPLICATION_DATA_AFTER_CLOSE_NOTIFY"), _ssl_error("UNEXPECTED_EOF_WHILE_READING"), ssl.SSLZeroReturnError(), ssl.SSLEOFError()):
        assert not is_tls_refusal(ended), ended
    for refused in (ssl.SSLCertVerificationError(1, "certificate verify failed"), _ssl_error("TLSV1_ALERT_UNKNOWN_CA"), _ssl_error("WRONG_VERSION_NUMBER"), TlsRequiredError("plaintext bus")):
        assert is_tls_refusal(refused), refused
    assert not is_tls_refusal(ConnectionResetError()) and not is_tls_refusal(TimeoutError())


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MBOSTREAM_NATS_TLS_CA_FILE": "absent"}, "MBOSTREAM_NATS_TLS_CA_FILE"),
        ({"MBOSTREAM_NATS_TLS_CA_FILE": "not_pem"}, "MBOSTREAM_NATS_TLS_CA_FILE"),
        ({"MBOSTREAM_NATS_TLS_CERT_FILE": "client_cert", "MBOSTREAM_NATS_TLS_KEY_FILE": "client_key"}, "MBOSTREAM_NATS_TLS_CERT_FILE"),
        ({"MBOSTREAM_NATS_TLS_CA_FILE": "ca", "MBOSTREAM_NATS_TLS_CERT_FILE": "client_cert"}, "MBOSTREAM_NATS_TLS_KEY_FILE"),
        ({"MBOSTREAM_EDGE_TLS_CLIENT_KEY_FILE": "client_key"}, "MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE"),
        ({"MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE": "client_cert", "MBOSTREAM_EDGE_TLS_CLIENT_KEY_FILE": "absent"}, "MBOSTREAM_EDGE_TLS_CLIENT_KEY_FILE"),
        ({"INFLUX_CA_FILE": "ca"}, "INFLUX_CA_FILE"),
    ],
)
def test_hop_tls_settings_are_checked_at_start_up(pki: Pki, tmp_path: Path, env: dict[str, str], named: str) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    files = {**{k: str(v) for k, v in vars(pki).items()}, "absent": str(tmp_path / "absent.pem"), "not_pem": str(not_pem)}
    with pytest.raises(ConfigError) as failure:
        load_settings({}, environ={name: files[which] for name, which in env.items()})
    assert named in str(failure.value)


def test_influx_ca_needs_an_https_url_and_a_readable_file(pki: Pki, tmp_path: Path) -> None:
    target = {"org": TEST_ORG, "bucket": BUCKET, "token": TEST_TOKEN}
    with pytest.raises(ConfigError, match="https"):
        StorageSettings(url="http://localhost:8086", ca_file=str(pki.ca), **target)
    with pytest.raises(ConfigError, match="cannot read"):
        StorageSettings(url="https://localhost:8086", ca_file=str(tmp_path / "absent.pem"), **target)
    assert StorageSettings.from_env(
        {"INFLUX_URL": "https://localhost:8086", "INFLUX_ORG": TEST_ORG, "INFLUX_BUCKET": BUCKET, "INFLUX_TOKEN": TEST_TOKEN, "INFLUX_CA_FILE": str(pki.ca)}
    ).ca_file == str(pki.ca)


# -- InfluxDB over HTTPS -------------------------------------------------------------------------


class HttpsInflux:
    """A real InfluxDB 1.8 (tests/influx's binary and config) serving HTTPS only, with the test's certificate."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.port = free_port()
        config = (INFLUX_HERE / "influxdb.conf.in").read_text()
        for key, value in {"DIR": directory, "RPC_PORT": free_port(), "HTTP_PORT": self.port, "FLUX_ENABLED": "false"}.items():
            config = config.replace(f"@{key}@", str(value))
        https = f'  https-enabled = true\n  https-certificate = "{pki.server_cert}"\n  https-private-key = "{pki.server_key}"\n'
        assert "[http]\n  enabled = true\n" in config
        config = config.replace("[http]\n  enabled = true\n", "[http]\n  enabled = true\n" + https)
        (directory / "influxdb.conf").write_text(config)
        self.process = Process("influxd", [influxd_binary(), "-config", str(directory / "influxdb.conf")], directory / "influxd.log")

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def request(self, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        request = urllib.request.Request(self.url + path, data=data, headers={"Authorization": f"Token {TEST_TOKEN}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=RPC_TIMEOUT) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def query(self, q: str) -> dict[str, Any]:
        status, body = self.request("/query", urllib.parse.urlencode({"q": q, "db": BUCKET}).encode())
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def count(self, measurement: str, field: str) -> int:
        series = self.query(f'SELECT count("{field}") FROM "{measurement}"')["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    def start(self) -> HttpsInflux:
        self.process.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                if self.request("/ping")[0] == 204:
                    break
            except OSError:
                pass
            assert self.process.running, self.process.log_tail()
            assert time.monotonic() < deadline, f"influxd (https) not up:\n{self.process.log_tail()}"
            time.sleep(0.1)
        self.query(f"CREATE USER \"{TEST_USER}\" WITH PASSWORD '{TEST_PASSWORD}' WITH ALL PRIVILEGES")
        self.query(f'CREATE DATABASE "{BUCKET}"')
        return self

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def https_influx(tmp_path: Path, pki: Pki) -> Iterator[HttpsInflux]:
    engine = HttpsInflux(tmp_path / "influx", pki).start()
    try:
        yield engine
    finally:
        engine.stop()


def _writer(url: str, ca_file: str | None, retries: int = 0) -> InfluxWriter:
    return InfluxWriter(
        url=url, org=TEST_ORG, bucket=BUCKET, token=TEST_TOKEN, ca_file=ca_file, timeout=10.0, gzip_level=1,
        max_retries=retries, retry_initial=0.01, retry_max=0.01, metrics=StorageMetrics(), set_aside=lambda line, reason: None,
    )  # fmt: skip


def test_the_store_writes_to_influxdb_over_https_with_its_ca(https_influx: HttpsInflux, pki: Pki) -> None:
    payload = blocks.encode_block(LINES)
    settings = StorageSettings(url=https_influx.url, org=TEST_ORG, bucket=BUCKET, token=TEST_TOKEN, ca_file=str(pki.ca))
    writer = _writer(settings.url or "", settings.ca_file)
    try:
        report = writer.write(payload, 8)
    finally:
        writer.close()
    assert (report.written, report.rejected) == (8, 0)
    assert https_influx.count("m", "v") == 8
    # Without the CA (the system's trust store) the certificate is refused: nothing is written.
    # The HTTPS server answers plain HTTP with a 400 and closes. A close while the request's body is
    # still unread can reach the client as a reset instead (ECONNRESET, seen once in CI): that is
    # "unavailable", which the store retries. With a few retries the 400 arrives, as it does for
    # the store.
    stranger = _writer(https_influx.url, None)
    plain = _writer(https_influx.url.replace("https://", "http://"), None, retries=5)
    try:
        with pytest.raises(DatabaseUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.write(payload, 8)
        # Plain HTTP to the HTTPS port: refused as a wrong setting (kept for later), not set aside as bad points.
        with pytest.raises(DatabaseRefusedError, match="must be https"):
            plain.write(payload, 8)
    finally:
        stranger.close()
        plain.close()
    assert https_influx.count("m", "v") == 8


# -- Envoy → replayer and gateways ---------------------------------------------------------------


def _upstream_tls(rendered: str) -> dict[str, dict[str, Any] | None]:
    """Each cluster's upstream TLS context (None: plaintext), by name."""
    clusters = yaml.safe_load(rendered)["static_resources"]["clusters"]
    return {c["name"]: c.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context") for c in clusters}


def test_the_cluster_config_speaks_tls_and_mtls_to_the_replayer_and_every_gateway(pki: Pki) -> None:
    tls = ClusterTls(
        cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca),
        edge_client_cert_file=str(pki.client_cert), edge_client_key_file=str(pki.client_key),
    )  # fmt: skip
    config = EdgeConfig(listen_port=0, upstream_port=5001, upstream_ports=(5001, 5002), replayer_port=5003, static_dir=None, otlp_endpoint=None, tls=tls.edge())
    pinned = [certificate_sha256(pki.server_cert)]
    envoys = [{"certificate_chain": {"filename": str(pki.client_cert)}, "private_key": {"filename": str(pki.client_key)}}]
    expected = {"alpn_protocols": ["h2"], "validation_context": {"verify_certificate_hash": pinned}, "tls_certificates": envoys}
    assert _upstream_tls(render_config(config)) == {"mbostream_grpc": expected, "mbostream_replayer": expected}
    plain = EdgeConfig(listen_port=0, upstream_port=5001, upstream_ports=(5001,), replayer_port=5003, static_dir=None, otlp_endpoint=None)
    assert _upstream_tls(render_config(plain)) == {"mbostream_grpc": None, "mbostream_replayer": None}


def test_edge_presents_its_client_certificate_to_an_mtls_server(pki: Pki) -> None:
    """``mbostream run`` with mTLS at the server: Envoy pins the server and presents its own certificate."""

    async def scenario() -> None:
        app = App(settings(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key), tls_client_ca_file=str(pki.ca), sample_records=20_000))
        await asyncio.wait_for(app.start(), 60)
        edge_tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "upstream_cert_file": str(pki.server_cert)}
        try:
            for client_cert, key, served in ((pki.client_cert, pki.client_key, True), (pki.stranger_cert, pki.stranger_key, False)):
                tls = EdgeTls(**edge_tls, upstream_client_cert_file=str(client_cert), upstream_client_key_file=str(key))
                async with asyncio.timeout(HOP_TIMEOUT_SECONDS), Edge(listen_port=0, upstream_port=app.port, static_dir=None, tls=tls) as edge:
                    target = edge.url.replace("127.0.0.1", "localhost").removeprefix("https://")
                    channel = grpc_aio.secure_channel(target, TlsConfig(ca_file=str(pki.ca)).credentials())
                    market, _ = stubs(channel)
                    try:
                        reply = await market.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT)
                        assert served and reply.instruments
                    except grpc_aio.AioRpcError as exc:
                        assert not served and exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                    finally:
                        await asyncio.wait_for(channel.close(), RPC_TIMEOUT)
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)


def test_cluster_tls_refuses_combinations_it_cannot_serve(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="MBOSTREAM_TLS_CERT_FILE"):
        ClusterTls(nats_ca_file=str(pki.ca))
    with pytest.raises(ConfigError, match="MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE"):
        ClusterTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca))
    with pytest.raises(ConfigError, match="client certificate"):
        EdgeTls(upstream_client_cert_file=str(pki.client_cert), upstream_client_key_file=str(pki.client_key))


# -- every hop at once: mbostream run --gateways 2 -----------------------------------------------


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


async def _through_the_edge(target: str, pki: Pki) -> tuple[int, int]:
    """A book from a gateway and a control call on the replayer, both through Envoy over TLS."""
    tls = TlsConfig(ca_file=str(pki.ca))
    async with asyncio.timeout(HOP_TIMEOUT_SECONDS), MarketDataClient(target, tls=tls) as client:
        instruments = await client.list_instruments()
        book = await client.get_book(instruments[0].symbol, depth=5)
    async with asyncio.timeout(HOP_TIMEOUT_SECONDS), ReplayClient(target, token=TOKEN, tls=tls) as control:
        status = await control.status()
    return len(book.bids) + len(book.asks), int(status.records_done)


async def _direct_refusals(port: int, pki: Pki) -> list[grpc.StatusCode]:
    """A gateway reached directly: plaintext, and TLS without a client certificate (mTLS)."""
    codes = []
    for channel in (
        grpc_aio.insecure_channel(f"127.0.0.1:{port}"),
        grpc_aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(pki.ca.read_bytes())),
    ):
        market, _ = stubs(channel)
        try:
            await market.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT)
            codes.append(grpc.StatusCode.OK)
        except grpc_aio.AioRpcError as exc:
            codes.append(exc.code())
        finally:
            await asyncio.wait_for(channel.close(), RPC_TIMEOUT)
    return codes


@pytest.mark.timeout(600)
def test_run_gateways_with_tls_on_every_hop(https_influx: HttpsInflux, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Browser/client → Envoy (HTTPS), Envoy → replayer and gateways (mTLS), roles → NATS (mTLS),
    store → InfluxDB (HTTPS): a client gets books and control through the edge, the store's points
    arrive, and each hop refuses a plaintext client."""
    env = {
        "MBOSTREAM_SAMPLE_RECORDS": "50000",
        "MBOSTREAM_TLS_CERT_FILE": str(pki.server_cert),
        "MBOSTREAM_TLS_KEY_FILE": str(pki.server_key),
        "MBOSTREAM_TLS_CLIENT_CA_FILE": str(pki.ca),
        "MBOSTREAM_EDGE_TLS_CERT_FILE": str(pki.server_cert),
        "MBOSTREAM_EDGE_TLS_KEY_FILE": str(pki.server_key),
        "MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE": str(pki.client_cert),
        "MBOSTREAM_EDGE_TLS_CLIENT_KEY_FILE": str(pki.client_key),
        "MBOSTREAM_NATS_TLS_CA_FILE": str(pki.ca),
        "MBOSTREAM_NATS_TLS_CERT_FILE": str(pki.client_cert),
        "MBOSTREAM_NATS_TLS_KEY_FILE": str(pki.client_key),
        "INFLUX_URL": https_influx.url,
        "INFLUX_ORG": TEST_ORG,
        "INFLUX_BUCKET": BUCKET,
        "INFLUX_TOKEN": TEST_TOKEN,
        "INFLUX_CA_FILE": str(pki.ca),
        "MBOSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "MBOSTREAM_DEPTH_INTERVAL": "0",
    }
    for name, value in env.items():  # the run's environment (ClusterRun passes ours on)
        monkeypatch.setenv(name, value)
    cluster = ClusterRun(tmp_path / "run.log", "--rate", "20000", "--gateways", "2", "--edge-port", "0")
    try:
        assert cluster.ready["url"].startswith("https://") and not cluster.ready["grpc"].startswith("http")
        target = cluster.ready["grpc"].replace("127.0.0.1", "localhost")
        deadline = time.monotonic() + WAIT_SECONDS
        levels = sequence = 0
        while not (levels and sequence):
            # The gateways are SERVING once caught up (Envoy retries meanwhile, a client may still see
            # UNAVAILABLE), and the first instrument's book may still be empty right after the start.
            try:
                levels, sequence = run(_through_the_edge(target, pki))
            except RpcError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
            assert time.monotonic() < deadline, f"no book with levels through the edge:\n{_tail(tmp_path / 'run.log')}"
            time.sleep(0.5)
        for gateway in cluster.ready["gateways"]:
            refusals = run(_direct_refusals(gateway["port"], pki))
            assert refusals == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE], (gateway, refusals)
        nats_port = int(cluster.ready["nats"].rsplit(":", 1)[1])
        info, reply = _plaintext_nats_exchange(nats_port)
        assert b'"tls_required":true' in info and b"PONG" not in reply, (info, reply)
        deadline = time.monotonic() + WAIT_SECONDS
        while https_influx.count("trades", "sequence") == 0:
            assert time.monotonic() < deadline, f"no trade stored over HTTPS:\n{_tail(tmp_path / 'run.log')}"
            time.sleep(0.5)
    finally:
        code = cluster.stop()
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log and "bus TLS refused" not in log, log[-4000:]

