"""The compose deployment's secrets and TLS certificates, made once per project by the one-shot ``secrets-init`` service.

Usage: ``secrets_init.py OUT PROVIDED CERTS``. For each secret below, in the ``secrets`` volume
(``OUT``, the first argument):
  * a file of that name in ``PROVIDED`` (the second argument, the operator's folder, bind-mounted
    read-only; ``MBOSTREAM_SECRETS_DIR`` in compose) wins: it is copied in whenever it differs;
  * else a value already in the volume is kept (restarts and later ``up`` runs change nothing);
  * else a fresh random token is written (``secrets.token_hex``, 192 bits).
Nothing has a default value. Files are written atomically and read-only (0444: the services that
read them run as other users: ours 10001, InfluxDB 1000, Grafana 472); the folder is 0755. Prints
one line per secret (its name and where its value came from, never the value); exits 1 naming a
provided file that is empty or unreadable.

The TLS set, in the ``certs`` volume (``CERTS``, the third argument), is one unit: a private CA
(``ca.crt``) and, signed by it, each server's certificate (``<name>.crt``: the leaf then the CA, a
full chain) and key (``<name>.key``) for the names in :data:`SERVERS` (their SANs are the compose
service names clients dial; the edges' ``edge`` certificate names what browsers dial, ``localhost``
and ``127.0.0.1``, plus the names or addresses in the environment variable ``EDGE_TLS_NAMES``,
comma-separated), and the roles' client certificate for the bus (``nats-client``).
  * a ``tls/`` folder in ``PROVIDED`` wins: it must hold every file of the set (exit 1 naming the
    missing ones), and each is copied in whenever it differs;
  * else a set already in the volume is kept while every certificate is valid for
    :data:`RENEW_BEFORE` more and carries the names it should;
  * else a new set is made (ECDSA P-256, valid :data:`VALIDITY`): a new CA whose key is never
    written anywhere (a later set is a new CA, not a renewal), so nothing can sign more
    certificates for this project. Services read certificates when they start: restart them after
    a new set (``docker compose restart``); browsers that trusted the old CA must trust the new one.
    Changing ``EDGE_TLS_NAMES`` therefore makes a new set too.
Keys are 0444 like the secrets (nats, InfluxDB, our roles and Envoy run as different users); only
the services that speak TLS mount the volume.
"""

import datetime
import ipaddress
import os
import re
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The secrets every profile needs (their file names in the volume and in the operator's folder).
NAMES = ("mbostream-control-token", "influxdb-token", "influxdb-admin-password", "grafana-admin-password")
TOKEN_BYTES = 24
#: Server certificates: file name -> the names clients reach that server by (SANs: DNS names, or IP
#: addresses for what parses as one). Both gateways share one certificate (one compose definition);
#: Envoy dials them as `gateways`. `edge` is the published edges' (both profiles' Envoy): browsers
#: reach it on this machine; :func:`server_names` adds ``EDGE_TLS_NAMES``.
SERVERS = {
    "nats": ("nats",),
    "replay": ("replay",),
    "gateway": ("gateways", "gateway-1", "gateway-2"),
    "influxdb": ("influxdb",),
    "serve": ("serve",),
    "edge": ("localhost", "127.0.0.1"),
}
EDGE = "edge"
#: The environment variable with the edge certificate's extra names (compose passes it from .env).
EDGE_NAMES_VARIABLE = "EDGE_TLS_NAMES"
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
#: Client certificates: file name -> common name (the roles' certificate for nats-server's mTLS).
CLIENTS = {"nats-client": "mbostream-bus-client"}
CA_FILE = "ca.crt"
#: Every file of the TLS set (in the `certs` volume and in ``PROVIDED/tls``).
CERT_FILES = (CA_FILE, *(f"{name}.{ext}" for name in (*SERVERS, *CLIENTS) for ext in ("crt", "key")))
VALIDITY = datetime.timedelta(days=730)
RENEW_BEFORE = datetime.timedelta(days=30)


def server_names(extra_edge_names: str = "") -> dict[str, tuple[str, ...]]:
    """:data:`SERVERS` with ``extra_edge_names`` (comma-separated names or IP addresses) added to the
    edge's; ValueError naming one that is neither."""
    extra = [name.strip() for name in extra_edge_names.split(",") if name.strip()]
    for name in extra:
        if not _DNS_NAME.fullmatch(name) and not _is_address(name):
            raise ValueError(f"{EDGE_NAMES_VARIABLE}: {name!r} is neither a DNS name nor an IP address")
    return {**SERVERS, EDGE: tuple(dict.fromkeys((*SERVERS[EDGE], *extra)))}


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(n)) if _is_address(n) else x509.DNSName(n) for n in names]


def _write(path: Path, value: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    with os.fdopen(fd, "wb") as file:
        file.write(value)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mbostream compose"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, sans: tuple[str, ...] = (), server: bool = True
) -> x509.Certificate:
    """A CA (``issuer`` None: self-signed) or a leaf signed by ``issuer``, valid from a minute ago."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        # Server certificates may also authenticate as clients (the health check presents one under mTLS).
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_tls_set(servers: dict[str, tuple[str, ...]]) -> dict[str, bytes]:
    """A fresh CA and every certificate of :data:`CERT_FILES` (the servers' naming ``servers``), as
    file name -> PEM bytes."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("mbostream compose CA", ca_key, None)
    files = {CA_FILE: _pem(ca)}
    leaves = [(name, name, sans, True) for name, sans in servers.items()] + [(name, cn, (), False) for name, cn in CLIENTS.items()]
    for name, subject, sans, server in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.crt"] = _pem(_certificate(subject, key, (ca.subject, ca_key), sans=sans, server=server)) + _pem(ca)
        files[f"{name}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return files


def _tls_set_is_current(certs: Path, servers: dict[str, tuple[str, ...]]) -> bool:
    """Every file of the set is there, no certificate expires within :data:`RENEW_BEFORE`, and each
    server's certificate names what ``servers`` says (a set made by an older version, or before
    ``EDGE_TLS_NAMES`` changed, may not)."""
    if not all((certs / name).is_file() for name in CERT_FILES):
        return False
    deadline = datetime.datetime.now(datetime.timezone.utc) + RENEW_BEFORE
    try:
        for name in CERT_FILES:
            if name.endswith(".crt"):
                if any(c.not_valid_after_utc < deadline for c in x509.load_pem_x509_certificates((certs / name).read_bytes())):
                    return False
        for name, sans in servers.items():
            leaf = x509.load_pem_x509_certificates((certs / f"{name}.crt").read_bytes())[0]
            if list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) != _general_names(sans):
                return False
    except (ValueError, x509.ExtensionNotFound):
        return False
    return True


def tls(certs: Path, provided: Path, extra_edge_names: str = "") -> int:
    """The TLS set in ``certs`` (see the module's docstring); 0, or 1 with the reason on stderr."""
    certs.chmod(0o755)
    try:
        servers = server_names(extra_edge_names)
    except ValueError as exc:
        print(f"secrets-init: {exc}", file=sys.stderr)
        return 1
    if provided.is_dir():
        missing = [name for name in CERT_FILES if not (provided / name).is_file()]
        if missing:
            print(f"secrets-init: {provided} must hold the whole TLS set; missing: {', '.join(missing)}", file=sys.stderr)
            return 1
        for name in CERT_FILES:
            try:
                value = (provided / name).read_bytes()
            except OSError as exc:
                print(f"secrets-init: {provided / name} cannot be read ({exc.strerror}): make it readable by uid {os.getuid()}", file=sys.stderr)
                return 1
            if not (certs / name).exists() or (certs / name).read_bytes() != value:
                _write(certs / name, value)
        print(f"secrets-init: TLS certificates: from {provided}")
    elif _tls_set_is_current(certs, servers):
        print("secrets-init: TLS certificates: kept")
    else:
        for name, value in _new_tls_set(servers).items():
            _write(certs / name, value)
        print(f"secrets-init: TLS certificates: generated (a new CA; servers: {', '.join(servers)}; the edge as {', '.join(servers[EDGE])})")
    return 0


def main(out: Path, provided: Path, certs: Path) -> int:
    out.chmod(0o755)
    for name in NAMES:
        target, mine = out / name, provided / name
        if mine.exists():
            try:
                value = mine.read_bytes().strip()
            except OSError as exc:
                print(f"secrets-init: {mine} cannot be read ({exc.strerror}): make it readable by uid {os.getuid()}", file=sys.stderr)
                return 1
            if not value:
                print(f"secrets-init: {mine} is empty", file=sys.stderr)
                return 1
            if not target.exists() or target.read_bytes() != value:
                _write(target, value)
            print(f"secrets-init: {name}: from {mine}")
        elif target.exists() and target.stat().st_size > 0:
            print(f"secrets-init: {name}: kept")
        else:
            _write(target, secrets.token_hex(TOKEN_BYTES).encode())
            print(f"secrets-init: {name}: generated")
    return tls(certs, provided / "tls", os.environ.get(EDGE_NAMES_VARIABLE, ""))


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
