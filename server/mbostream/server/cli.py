"""The ``serve`` command (and later ``run``): flags → settings → the server."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from mbostream import logs
from mbostream.config import RANGES, load_settings


def _settings_from_args(args: argparse.Namespace, **extra: object) -> Any:
    """Settings of ``serve``, ``run`` and ``replay``: :func:`serving_flags`, the replay's flags of
    :func:`add_server_arguments` and ``extra`` (a role's own flags; None: not given)."""
    pacing = "max" if args.max else "speed" if args.speed is not None else "rate" if args.rate is not None else None
    flags = {
        **serving_flags(args),
        "files": tuple(args.file) or None,
        "pacing": pacing,
        "rate": args.rate,
        "speed": args.speed,
        "loop": True if args.loop else None,
        "batch_records": args.batch_records,
        "store": False if args.no_store else None,
        "edge_port": getattr(args, "edge_port", None),
        "allowed_origins": ",".join(getattr(args, "allowed_origin", None) or []) or None,
        "edge_tls_cert_file": getattr(args, "edge_tls_cert_file", None),
        "edge_tls_key_file": getattr(args, "edge_tls_key_file", None),
        **extra,
    }
    if args.control_token_file:
        import os

        environ = {**os.environ, "MBOSTREAM_CONTROL_TOKEN_FILE": args.control_token_file}
        environ.pop("MBOSTREAM_CONTROL_TOKEN", None)
        return load_settings(flags, environ)
    return load_settings(flags)


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from mbostream.server.app import serve

    settings = _settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))


#: The built web UI, when running from a source checkout.
DEFAULT_STATIC_DIR = Path(__file__).resolve().parents[3] / "web" / "dist"


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import secrets

    from mbostream.server.app import serve

    settings = _settings_from_args(args)
    if settings.tls_client_ca_file and not settings.edge_tls_client_cert_file:
        from mbostream.errors import ConfigError

        # The edge reaches the server over TLS (its certificate pinned); with mTLS it needs a client certificate.
        raise ConfigError(
            "--tls-client-ca-file / MBOSTREAM_TLS_CLIENT_CA_FILE",
            "with mTLS run's Envoy edge needs a client certificate: set MBOSTREAM_EDGE_TLS_CLIENT_CERT_FILE and the key",
        )
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


def add_setting_argument(
    p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, flag: str, setting: str, text: str, default: str = "", **kwargs: Any
) -> None:
    """A number flag parsed by its setting's :data:`~mbostream.config.RANGES` entry (so the flag and
    its variable accept the same values); its help is ``text (range; default D)``."""
    tail = f"; default {default}" if default else ""
    p.add_argument(flag, type=RANGES[setting].argtype, default=None, help=f"{text} ({_range(setting)}{tail})", **kwargs)


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` and ``run``; every one also has an ``MBOSTREAM_*`` variable.

    Numbers are parsed by their setting's :data:`~mbostream.config.RANGES` entry, so a flag and its
    variable accept exactly the same values.
    """
    p.add_argument("file", nargs="*", help="DBN MBO files to replay (default: the generated sample)")
    pace = p.add_mutually_exclusive_group()
    add_setting_argument(pace, "--rate", "rate", "fixed records per second", "100000", metavar="MSGS_PER_S")
    add_setting_argument(pace, "--speed", "speed", "recorded ts_recv gaps divided by X", metavar="X")
    pace.add_argument("--max", action="store_true", help="as fast as the pipeline allows")
    p.add_argument("--loop", action="store_true", help="start over at the end (books cleared with R records)")
    add_serving_arguments(p)
    add_setting_argument(p, "--batch-records", "batch_records", "records per replay step at most", "4096")
    p.add_argument("--control-token-file", default=None, help="file holding the ReplayService token")
    p.add_argument("--no-store", action="store_true", help="do not persist the feed (no InfluxDB writes, no spool)")


#: The settings :func:`add_serving_arguments` sets, each under its flag's ``dest``.
SERVING_SETTINGS = (
    "host",
    "port",
    "metrics_port",
    "book_port",
    "book_threads",
    "book_thread_priority",
    "max_streams",
    "max_streams_per_peer",
    "listeners",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "book_interval_ms",
    "book_interval_max_ms",
    "book_cpu_target",
    "grace_seconds",
)


def serving_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The one flag → setting mapping of :func:`add_serving_arguments` and the global ``--log-*``
    flags (None: not given, so the ``MBOSTREAM_*`` variable or the default applies)."""
    return {
        **{name: getattr(args, name) for name in SERVING_SETTINGS},
        "log_level": args.log_level,
        "log_format": args.log_format if args.log_format != "json" else None,
    }


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of every serving process (``serve``, ``run``, ``replay``, ``gateway``): where it
    listens, how many streams it takes, how often books refresh, how long shutdown waits; read back
    by :func:`serving_flags`."""
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
        "--book-port", type=RANGES["book_port"].argtype, default=None,
        help="also serve StreamBook on this port through the native HTTP/2 transport, ~10x less CPU a "
        "message (TLS and mTLS as --port; default -1 off; 0 free)",
    )  # fmt: skip
    add_setting_argument(p, "--book-threads", "book_threads", "threads writing to the --book-port clients (each its share of the connections)", "1")
    add_setting_argument(
        p, "--book-thread-priority", "book_thread_priority",
        "SCHED_FIFO priority of those threads, so they write as soon as a refresh wakes them (needs CAP_SYS_NICE "
        "or RLIMIT_RTPRIO)", "0",
    )  # fmt: skip
    add_setting_argument(p, "--max-streams", "max_streams", "concurrent streams allowed", "1000")
    add_setting_argument(p, "--max-streams-per-peer", "max_streams_per_peer", "concurrent streams one client address may hold", "256")
    add_setting_argument(p, "--listeners", "listeners", "gRPC servers sharing the port, each admitting new streams on its own", "4")
    p.add_argument("--tls-cert-file", default=None, help="serve gRPC over TLS: the certificate chain (PEM; with --tls-key-file)")
    p.add_argument("--tls-key-file", default=None, help="the TLS private key (PEM)")
    p.add_argument("--tls-client-ca-file", default=None, help="mTLS: require client certificates signed by this CA (PEM)")
    add_setting_argument(p, "--book-interval-ms", "book_interval_ms", "book stream refresh period", "5")
    add_setting_argument(p, "--book-interval-max-ms", "book_interval_max_ms", "longest the refresh period stretches to while the server is over its CPU target or behind", "50")
    add_setting_argument(p, "--book-cpu-target", "book_cpu_target", "server CPU (cores) the book refresh interval keeps the process at, stretching it when books would take more", "0.57")
    add_setting_argument(p, "--grace-seconds", "grace_seconds", "shutdown grace period", "5")


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
