"""The bus roles' commands: ``mbostream replay FILE... --nats URL`` and ``mbostream gateway --nats URL``."""

from __future__ import annotations

import argparse
from typing import Any

from mbostream import logs
from mbostream.config import load_settings
from mbostream.server.cli import _settings_from_args, add_server_arguments, add_serving_arguments, add_setting_argument, serving_flags


def _add_bus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", "--nats-url", dest="nats_url", default=None, metavar="URL", help="the bus: NATS server with JetStream (nats://host:port)")
    add_setting_argument(p, "--bus-max-age-seconds", "bus_max_age_seconds", "record stream retention by age", "3600")
    add_setting_argument(p, "--bus-max-bytes", "bus_max_bytes", "record stream retention by size", "1 GiB")


def _bus_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "nats_url": args.nats_url,
        "bus_max_age_seconds": args.bus_max_age_seconds,
        "bus_max_bytes": args.bus_max_bytes,
    }


def _cmd_replay(args: argparse.Namespace) -> int:
    from mbostream.server.roles import ReplayerApp, run

    settings = _settings_from_args(args, **_bus_flags(args), snapshot_interval_seconds=args.snapshot_interval_seconds)
    logs.configure(settings.log_level, settings.log_format)
    return run(ReplayerApp(settings))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from mbostream.server.roles import GatewayApp, run

    flags = {**serving_flags(args), **_bus_flags(args), "replay_buffer_records": args.replay_buffer_records, "store": False}
    settings = load_settings(flags)
    logs.configure(settings.log_level, settings.log_format)
    return run(GatewayApp(settings))


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Adds ``replay`` and ``gateway`` to the ``mbostream`` command."""
    p = sub.add_parser("replay", help="the bus's one replayer: serve's replay and ReplayService, publishing to NATS JetStream")
    add_server_arguments(p)
    _add_bus_arguments(p)
    add_setting_argument(p, "--snapshot-interval-seconds", "snapshot_interval_seconds", "how often every book's snapshot goes to the bus", "5")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("gateway", help="a stateless replica fed from the bus: MarketDataService, health NOT_SERVING until caught up")
    _add_bus_arguments(p)
    add_serving_arguments(p)
    add_setting_argument(p, "--replay-buffer-records", "replay_buffer_records", "records kept in memory for resumes; older ones are read from the bus")
    p.set_defaults(func=_cmd_gateway)
