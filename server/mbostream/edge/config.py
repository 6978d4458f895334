"""Edge config room: the frozen settings the Envoy config is rendered from, checked on construction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mbostream import tracing
from mbostream.errors import ConfigError

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
DEFAULT_TEMPLATE: Final = REPO_ROOT / "envoy" / "envoy.template.yaml"
MAX_CONNECTIONS: Final = 1024
_ORIGIN: Final = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


@dataclass(frozen=True, kw_only=True)
class EdgeTls:
    """The edge's TLS (PEM files; empty: plaintext on that side).

    ``cert_file``/``key_file``: HTTPS (and gRPC over TLS) towards browsers and clients.
    ``upstream_cert_file``: the servers (the one of ``run``; the replayer and every gateway of
    ``run --gateways N``) speak TLS with this certificate; Envoy connects over TLS and accepts
    exactly that certificate (its SHA-256 is pinned), whoever signed it.
    ``upstream_ca_file``/``upstream_server_name``: instead of a pin, when the servers' certificates
    do not exist yet where the config is rendered (a container image's, rendered at build time):
    Envoy connects over TLS and accepts a certificate signed by this CA (read when Envoy starts)
    that names ``upstream_server_name`` (a DNS SAN, also sent as SNI).
    ``upstream_client_cert_file``/``upstream_client_key_file``: the certificate Envoy presents to
    those servers when they require mTLS.
    """

    cert_file: str = ""
    key_file: str = ""
    upstream_cert_file: str = ""
    upstream_ca_file: str = ""
    upstream_server_name: str = ""
    upstream_client_cert_file: str = ""
    upstream_client_key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("edge TLS", "the certificate and the key go together: give both or neither")
        if bool(self.upstream_client_cert_file) != bool(self.upstream_client_key_file):
            raise ConfigError("edge TLS", "the client certificate and its key go together: give both or neither")
        if self.upstream_cert_file and self.upstream_ca_file:
            raise ConfigError("edge TLS", "the servers are either pinned (their certificate) or validated by a CA and a name, not both")
        if bool(self.upstream_ca_file) != bool(self.upstream_server_name):
            raise ConfigError("edge TLS", "validation by a CA needs the name the servers' certificate carries: give both or neither")
        if self.upstream_client_cert_file and not self.upstream:
            raise ConfigError("edge TLS", "a client certificate for the servers needs TLS to them (the servers' certificate or CA)")

    @property
    def downstream(self) -> bool:
        return bool(self.cert_file)

    @property
    def upstream(self) -> bool:
        return bool(self.upstream_cert_file or self.upstream_ca_file)


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """Everything the Envoy config is rendered from; validated on construction.

    Ports may be 0 (Envoy picks a free one; :class:`~mbostream.edge.supervisor.Edge` reads the
    bound port back), except ``upstream_port``. ``static_dir`` is the built UI (``web/dist``);
    None, or a folder without ``index.html``, serves a page that says how to build it.
    ``allowed_origins`` are the CORS origins other than the edge's own (e.g.
    ``http://localhost:5173`` for the Vite dev server); ``"*"`` allows any.
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
    #: ``mbostream run --gateways N``: every gateway's port (the endpoints of the API's cluster);
    #: empty: ``upstream_port`` alone.
    upstream_ports: tuple[int, ...] = ()
    #: ``mbostream run --gateways N``: the replayer's port, which ReplayService is routed to.
    replayer_port: int | None = None
    #: ``(host, port)`` of the OTLP/gRPC collector Envoy sends its spans to; by default the one the
    #: ``OTEL_*`` environment names for the server (:func:`mbostream.tracing.otlp_endpoint`), None: no tracing.
    otlp_endpoint: tuple[str, int] | None = field(default_factory=tracing.otlp_endpoint)
    #: TLS towards browsers and towards the server (:class:`EdgeTls`); plaintext by default.
    tls: EdgeTls = field(default_factory=EdgeTls)
    #: The server's ``--book-port`` (StreamBook on its native transport, with the server's TLS when
    #: ``tls.upstream``): StreamBook is routed there, everything else to ``upstream_port``; None:
    #: StreamBook too goes to the latter. With gateways, only when they share one address and port
    #: (one ``upstream_ports`` entry, a name DNS resolves to each of them).
    book_port: int | None = None
    #: ``mbostream run --gateways N`` with native book ports: each gateway's book port, in the
    #: order of ``upstream_ports`` (each gateway health-checked on its own gRPC port); empty: none.
    book_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("listen_port", "admin_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(name, f"{getattr(self, name)} is not a port number (0-65535, 0 picks a free one)")
        if not 1 <= self.upstream_port <= 65535:
            raise ConfigError("upstream_port", f"{self.upstream_port} is not a port number (1-65535)")
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ConfigError("allowed_origins", f"{origin!r} is not an origin like http://host:port (no path)")
        for port in (*self.upstream_ports, *([self.replayer_port] if self.replayer_port is not None else [])):
            if not 1 <= port <= 65535:
                raise ConfigError("upstream_ports", f"{port} is not a port number (1-65535)")
        if self.book_ports:
            if self.book_port is not None:
                raise ConfigError("book_ports", "either book_port (one address) or book_ports (one per upstream port), not both")
            if len(self.book_ports) != len(self.upstream_ports):
                raise ConfigError("book_ports", "one book port per upstream port")
            for port in self.book_ports:
                if not 1 <= port <= 65535:
                    raise ConfigError("book_ports", f"{port} is not a port number (1-65535)")
        if self.book_port is not None:
            if not 1 <= self.book_port <= 65535:
                raise ConfigError("book_port", f"{self.book_port} is not a port number (1-65535)")
            if len(self.upstream_ports) > 1:
                # Gateways on one host each have their own ports; behind one name (compose's
                # cluster profile, Kubernetes) they share the gRPC and the book port.
                raise ConfigError("book_port", "the native book port needs the gateways behind one address: not with several upstream ports (book_ports)")
        if self.max_connections < 1:
            raise ConfigError("max_connections", "must be at least 1")
        if not self.template.is_file():
            raise ConfigError("template", f"{self.template} is not a file")
