"""Transport room: one place that opens gRPC channels to an mbostream server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

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


def open_channel(
    target: str, *, own_connection: bool = False, options: Sequence[tuple[str, Any]] = ()
) -> grpc_aio.Channel:
    """An insecure ``grpc.aio`` channel with the client's defaults.

    Parameters
    ----------
    target
        ``HOST:PORT`` of the server.
    own_connection
        When true the channel gets its own TCP connection instead of sharing one with other
        channels to the same target (grpc pools connections per process by default).
    options
        Extra channel arguments; they override the defaults.
    """
    merged = dict(_DEFAULT_OPTIONS)
    if own_connection:
        merged["grpc.use_local_subchannel_pool"] = 1
    merged.update(dict(options))
    return grpc_aio.insecure_channel(target, options=list(merged.items()))
