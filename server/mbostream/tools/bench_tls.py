"""A throw-away PKI for benchmarks over TLS (``bench e2e --tls``): a CA and a server certificate
for 127.0.0.1 and localhost, made in a directory that lives as long as the bench's server.

ECDSA P-256, as compose's ``secrets-init`` makes them, so the handshakes and record encryption
measured are the deployment's. Needs the ``cryptography`` package (in the development lock).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mbostream.errors import BenchError


@dataclass(frozen=True)
class BenchPki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_bench_pki(directory: Path) -> BenchPki:
    """Writes ``ca.crt``, ``server.crt`` and ``server.key`` (0600) into ``directory``."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise BenchError("--tls needs the cryptography package (scripts/bootstrap-dev installs it)") from None
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, issuer: str, public_key: object, signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("mbostream bench CA", "mbostream bench CA", ca_key.public_key(), ca_key, True)
    server = certificate("mbostream bench server", "mbostream bench CA", server_key.public_key(), ca_key, False)
    pki = BenchPki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.key_file.touch(mode=0o600)
    pki.key_file.write_bytes(
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki
