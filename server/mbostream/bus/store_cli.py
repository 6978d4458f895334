"""``mbostream store``: its flags, parsed without importing the store (NATS, gRPC, Prometheus, numpy),
which :func:`_cmd_store` imports when the command runs."""

from __future__ import annotations

import argparse

from mbostream.config import RANGES


def _cmd_store(args: argparse.Namespace) -> int:
    from mbostream.bus.store import _cmd_store as run

    return run(args)


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Adds ``store`` to the ``mbostream`` command."""
    p = sub.add_parser("store", help="storage as a durable consumer of the bus (InfluxDB or the spool)")
    p.add_argument("--nats", default=None, metavar="URL", help="the bus (MBOSTREAM_NATS_URL), e.g. nats://127.0.0.1:4222")
    p.add_argument("--host", default=None, help="listen address of the health and metrics ports (default 127.0.0.1)")
    p.add_argument("--port", type=RANGES["port"].argtype, default=None, help="gRPC health port (MBOSTREAM_PORT; 0 picks a free one)")
    p.add_argument(
        "--metrics-port", type=RANGES["metrics_port"].argtype, default=None, help="Prometheus port (MBOSTREAM_METRICS_PORT; 0 free; -1 off)"
    )
    p.add_argument("--spool-dir", default=None, help="the spool, and the store's state file (MBOSTREAM_SPOOL_DIR)")
    p.add_argument(
        "--store-ack-interval-seconds", "--ack-interval", dest="ack_interval",
        type=RANGES["store_ack_interval_seconds"].argtype, default=None,
        help="seconds per round: offered, made durable, acknowledged "
        f"(MBOSTREAM_STORE_ACK_INTERVAL_SECONDS; {RANGES['store_ack_interval_seconds'].describe()}; default 1)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_store)
