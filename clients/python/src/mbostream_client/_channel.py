"""Transport room: one place that opens gRPC channels to an mbostream server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc import aio as grpc_aio

DEFAULT_TARGET: Final = "127.0.0.1:50051"

#: Snapshot batches hold a whole book in one message; allow what the server may send (64 MiB).
_DEFAULT_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Fail fast while the server is down; the reconnect policy belongs to the caller (Backoff).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """How to reach a server over TLS (PEM files).

    Parameters
    ----------
    ca_file
        The CA that signed the server's certificate (None: the system's roots).
    cert_file, key_file
        This client's certificate and key, for a server that requires them (mTLS); both or neither.
    server_name
        The name to check the server's certificate against, when it is not the target's host.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (mTLS): give both or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials, reading the files now."""

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file), private_key=read(self.key_file), certificate_chain=read(self.cert_file)
        )


def open_channel(
    target: str, *, own_connection: bool = False, options: Sequence[tuple[str, Any]] = (), tls: TlsConfig | None = None
) -> grpc_aio.Channel:
    """A ``grpc.aio`` channel with the client's defaults: over TLS with ``tls``, else plaintext.

    Parameters
    ----------
    target
        ``HOST:PORT`` of the server.
    own_connection
        When true the channel gets its own TCP connection instead of sharing one with other
        channels to the same target (grpc pools connections per process by default).
    options
        Extra channel arguments; they override the defaults.
    tls
        Connect over TLS (see :class:`TlsConfig`); None: plaintext.
    """
    merged = dict(_DEFAULT_OPTIONS)
    if own_connection:
        merged["grpc.use_local_subchannel_pool"] = 1
    if tls is not None and tls.server_name:
        merged["grpc.ssl_target_name_override"] = tls.server_name
    merged.update(dict(options))
    if tls is not None:
        return grpc_aio.secure_channel(target, tls.credentials(), options=list(merged.items()))
    return grpc_aio.insecure_channel(target, options=list(merged.items()))
