"""Transport room: one place that opens gRPC channels to an mbostream server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc import aio as grpc_aio
from mbostream_core.argtypes import Range

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

#: The HTTP/2 receive windows ``receive_window`` may set, in bytes: from HTTP/2's initial window
#: (the Go client's floor too) to HTTP/2's largest.
MIN_RECEIVE_WINDOW: Final = 64 * 1024
MAX_RECEIVE_WINDOW: Final = 2**31 - 1
RECEIVE_WINDOW: Final = Range(low=MIN_RECEIVE_WINDOW, high=MAX_RECEIVE_WINDOW, integer=True, unit="bytes")


def receive_window_options(window: int) -> tuple[tuple[str, Any], ...]:
    """The channel arguments that fix the channel's HTTP/2 receive windows (each stream's and the
    connection's) at ``window`` bytes, instead of gRPC's 4 MiB grown by its bandwidth probe.

    Raises
    ------
    ValueError
        When ``window`` is not a whole number in :data:`RECEIVE_WINDOW`.
    """
    try:
        bytes_ = int(RECEIVE_WINDOW.check(window))
    except ValueError as exc:
        raise ValueError(f"receive_window {exc}") from None
    # gRPC core announces lookahead_bytes as both windows; without the probe they stay there.
    return (("grpc.http2.lookahead_bytes", bytes_), ("grpc.http2.bdp_probe", 0))


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
    target: str,
    *,
    own_connection: bool = False,
    options: Sequence[tuple[str, Any]] = (),
    tls: TlsConfig | None = None,
    receive_window: int | None = None,
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
    receive_window
        Fix the HTTP/2 receive windows at this many bytes (see :func:`receive_window_options`);
        None: gRPC's own (4 MiB a stream, grown by its bandwidth probe).
    """
    merged = dict(_DEFAULT_OPTIONS)
    if receive_window is not None:
        merged.update(receive_window_options(receive_window))
    if own_connection:
        merged["grpc.use_local_subchannel_pool"] = 1
    if tls is not None and tls.server_name:
        merged["grpc.ssl_target_name_override"] = tls.server_name
    merged.update(dict(options))
    if tls is not None:
        return grpc_aio.secure_channel(target, tls.credentials(), options=list(merged.items()))
    return grpc_aio.insecure_channel(target, options=list(merged.items()))
