"""The flags of ``mbostream bench cluster|costs|e2e|soak|web|wire``, parsed without importing the
benchmarks: they bring numpy, gRPC, the edge and the browser driver, which only running one needs.
Each handler imports its benchmark when the command runs. ``mbostream storage bench``'s flags are
in :mod:`.bench_storage_cli`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mbostream.tools.bench_server import CPU_SHARE  # stdlib only: no benchmark imported
from mbostream_core.argtypes import non_negative_float, non_negative_int, positive_float, positive_int


def _cmd_cluster(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_cluster import _cmd_cluster as run

    return run(args)


def _cmd_e2e(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_e2e import _cmd_e2e as run

    return run(args)


def _cmd_costs(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_costs import _cmd

    return _cmd(args)


def _cmd_soak(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_soak import _cmd_soak as run

    return run(args)


def _cmd_web(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_web import _cmd_web as run

    return run(args)


def _cmd_wire(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_wire import _cmd_wire as run

    return run(args)


def register_wire(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``wire`` to ``mbostream bench``."""
    p = bench.add_parser("wire", help="the server's share of publish→client latency, from a packet capture (pcap)")
    p.add_argument("capture", type=Path, help="a pcap file of the server's traffic (tcpdump -w, plaintext gRPC)")
    p.add_argument("--port", type=positive_int, action="append", help="a server port to read (repeatable; default every port)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_cmd_wire)


def register_cluster(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``cluster`` to ``mbostream bench``."""
    p = bench.add_parser("cluster", help="mbostream run --gateways N measured: bus records/s, ingest, bus latency, cold start, failover")
    p.add_argument("file", nargs="*", help="DBN MBO files (default: ../shared/data/CLX5_mbo.dbn, looped)")
    p.add_argument("--gateways", type=int, default=2, help="gateways (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window of each --max phase (default 10)")
    p.add_argument("--rate", type=positive_float, default=500_000.0, help="records/s of the latency phase (default 500000)")
    p.add_argument("--failovers", type=int, default=3, help="gateway kills measured (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_cmd_cluster)


def add_e2e_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``mbostream bench e2e``."""
    p.add_argument("file", nargs="*", help="DBN MBO files to serve (default: the generated sample)")
    p.add_argument("--scenario", choices=("max", "rate", "both"), default="both", help="what to run (default both)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="measured window per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds streamed before each window (default 2)")
    p.add_argument("--rate", type=positive_float, default=500_000.0, help="records/s of the rate scenario")
    p.add_argument("--book-streams", type=non_negative_int, default=100, help="StreamBook clients (default 100)")
    p.add_argument("--events-streams", type=non_negative_int, default=1, help="StreamEvents clients (default 1)")
    p.add_argument("--depth", type=non_negative_int, default=10, help="book stream depth (default 10)")
    p.add_argument("--max-updates-per-second", type=float, default=0.0, help="per-book limit asked by book streams")
    p.add_argument(
        "--connections", type=non_negative_int, default=0, help="client TCP connections (0: one per stream)"
    )
    p.add_argument(
        "--spread", action="store_true", help="each book stream watches one instrument (round-robin), not every book"
    )
    p.add_argument("--combine", action="store_true", help="book streams ask for combine_books (one message per refresh)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to separate CPUs")
    p.add_argument(
        "--server-cpu-share",
        type=CPU_SHARE.argtype,
        metavar="F",
        help=f"cap the server's CPU time at F ({CPU_SHARE.describe()}; a cpu cgroup, as root): "
        "the figures with the rest of the core taken; e.g. 0.6 for issue 13's 60%% headroom",
    )
    p.add_argument(
        "--native-books",
        action="store_true",
        help="book streams read the server's --book-port (StreamBook on the native HTTP/2 transport), "
        "events its gRPC port (Go client only)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="the server serves over TLS (every port, the native book port too; a throw-away CA) and "
        "the client speaks TLS (Go client only): what TLS costs",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for mbostream serve, repeatable (e.g. --server-arg=--no-store)",
    )
    p.add_argument(
        "--client-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for the measuring client, repeatable: mbostream-load's (e.g. "
        "--client-arg=--book-windows=65536,65536 with --native-books), or mbostream-client latency's "
        "with --client python (e.g. --client-arg=--receive-window=65536)",
    )
    p.add_argument(
        "--client",
        choices=("go", "python"),
        help="the measuring client: go (mbostream-load, built on first use; the default when Go is installed) "
        "or python (mbostream-client latency)",
    )
    p.add_argument(
        "--capture",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="capture the server's traffic for SECONDS of each window (tcpdump on the loopback, pinned to the "
        "client's CPU; root) and report the server's share of publish→client, as bench wire does (default 0: off)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a floor is missed")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_cmd_e2e)


def register_e2e(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``e2e`` to ``mbostream bench``."""
    add_e2e_arguments(bench.add_parser("e2e", help="real server + client processes: records/s at --max, latency at a rate"))


def add_costs_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``mbostream bench costs``."""
    p.add_argument("--records", type=int, default=1_000_000, help="records of the generated sample used (default 1M)")
    p.add_argument("--batch-records", type=int, default=1000, help="records per replay step (500k/s in 2 ms steps: 1000)")
    p.add_argument("--streams", type=int, default=100, help="concurrent streams for the book-message costs (default 100)")
    p.add_argument("--messages", type=int, default=100_000, help="book messages streamed for the gRPC cost (default 100k)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_costs)


def register_costs(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``costs`` to ``mbostream bench``."""
    add_costs_arguments(bench.add_parser("costs", help="CPU per record applied, message encoded, book built, gRPC message sent"))


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``mbostream bench soak``."""
    p.add_argument("file", nargs="*", help="DBN MBO files to serve, looped (default: the generated sample)")
    p.add_argument("--minutes", type=positive_float, default=30.0, help="length of the soak (default 30)")
    p.add_argument("--rate", type=positive_float, default=200_000.0, help="records/s replayed (default 200000)")
    p.add_argument("--clients", type=non_negative_int, default=100, help="clients alive at once (default 100)")
    p.add_argument("--events-clients", type=non_negative_int, default=4, help="of which StreamEvents (default 4)")
    p.add_argument("--generations", type=int, default=4, choices=range(1, 101), metavar="N",
                   help="StreamBook groups; one is replaced every churn period (default 4)")  # fmt: skip
    p.add_argument("--churn-seconds", type=positive_float, default=10.0, help="churn period (default 10)")
    p.add_argument("--interval-seconds", type=positive_float, default=10.0, help="sampling interval (default 10)")
    p.add_argument("--depth", type=non_negative_int, default=10, help="book stream depth (default 10)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients to separate CPUs")
    p.add_argument("--store", action="store_true", help="keep the storage sink on (it spools to disk)")
    p.add_argument("--server-arg", action="append", default=[], metavar="FLAG", help="extra mbostream serve flag")
    p.add_argument("--server-log", help="file for the server's output (default: a temporary file)")
    p.add_argument("--result", help="also write the whole result document (every sample and client) here")
    p.add_argument("--strict", action="store_true", help="exit 1 when an events client lost or duplicated a record")
    p.set_defaults(func=_cmd_soak)


def register_soak(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``soak`` to ``mbostream bench``."""
    add_soak_arguments(bench.add_parser("soak", help="a long run with churning clients: RSS, CPU, latency, continuity"))


def add_web_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``mbostream bench web``."""
    p.add_argument("file", nargs="*", help="DBN MBO files to serve (default: the generated sample)")
    p.add_argument("--rate", type=positive_float, default=500_000.0, help="records/s of the replay (default 500000)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="measured window (default 10)")
    p.add_argument("--warmup", type=positive_float, default=3.0, help="seconds on the page before the window (default 3)")
    p.add_argument("--depth", type=positive_int, default=15, help="ladder levels per side (default 15)")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for mbostream serve, repeatable (e.g. --server-arg=--no-store)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_cmd_web)


def register_web(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``web`` to ``mbostream bench``."""
    add_web_arguments(bench.add_parser("web", help="the web UI in headless Chromium at a rate: fps, frame times, CPU"))
