"""The bus roles' commands: ``mbostream replay FILE... --nats URL`` and ``mbostream gateway --nats URL``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mbostream import logs
from mbostream.config import RANGES, load_settings
from mbostream.server.cli import _range, _settings_from_args, add_listen_arguments, add_server_arguments, tls_flags


def _add_bus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", "--nats-url", dest="nats_url", default=None, metavar="URL", help="the bus: NATS server with JetStream (nats://host:port)")
    p.add_argument(
        "--bus-max-age-seconds", type=RANGES["bus_max_age_seconds"].argtype, default=None,
        help=f"record stream retention by age ({_range('bus_max_age_seconds')}; default 3600)",
    )  # fmt: skip
    p.add_argument(
        "--bus-max-bytes", type=RANGES["bus_max_bytes"].argtype, default=None,
        help=f"record stream retention by size ({_range('bus_max_bytes')}; default 1 GiB)",
    )  # fmt: skip


def _bus_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "nats_url": args.nats_url,
        "bus_max_age_seconds": args.bus_max_age_seconds,
        "bus_max_bytes": args.bus_max_bytes,
    }


def _cmd_replay(args: argparse.Namespace) -> int:
    from mbostream.server.roles import ReplayerApp, run

    settings = _settings_from_args(args)
    extra = {k: v for k, v in {**_bus_flags(args), "snapshot_interval_seconds": args.snapshot_interval_seconds}.items() if v is not None}
    settings = dataclasses.replace(settings, **extra)  # each flag was checked against its range by argparse
    logs.configure(settings.log_level, settings.log_format)
    return run(ReplayerApp(settings))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from mbostream.server.roles import GatewayApp, run

    flags = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "log_level": args.log_level,
        "log_format": args.log_format if args.log_format != "json" else None,
        "max_streams": args.max_streams,
        **tls_flags(args),
        "book_interval_ms": args.book_interval_ms,
        "book_interval_max_ms": args.book_interval_max_ms,
        "grace_seconds": args.grace_seconds,
        "replay_buffer_records": args.replay_buffer_records,
        "store": False,
        **_bus_flags(args),
    }
    settings = load_settings(flags)
    logs.configure(settings.log_level, settings.log_format)
    return run(GatewayApp(settings))


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Adds ``replay`` and ``gateway`` to the ``mbostream`` command."""
    p = sub.add_parser("replay", help="the bus's one replayer: serve's replay and ReplayService, publishing to NATS JetStream")
    add_server_arguments(p)
    _add_bus_arguments(p)
    p.add_argument(
        "--snapshot-interval-seconds", type=RANGES["snapshot_interval_seconds"].argtype, default=None,
        help=f"how often every book's snapshot goes to the bus ({_range('snapshot_interval_seconds')}; default 5)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("gateway", help="a stateless replica fed from the bus: MarketDataService, health NOT_SERVING until caught up")
    _add_bus_arguments(p)
    add_listen_arguments(p)
    p.add_argument(
        "--replay-buffer-records", type=RANGES["replay_buffer_records"].argtype, default=None,
        help=f"records kept in memory for resumes; older ones are read from the bus ({_range('replay_buffer_records')})",
    )  # fmt: skip
    p.set_defaults(func=_cmd_gateway)
