"""Storage command room: ``mbostream storage drain``, ``repair-wal`` and ``bench``.

:func:`register_cli` adds the ``storage`` group to the ``mbostream`` command; :func:`main` runs
the group alone (``python -m mbostream.storage.cli drain ...``). Each command sets ``func``, a
callable taking the parsed arguments and returning the exit status. Credentials never come from
flags: the token is read from ``INFLUX_TOKEN`` or ``INFLUX_TOKEN_FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final

from mbostream.errors import ConfigError
from mbostream.storage.errors import SpoolError
from mbostream.storage.settings import DEFAULT_STALL_TIMEOUT_SECONDS, STALL_TIMEOUT_SECONDS, StorageSettings

EXIT_INCOMPLETE: Final = 1
EXIT_USAGE: Final = 2


def register_cli(subparsers: Any) -> None:
    """Adds the ``storage`` command group to an ``argparse`` subparsers object."""
    storage = subparsers.add_parser("storage", help="persistence to InfluxDB: drain a spool, benchmark the write path")
    commands = storage.add_subparsers(dest="storage_command", metavar="COMMAND", required=True)

    drain = commands.add_parser(
        "drain",
        help="push a spool into InfluxDB (token from INFLUX_TOKEN or INFLUX_TOKEN_FILE)",
        description="Writes every point of a spool directory to an InfluxDB 2.x bucket, in order, "
        "then empties the spool. The token comes from INFLUX_TOKEN or INFLUX_TOKEN_FILE.",
    )
    drain.add_argument("--url", required=True, help="InfluxDB URL, e.g. http://localhost:8086")
    drain.add_argument("--org", required=True, help="InfluxDB organization")
    drain.add_argument("--bucket", required=True, help="InfluxDB bucket")
    drain.add_argument("--spool-dir", help="spool directory (default: MBOSTREAM_SPOOL_DIR or var/spool)")
    drain.add_argument(
        "--stall-timeout",
        type=STALL_TIMEOUT_SECONDS.argtype,
        default=DEFAULT_STALL_TIMEOUT_SECONDS,
        help=f"give up after this many seconds without progress ({STALL_TIMEOUT_SECONDS.describe()}; default: %(default)s)",
    )
    drain.set_defaults(func=_drain)

    repair = commands.add_parser(
        "repair-wal",
        help="cut torn entries off an InfluxDB WAL before influxd starts (see docs/storage.md)",
        description="Truncates each InfluxDB WAL segment (_NNNNN.wal) under the given directories "
        "to its whole entries, as influxd's own loader would, but before influxd opens the last "
        "segment for writing: InfluxDB 1.8 and 2.7 otherwise lose the points acknowledged after a "
        "restart that followed an unclean stop. Run it while influxd is stopped, before every start.",
    )
    repair.add_argument("wal_dir", nargs="+", type=Path, help="the engine's WAL directory (2.x: ENGINE_PATH/wal; 1.x: [data] wal-dir)")
    repair.set_defaults(func=_repair_wal)

    from mbostream.tools.bench_storage_cli import register_storage_bench

    register_storage_bench(commands)


def _drain(args: argparse.Namespace) -> int:
    from mbostream.storage.drain import drain_spool

    env = dict(os.environ, INFLUX_URL=args.url, INFLUX_ORG=args.org, INFLUX_BUCKET=args.bucket)
    if args.spool_dir:
        env["MBOSTREAM_SPOOL_DIR"] = args.spool_dir
    try:
        settings = StorageSettings.from_env(env)
        report = drain_spool(settings, stall_timeout=args.stall_timeout)
    except (ConfigError, SpoolError) as exc:
        print(f"mbostream storage drain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rate = report.points_written / report.seconds if report.seconds > 0 else 0.0
    summary = (
        f"{report.points_written} points written ({report.points_rejected} refused, set aside in "
        f"{settings.spool_dir / 'rejected.lp'}) in {report.seconds:.1f}s, {rate:,.0f} points/s"
    )
    if report.complete:
        print(f"drained {settings.spool_dir}: {summary}")
        return 0
    print(f"stopped with {report.bytes_left} bytes left in {settings.spool_dir}: {summary}")
    return EXIT_INCOMPLETE


def _repair_wal(args: argparse.Namespace) -> int:
    from mbostream.storage.influx_wal import repair_wal

    for wal_dir in args.wal_dir:
        if wal_dir.exists() and not wal_dir.is_dir():
            print(f"mbostream storage repair-wal: {wal_dir} is not a directory", file=sys.stderr)
            return EXIT_USAGE
        repairs = repair_wal(wal_dir)
        for repair in repairs:
            print(repair.describe())
        print(f"{wal_dir}: {len(repairs)} segment(s) repaired")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs ``storage`` commands on their own: ``python -m mbostream.storage.cli drain ...``."""
    from mbostream.logs import configure

    parser = argparse.ArgumentParser(prog="mbostream", description="mbostream storage commands")
    register_cli(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["storage", *(sys.argv[1:] if argv is None else argv)])
    configure(level=os.environ.get("MBOSTREAM_LOG_LEVEL", "info"), fmt="text")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
