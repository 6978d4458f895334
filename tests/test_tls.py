"""gRPC over TLS and mTLS: a real server with certificates this test makes (a CA, the server's and a
client's), reached by the Python client, a plaintext client, a stranger's certificate and grpcurl."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc import aio as grpc_aio

from mbostream.config import load_settings
from mbostream.edge.config import EdgeTls
from mbostream.edge.render import _UI_NOT_BUILT
from mbostream.edge.supervisor import Edge
from mbostream.errors import ConfigError
from mbostream.server.app import App
from mbostream_client import MarketDataClient, TlsConfig
from mbostream_core.v1 import book_pb2, market_data_pb2

from server_harness import RPC_TIMEOUT, run, settings, stubs
from test_grpcurl import _grpcurl

SYMBOL_COUNT_AT_LEAST = 1


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: A client certificate from another CA: mTLS must refuse it.
    stranger_cert: Path
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = _builder(common_name, ca[0].subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca[1], hashes.SHA256()), key


def _write(directory: Path, stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pair[1].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key.chmod(0o600)
    return cert, key


def make_pki(directory: Path) -> Pki:
    """A test CA with a server certificate (localhost, 127.0.0.1) and a client certificate, and a
    client certificate from a second, unrelated CA."""
    ca = _ca("mbostream test CA")
    ca_file, _ = _write(directory, "ca", ca)
    server_cert, server_key = _write(directory, "server", _leaf("localhost", ca, server=True))
    client_cert, client_key = _write(directory, "client", _leaf("operator", ca, server=False))
    stranger_cert, stranger_key = _write(directory, "stranger", _leaf("stranger", _ca("another CA"), server=False))
    return Pki(ca_file, server_cert, server_key, client_cert, client_key, stranger_cert, stranger_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_settings(pki: Pki, *, mutual: bool) -> object:
    return settings(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca) if mutual else "",
        sample_records=20_000,
    )


async def _started(s: object) -> App:
    app = App(s)  # type: ignore[arg-type]
    await asyncio.wait_for(app.start(), 60)
    await asyncio.wait_for(app.replayer.loaded.wait(), 30)
    return app


async def _first_book(client: MarketDataClient) -> book_pb2.BookSnapshot:
    instruments = await client.list_instruments()
    assert len(instruments) >= SYMBOL_COUNT_AT_LEAST
    return await client.get_book(instruments[0].symbol, depth=5)


async def _refused(channel: grpc_aio.Channel) -> grpc.StatusCode:
    """The status of a ListInstruments that must not get through (the channel is closed after)."""
    market, _ = stubs(channel)
    try:
        with pytest.raises(grpc_aio.AioRpcError) as failure:
            await market.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT)
    finally:
        await channel.close()
    return failure.value.code()


def test_tls_client_gets_a_book_and_plaintext_is_refused(pki: Pki) -> None:
    async def scenario() -> None:
        app = await _started(_tls_settings(pki, mutual=False))
        try:
            target = f"localhost:{app.port}"
            async with MarketDataClient(target, tls=TlsConfig(ca_file=str(pki.ca))) as client:
                book = await _first_book(client)
                assert book.symbol and (book.bids or book.asks)
            # The same port spoken to in plaintext: the TLS handshake never happens, nothing is served.
            assert await _refused(grpc_aio.insecure_channel(target)) is grpc.StatusCode.UNAVAILABLE
            # TLS, but trusting only the system roots: our test CA is not among them.
            assert await _refused(grpc_aio.secure_channel(target, grpc.ssl_channel_credentials())) is grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario())


def test_mtls_refuses_clients_without_a_certificate_of_its_ca(pki: Pki) -> None:
    async def scenario() -> None:
        app = await _started(_tls_settings(pki, mutual=True))
        try:
            target = f"127.0.0.1:{app.port}"
            anonymous = TlsConfig(ca_file=str(pki.ca))
            assert await _refused(grpc_aio.secure_channel(target, anonymous.credentials())) is grpc.StatusCode.UNAVAILABLE
            stranger = TlsConfig(ca_file=str(pki.ca), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key))
            assert await _refused(grpc_aio.secure_channel(target, stranger.credentials())) is grpc.StatusCode.UNAVAILABLE
            operator = TlsConfig(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
            async with MarketDataClient(target, tls=operator) as client:
                book = await _first_book(client)
                assert book.bids or book.asks
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario())


async def _books_on(target: str, tls: TlsConfig, count: int) -> list[market_data_pb2.StreamBookResponse]:
    """The first ``count`` StreamBook messages a client with ``tls`` gets from ``target``."""
    async with MarketDataClient(target, tls=tls) as client:
        stream = client.stream_book(depth=5)
        try:
            return [await asyncio.wait_for(stream.__anext__(), RPC_TIMEOUT) for _ in range(count)]
        finally:
            await stream.aclose()


async def _stream_book_refused(channel: grpc_aio.Channel) -> grpc.StatusCode:
    """The status of a StreamBook that must not get through (the channel is closed after)."""
    market, _ = stubs(channel)
    try:
        with pytest.raises(grpc_aio.AioRpcError) as failure:
            async for _ in market.StreamBook(market_data_pb2.StreamBookRequest(depth=5), timeout=RPC_TIMEOUT):
                pass
    finally:
        await channel.close()
    return failure.value.code()


def test_the_native_book_port_speaks_the_servers_tls_and_mtls(pki: Pki) -> None:
    """``book_port`` with the gRPC port's certificate: TLS there too (rustls), and with a client CA
    the same mTLS: no certificate, or a stranger's, gets nothing; the CA's client gets books."""

    async def scenario() -> None:
        for mutual in (False, True):
            app = await _started(replace(_tls_settings(pki, mutual=mutual), book_port=0))  # type: ignore[type-var]
            try:
                assert app.book_port > 0 and app.books is not None
                target = f"localhost:{app.book_port}"
                operator = TlsConfig(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
                anonymous = TlsConfig(ca_file=str(pki.ca))
                messages = await _books_on(target, operator if mutual else anonymous, 3)
                assert messages[0].is_snapshot and (messages[0].book.bids or messages[0].book.asks)
                # The call closed by the client ends on the server too (its RST_STREAM arrives soon after).
                server = app.books.server
                assert server is not None
                deadline = time.monotonic() + RPC_TIMEOUT
                while server.open_calls:
                    assert time.monotonic() < deadline, "the native call outlived its client"
                    await asyncio.sleep(0.01)
                # Plaintext to the TLS port, and TLS trusting only the system roots: nothing served.
                assert await _stream_book_refused(grpc_aio.insecure_channel(target)) is grpc.StatusCode.UNAVAILABLE
                system_roots = grpc_aio.secure_channel(target, grpc.ssl_channel_credentials())
                assert await _stream_book_refused(system_roots) is grpc.StatusCode.UNAVAILABLE
                if mutual:
                    assert await _stream_book_refused(grpc_aio.secure_channel(target, anonymous.credentials())) is grpc.StatusCode.UNAVAILABLE
                    stranger = TlsConfig(ca_file=str(pki.ca), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key))
                    assert await _stream_book_refused(grpc_aio.secure_channel(target, stranger.credentials())) is grpc.StatusCode.UNAVAILABLE
            finally:
                await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)


def test_grpcurl_with_the_ca_certificate(pki: Pki) -> None:
    async def scenario() -> None:
        for mutual in (False, True):
            app = await _started(_tls_settings(pki, mutual=mutual))
            try:
                target = f"localhost:{app.port}"
                client_args = ["-cert", str(pki.client_cert), "-key", str(pki.client_key)] if mutual else []

                async def grpcurl(*args: str) -> tuple[int, str]:
                    proc = await asyncio.create_subprocess_exec(
                        _grpcurl(), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                    )
                    out, _ = await asyncio.wait_for(proc.communicate(), 30)
                    return proc.returncode or 0, out.decode()

                code, out = await grpcurl("-cacert", str(pki.ca), *client_args, target, "mbostream.v1.MarketDataService/ListInstruments")
                assert code == 0, out
                assert '"symbol"' in out
                # Refused calls give up after 1 s (grpcurl's default is 10 s of retrying the handshake).
                code, out = await grpcurl("-connect-timeout", "1", "-plaintext", target, "list")
                assert code != 0, out
                if mutual:
                    code, out = await grpcurl("-connect-timeout", "1", "-cacert", str(pki.ca), target, "list")
                    assert code != 0, out
            finally:
                await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"cert": "server_cert"}, "--tls-key-file / MBOSTREAM_TLS_KEY_FILE"),
        ({"key": "server_key"}, "--tls-cert-file / MBOSTREAM_TLS_CERT_FILE"),
        ({"ca": "ca"}, "--tls-client-ca-file / MBOSTREAM_TLS_CLIENT_CA_FILE"),
        ({"cert": "missing", "key": "server_key"}, "--tls-cert-file / MBOSTREAM_TLS_CERT_FILE"),
        ({"cert": "server_cert", "key": "not_pem"}, "--tls-key-file / MBOSTREAM_TLS_KEY_FILE"),
    ],
)
def test_tls_settings_are_checked_at_start_up(pki: Pki, tmp_path: Path, env: dict[str, str], named: str) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    files = {**vars(pki), "missing": tmp_path / "absent.pem", "not_pem": not_pem}
    variables = {f"MBOSTREAM_TLS_{kind.upper()}_FILE" if kind != "ca" else "MBOSTREAM_TLS_CLIENT_CA_FILE": str(files[which])
                 for kind, which in env.items()}  # fmt: skip
    with pytest.raises(ConfigError) as failure:
        load_settings({}, environ=variables)
    assert named in str(failure.value)


def test_serve_flags_reach_the_tls_checks(pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "serve", "--port", "0", "--tls-cert-file", str(pki.server_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--tls-key-file / MBOSTREAM_TLS_KEY_FILE" in proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_mtls_its_edge_cannot_speak(pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "run", "--port", "0", "--edge-port", "0",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key), "--tls-client-ca-file", str(pki.ca)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--tls-client-ca-file / MBOSTREAM_TLS_CLIENT_CA_FILE" in proc.stderr and "client certificate" in proc.stderr


def _https_get(url: str, ca: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=context, timeout=RPC_TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as answer:  # an HTTP answer all the same (503: the UI is not built)
        return answer.code, answer.read().decode()


def test_edge_serves_https_and_reaches_a_tls_server(pki: Pki) -> None:
    async def scenario() -> None:
        app = await _started(_tls_settings(pki, mutual=False))
        tls = EdgeTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), upstream_cert_file=str(pki.server_cert))
        try:
            async with Edge(listen_port=0, upstream_port=app.port, static_dir=None, tls=tls) as edge:
                assert edge.url.startswith("https://127.0.0.1:")
                url = edge.url.replace("127.0.0.1", "localhost")
                # Without a built UI the edge answers its own page: 503 saying how to build it.
                status, page = await asyncio.to_thread(_https_get, url + "/", pki.ca)
                assert (status, page) == (503, _UI_NOT_BUILT)
                # Plain HTTP on the HTTPS port gets nothing.
                with pytest.raises(OSError):
                    await asyncio.to_thread(urllib.request.urlopen, url.replace("https://", "http://") + "/", None, RPC_TIMEOUT)
                # Native gRPC over TLS to Envoy, and over TLS (pinned certificate) from Envoy to the server.
                target = url.removeprefix("https://")
                async with MarketDataClient(target, tls=TlsConfig(ca_file=str(pki.ca))) as client:
                    book = await _first_book(client)
                    assert book.bids or book.asks
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)


def test_edge_routes_streambook_to_the_native_book_port_over_tls(pki: Pki) -> None:
    """``mbostream run`` with TLS to the server and ``book_port``: Envoy reaches the book port with
    the same upstream TLS (pinned certificate) and StreamBook is served there, not on the gRPC port."""

    async def scenario() -> None:
        app = await _started(replace(_tls_settings(pki, mutual=False), book_port=0))  # type: ignore[type-var]
        tls = EdgeTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), upstream_cert_file=str(pki.server_cert))
        try:
            async with Edge(listen_port=0, upstream_port=app.port, static_dir=None, tls=tls, book_port=app.book_port) as edge:
                target = edge.url.replace("127.0.0.1", "localhost").removeprefix("https://")
                async with MarketDataClient(target, tls=TlsConfig(ca_file=str(pki.ca))) as client:
                    stream = client.stream_book(depth=5)
                    try:
                        first = await asyncio.wait_for(stream.__anext__(), RPC_TIMEOUT)
                        assert first.is_snapshot and (first.book.bids or first.book.asks)
                        assert app.books is not None and app.books.server is not None
                        assert app.books.server.open_calls == 1  # the call is on the native port
                    finally:
                        await stream.aclose()
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)


def test_edge_refuses_a_server_whose_certificate_is_not_the_pinned_one(pki: Pki) -> None:
    async def scenario() -> None:
        app = await _started(_tls_settings(pki, mutual=False))
        # Pinned: the client certificate, not the one the server presents.
        tls = EdgeTls(cert_file=str(pki.server_cert), key_file=str(pki.server_key), upstream_cert_file=str(pki.client_cert))
        try:
            async with Edge(listen_port=0, upstream_port=app.port, static_dir=None, tls=tls) as edge:
                target = edge.url.replace("127.0.0.1", "localhost").removeprefix("https://")
                channel = grpc_aio.secure_channel(target, TlsConfig(ca_file=str(pki.ca)).credentials())
                assert await _refused(channel) is grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.wait_for(app.shutdown(), 30)

    run(scenario(), timeout=120)
