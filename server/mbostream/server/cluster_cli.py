"""``mbostream run --gateways N``: the run command's scale-out form (flags → settings → the cluster launcher)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mbostream import logs
from mbostream.errors import ConfigError
from mbostream.server.cli import _settings_from_args


def _cmd_run_cluster(args: argparse.Namespace) -> int:
    import asyncio
    import secrets

    from mbostream.edge.cluster import ClusterSpec, ClusterTls, run_cluster, spec_flags

    settings = _settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    if settings.book_port > 0:
        # N gateways on one host cannot share a port: each takes a free one, the edge knows which.
        raise ConfigError("--book-port / MBOSTREAM_BOOK_PORT", "with --gateways each gateway picks a free book port: give 0 (or -1 for none)")
    page_token = None
    if settings.control_token is None:
        # As the single-server run: a token made for this run, handed to the UI in its URL.
        page_token = secrets.token_urlsafe(32)
        settings = dataclasses.replace(settings, control_token=page_token)
    pacing = {"rate": ("--rate", settings.rate), "speed": ("--speed", settings.speed), "max": ("--max", True)}[settings.pacing]
    spec = ClusterSpec(
        gateways=args.gateways,
        files=settings.files,
        replay_flags=spec_flags([pacing, ("--loop", settings.loop), ("--batch-records", settings.batch_records)]),
        gateway_flags=spec_flags([("--max-streams", settings.max_streams), ("--book-interval-ms", settings.book_interval_ms)]),
        store=settings.store,
        book_ports=settings.book_port == 0,
        control_token=settings.control_token,
        nats_server=args.nats_server,
        edge_port=settings.edge_port,
        host=settings.host,
        static_dir=Path(args.static_dir),
        allowed_origins=tuple(o.strip() for o in settings.allowed_origins.split(",") if o.strip()),
        log_level=settings.log_level,
        log_format=settings.log_format,
        tls=ClusterTls(
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            client_ca_file=settings.tls_client_ca_file,
            nats_ca_file=settings.nats_tls_ca_file,
            nats_cert_file=settings.nats_tls_cert_file,
            nats_key_file=settings.nats_tls_key_file,
            edge_cert_file=settings.edge_tls_cert_file,
            edge_key_file=settings.edge_tls_key_file,
            edge_client_cert_file=settings.edge_tls_client_cert_file,
            edge_client_key_file=settings.edge_tls_client_key_file,
        ),
    )
    return asyncio.run(run_cluster(spec, page_token=page_token))


def _gateway_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} is not 1 to 64")
    return value


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Adds ``--gateways N`` and ``--nats-server PATH`` to ``mbostream run`` (registered before)."""
    run = sub.choices["run"]
    run.add_argument(
        "--gateways", type=_gateway_count, default=None, metavar="N",
        help="scale out: a local nats-server, the replayer, N gateways and the store behind Envoy (1-64)",
    )  # fmt: skip
    run.add_argument(
        "--nats-server", default=None, metavar="PATH",
        help="the nats-server binary for --gateways (MBOSTREAM_NATS_SERVER; default: scripts/install-nats-server's build)",
    )  # fmt: skip
    single = run.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        return _cmd_run_cluster(args) if args.gateways else int(single(args))

    run.set_defaults(func=dispatch)
