"""Command-line room: ``mbostream`` and its subcommands (argument parsing and exit codes only)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from mbostream import logs
from mbostream_core.argtypes import non_negative_int, positive_int
from mbostream.bus.store_cli import register_cli as register_store_cli
from mbostream.errors import MbostreamError
from mbostream.server.cli import register_cli as register_server_cli
from mbostream.server.cluster_cli import register_cli as register_cluster_cli
from mbostream.server.roles_cli import register_cli as register_roles_cli
from mbostream.storage.cli import register_cli as register_storage_cli
from mbostream.tools import bench_cli

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_ERROR = 2


def _cmd_book(args: argparse.Namespace) -> int:
    from mbostream.loading import load_market
    from mbostream_core.render import book_json, book_table

    _, market = load_market(args.file, at_sequence=args.at_sequence)
    keys = [market.resolve(sel) for sel in args.instrument] if args.instrument else market.books()
    views = [market.view(key, depth=args.depth, orders=args.orders) for key in keys]
    if args.format == "table":
        print("\n\n".join(book_table(view) for view in views))
    else:
        json.dump({"instruments": [book_json(view) for view in views]}, sys.stdout, indent=args.indent)
        sys.stdout.write("\n")
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from mbostream.tools.audit import audit_file, format_report

    report = audit_file(args.file)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    if args.strict and not report.sound:
        print(f"mbostream audit: {report.integrity_violations} integrity violations", file=sys.stderr)
        return EXIT_FAILED_CHECK
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    from mbostream_core.synth import generate_file

    summary = generate_file(args.out, records=args.records, instruments=args.instruments, seed=args.seed)
    print(json.dumps(summary))
    return EXIT_OK


def _cmd_bench_book(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_book import bench_book

    result = bench_book(args.file, records=args.records, seed=args.seed, latency=not args.no_latency)
    print(json.dumps(result, indent=2) if args.json else result["summary"])
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The full ``mbostream`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mbostream",
        description="Replay Databento MBO files as a live feed and rebuild exact L3 order books.",
    )
    parser.add_argument("--log-level", default=None, help="log level (default: warning for tools, info for serve)")
    parser.add_argument("--log-format", choices=("json", "text"), default="json", help="log line format")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("book", help="print the final book of a DBN MBO file (or the book at a sequence)")
    p.add_argument("file", help="DBN MBO file (.dbn or .dbn.zst)")
    p.add_argument("--depth", type=non_negative_int, default=0, help="levels per side (0: all)")
    p.add_argument("--orders", action="store_true", help="include each level's L3 queue")
    p.add_argument("--instrument", action="append", default=[], metavar="ID_OR_SYMBOL", help="only these (repeatable)")
    p.add_argument("--at-sequence", type=non_negative_int, default=None, metavar="N", help="book at the last F_LAST <= N")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--indent", type=int, default=2, help="JSON indent (0: compact)")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("audit", help="correctness report: engine invariants and the feed's own rules")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--strict", action="store_true", help="exit 1 if the engine ever broke a book invariant")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("generate", help="write deterministic synthetic CME-style MBO data as DBN")
    p.add_argument("--out", required=True, help="output path (.dbn, or .dbn.zst to compress)")
    p.add_argument("--records", type=positive_int, default=1_000_000)
    p.add_argument("--instruments", type=positive_int, default=4)
    p.add_argument("--seed", type=non_negative_int, default=1)
    p.set_defaults(func=_cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("book", help="decode + apply + BBO at every F_LAST: records/s, latency, memory")
    p.add_argument("file", nargs="?", help="DBN MBO file (default: a generated 5M-record file, cached)")
    p.add_argument("--records", type=positive_int, default=5_000_000, help="records of the generated file")
    p.add_argument("--seed", type=non_negative_int, default=1)
    p.add_argument("--no-latency", action="store_true", help="skip the per-event latency pass")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_book)

    register_server_cli(sub)
    register_cluster_cli(sub)
    register_roles_cli(sub)
    register_storage_cli(sub)
    register_store_cli(sub)
    bench_cli.register_cluster(bench)
    bench_cli.register_costs(bench)
    bench_cli.register_e2e(bench)
    bench_cli.register_soak(bench)
    bench_cli.register_web(bench)
    bench_cli.register_wire(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbostream`` command."""
    return execute(build_parser().parse_args(argv))


def execute(args: argparse.Namespace) -> int:
    """Runs a parsed command; returns its exit code.

    A deliberate error (:class:`~mbostream.errors.MbostreamError`: bad input, a bad setting) is one
    line on stderr, ``mbostream COMMAND: error: …``, and exit code 2; never a traceback.
    """
    default_level = "info" if args.command in ("serve", "run", "replay", "gateway") else "error"
    logs.configure(args.log_level or default_level, args.log_format)
    try:
        return int(args.func(args))
    except MbostreamError as exc:
        print(f"mbostream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
