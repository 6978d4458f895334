"""Edge command room: ``python -m mbostream.edge render|validate|run``, the edge without the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mbostream.edge.binary import validate_config
from mbostream.edge.config import REPO_ROOT, EdgeConfig
from mbostream.edge.render import render_config
from mbostream.edge.supervisor import Edge
from mbostream.errors import MbostreamError
from mbostream.lifecycle import on_stop_signals


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mbostream.edge",
        description="Render, validate or run the mbostream Envoy edge on its own.",
    )
    parser.add_argument("command", choices=("render", "validate", "run"))
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--upstream-port", type=int, default=50051)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--static-dir", type=Path, default=REPO_ROOT / "web" / "dist")
    parser.add_argument("--allowed-origin", action="append", default=[], dest="allowed_origins")
    return parser.parse_args(argv)


async def _run_until_interrupted(edge: Edge) -> None:
    async with edge:
        print(edge.url, flush=True)
        stop = asyncio.Event()
        on_stop_signals(lambda _: stop.set())
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mbostream.edge render|validate|run``: the edge without the server, for debugging."""
    args = _parse_args(argv)
    try:
        config = EdgeConfig(
            listen_port=args.listen_port,
            upstream_port=args.upstream_port,
            admin_port=args.admin_port,
            static_dir=args.static_dir,
            allowed_origins=tuple(args.allowed_origins),
        )
        if args.command == "render":
            sys.stdout.write(render_config(config))
        elif args.command == "validate":
            started = time.monotonic()
            validate_config(render_config(config))
            print(f"envoy config OK ({time.monotonic() - started:.1f} s)")
        else:
            logging.basicConfig(level=logging.INFO)
            edge = Edge(
                listen_port=config.listen_port,
                upstream_port=config.upstream_port,
                static_dir=config.static_dir,
                admin_port=config.admin_port,
                allowed_origins=config.allowed_origins,
            )
            asyncio.run(_run_until_interrupted(edge))
    except MbostreamError as exc:
        print(f"mbostream.edge: error: {exc}", file=sys.stderr)
        return 2
    return 0
