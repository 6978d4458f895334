"""The ``serve`` command (and later ``run``): flags → settings → the server."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
from pathlib import Path
from typing import Any

from mbostream import logs
from mbostream.config import RANGES, load_settings


def _settings_from_args(args: argparse.Namespace) -> Any:
    pacing = "max" if args.max else "speed" if args.speed is not None else "rate" if args.rate is not None else None
    flags = {
        "files": tuple(args.file) or None,
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "pacing": pacing,
        "rate": args.rate,
        "speed": args.speed,
        "loop": True if args.loop else None,
        "log_level": args.log_level,
        "log_format": args.log_format if args.log_format != "json" else None,
        "max_streams": args.max_streams,
        **tls_flags(args),
        "book_interval_ms": args.book_interval_ms,
        "book_interval_max_ms": args.book_interval_max_ms,
        "grace_seconds": args.grace_seconds,
        "batch_records": args.batch_records,
        "store": False if args.no_store else None,
        "edge_port": getattr(args, "edge_port", None),
        "allowed_origins": ",".join(getattr(args, "allowed_origin", None) or []) or None,
        "edge_tls_cert_file": getattr(args, "edge_tls_cert_file", None),
        "edge_tls_key_file": getattr(args, "edge_tls_key_file", None),
    }
    if args.control_token_file:
        import os

        environ = {**os.environ, "MBOSTREAM_CONTROL_TOKEN_FILE": args.control_token_file}
        environ.pop("MBOSTREAM_CONTROL_TOKEN", None)
        return load_settings(flags, environ)
    return load_settings(flags)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mbostream.server.app import serve

    settings = _settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


#: The built web UI, when running from a source checkout.
DEFAULT_STATIC_DIR = Path(__file__).resolve().parents[3] / "web" / "dist"


def _cmd_run(args: argparse.Namespace) -> int:
    from mbostream.server.app import serve

    settings = _settings_from_args(args)
    if settings.tls_client_ca_file:
        from mbostream.errors import ConfigError

        # The edge reaches the server over TLS (its certificate pinned) but holds no client certificate.
        raise ConfigError("--tls-client-ca-file / MBOSTREAM_TLS_CLIENT_CA_FILE", "mTLS is for serve, replay and gateway: run's Envoy edge has no client certificate")
    logs.configure(settings.log_level, settings.log_format)
    page_token = None
    if settings.control_token is None:
        # No token configured: this run makes one, kept in memory only, and prints the UI's URL
        # carrying it (in the fragment, as Jupyter does), so the operator panel works out of the box.
        page_token = secrets.token_urlsafe(32)
        settings = dataclasses.replace(settings, control_token=page_token)
    return asyncio.run(serve(settings, with_edge=True, static_dir=Path(args.static_dir), page_token=page_token))


def _range(setting: str) -> str:
    return RANGES[setting].describe()


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` and ``run``; every one also has an ``MBOSTREAM_*`` variable.

    Numbers are parsed by their setting's :data:`~mbostream.config.RANGES` entry, so a flag and its
    variable accept exactly the same values.
    """
    p.add_argument("file", nargs="*", help="DBN MBO files to replay (default: the generated sample)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=RANGES["rate"].argtype, default=None, metavar="MSGS_PER_S",
        help=f"fixed records per second ({_range('rate')}; default 100000)",
    )  # fmt: skip
    pace.add_argument(
        "--speed", type=RANGES["speed"].argtype, default=None, metavar="X",
        help=f"recorded ts_recv gaps divided by X ({_range('speed')})",
    )  # fmt: skip
    pace.add_argument("--max", action="store_true", help="as fast as the pipeline allows")
    p.add_argument("--loop", action="store_true", help="start over at the end (books cleared with R records)")
    add_listen_arguments(p)
    p.add_argument(
        "--batch-records", type=RANGES["batch_records"].argtype, default=None,
        help=f"records per replay step at most ({_range('batch_records')}; default 4096)",
    )  # fmt: skip
    p.add_argument("--control-token-file", default=None, help="file holding the ReplayService token")
    p.add_argument("--no-store", action="store_true", help="do not persist the feed (no InfluxDB writes, no spool)")


def tls_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The per-peer stream limit and TLS flags of :func:`add_listen_arguments` (None: not given)."""
    names = ("max_streams_per_peer", "tls_cert_file", "tls_key_file", "tls_client_ca_file")
    return {name: getattr(args, name) for name in names}


def add_listen_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of every serving process (``serve``, ``run``, ``replay``, ``gateway``): where it
    listens, how many streams it takes, how often books refresh, how long shutdown waits."""
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=RANGES["port"].argtype, default=None,
        help="gRPC port (default 50051; 0 picks a free one); an occupied port is an error",
    )  # fmt: skip
    p.add_argument(
        "--metrics-port", type=RANGES["metrics_port"].argtype, default=None,
        help="Prometheus port (default 9464; 0 free; -1 off)",
    )  # fmt: skip
    p.add_argument(
        "--max-streams", type=RANGES["max_streams"].argtype, default=None,
        help=f"concurrent streams allowed ({_range('max_streams')}; default 1000)",
    )  # fmt: skip
    p.add_argument(
        "--max-streams-per-peer", type=RANGES["max_streams_per_peer"].argtype, default=None,
        help=f"concurrent streams one client address may hold ({_range('max_streams_per_peer')}; default 256)",
    )  # fmt: skip
    p.add_argument("--tls-cert-file", default=None, help="serve gRPC over TLS: the certificate chain (PEM; with --tls-key-file)")
    p.add_argument("--tls-key-file", default=None, help="the TLS private key (PEM)")
    p.add_argument("--tls-client-ca-file", default=None, help="mTLS: require client certificates signed by this CA (PEM)")
    p.add_argument(
        "--book-interval-ms", type=RANGES["book_interval_ms"].argtype, default=None,
        help=f"book stream refresh period ({_range('book_interval_ms')}; default 5)",
    )  # fmt: skip
    p.add_argument(
        "--book-interval-max-ms", type=RANGES["book_interval_max_ms"].argtype, default=None,
        help=f"longest the refresh period stretches to while the server is behind ({_range('book_interval_max_ms')}; default 50)",
    )  # fmt: skip
    p.add_argument(
        "--grace-seconds", type=RANGES["grace_seconds"].argtype, default=None,
        help=f"shutdown grace period ({_range('grace_seconds')}; default 5)",
    )  # fmt: skip


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Adds ``serve`` to the ``mbostream`` command."""
    p = sub.add_parser("serve", help="replay files as a live feed and serve books and events over gRPC")
    add_server_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("run", help="serve, with Envoy in front: the web UI, gRPC-Web and gRPC on one URL")
    add_server_arguments(p)
    p.add_argument(
        "--edge-port", type=RANGES["edge_port"].argtype, default=None, help="the one port of UI and API (default 8080)"
    )
    p.add_argument("--allowed-origin", action="append", default=[], help="extra CORS origin (repeatable)")
    p.add_argument("--edge-tls-cert-file", default=None, help="serve HTTPS at the edge: the certificate chain (PEM; with --edge-tls-key-file)")
    p.add_argument("--edge-tls-key-file", default=None, help="the edge's TLS private key (PEM)")
    p.add_argument("--static-dir", default=str(DEFAULT_STATIC_DIR), help="the built web UI (default web/dist)")
    p.set_defaults(func=_cmd_run)
