"""The flags of ``mbostream storage bench``, parsed without importing the benchmark (numpy, the
storage sink), which :func:`_cmd_storage_bench` imports when the command runs. Apart from
:mod:`.bench_cli`: the storage commands register it, and they stay off the other benchmarks' imports."""

from __future__ import annotations

import argparse
from typing import Any, Final

#: The file benchmarked when ``--file`` is not given.
DEFAULT_FILE: Final = "../shared/data/CLX5_mbo.dbn"


def _cmd_storage_bench(args: argparse.Namespace) -> int:
    from mbostream.tools.bench_storage import run

    return run(args)


def register_storage_bench(commands: Any) -> None:
    """Adds ``bench`` to the ``storage`` command group."""
    parser = commands.add_parser("bench", help="benchmark the storage hot paths (format, e2e, replay)")
    parser.add_argument("which", choices=("format", "compress", "e2e", "replay", "server"), help="which benchmark")
    parser.add_argument("--file", default=None, help=f"DBN MBO file (default: {DEFAULT_FILE}; for server: the generated sample)")
    parser.add_argument("--copies", type=int, default=0, help="times the file is tiled (default: per benchmark)")
    parser.add_argument("--batch-records", type=int, default=0, help="records per replay batch (default: per benchmark)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; the best (format) or median is kept")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd_storage_bench)
