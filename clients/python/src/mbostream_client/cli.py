"""Command-line room: ``mbostream-client`` and its subcommands (argument parsing and exit codes only)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any, Final, TextIO

from mbostream_core.argtypes import non_negative_float, non_negative_int, positive_float
from mbostream_core.prices import format_price

from mbostream_client._channel import DEFAULT_TARGET, RECEIVE_WINDOW
from mbostream_client._decode import EventBatch
from mbostream_client._exceptions import ClientError
from mbostream_client._follow import EventFollower
from mbostream_client._latency import LatencyConfig, format_summary, measure
from mbostream_client._market_data import Instrument, MarketDataClient
from mbostream_client._render import book_json, ladder

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_INTERRUPTED: Final = 130

_CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"
_ALT_SCREEN_ON: Final = "\x1b[?1049h\x1b[?25l"
_ALT_SCREEN_OFF: Final = "\x1b[?25h\x1b[?1049l"


def _instrument(text: str) -> Instrument:
    """A command-line instrument: all digits is an instrument id, anything else a symbol."""
    return int(text) if text.isdigit() else text


async def _book(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    live = out.isatty()
    async with MarketDataClient(args.target, trace=args.trace) as client:
        if live:
            out.write(_ALT_SCREEN_ON)
        try:
            updates = conflated = 0
            async for update in client.stream_book(
                [_instrument(args.symbol)], depth=args.depth, max_updates_per_second=args.max_updates_per_second
            ):
                latency_ms = (time.time_ns() - update.ts_out) / 1e6
                updates += 1
                conflated += update.conflated
                status = (
                    f"update {updates}  publish→receive {latency_ms:.2f} ms  conflated {conflated}  (Ctrl-C to quit)"
                )
                text = ladder(update.book, status=status)
                out.write(_CLEAR_SCREEN + text + "\n" if live else text + "\n\n")
                out.flush()
        finally:
            if live:
                out.write(_ALT_SCREEN_OFF)
                out.flush()
    return EXIT_OK


def _record_lines(batch: EventBatch, as_json: bool) -> list[str]:
    r = batch.records
    columns = zip(
        batch.replay_sequence.tolist(),
        r["ts_event"].tolist(),
        r["ts_recv"].tolist(),
        r["instrument_id"].tolist(),
        r["publisher_id"].tolist(),
        r["action"].tolist(),
        r["side"].tolist(),
        r["price"].tolist(),
        r["size"].tolist(),
        r["order_id"].tolist(),
        r["flags"].tolist(),
        r["sequence"].tolist(),
        strict=True,
    )
    lines = []
    for seq, ts_event, ts_recv, iid, pid, action, side, price, size, oid, flags, vseq in columns:
        if as_json:
            lines.append(
                json.dumps(
                    {
                        "replay_sequence": seq,
                        "snapshot": batch.snapshot,
                        "ts_event": ts_event,
                        "ts_recv": ts_recv,
                        "instrument_id": iid,
                        "publisher_id": pid,
                        "action": action.decode(),
                        "side": side.decode(),
                        "price": format_price(price),
                        "size": size,
                        "order_id": oid,
                        "flags": flags,
                        "sequence": vseq,
                    }
                )
            )
        else:
            lines.append(
                f"{seq:>12} {ts_event:>20} {iid:>10} {action.decode()} {side.decode()} "
                f"{format_price(price) or '-':>20} {size:>8} {oid:>20} {flags:>3} {vseq:>12}"
                + ("  snapshot" if batch.snapshot else "")
            )
    return lines


async def _events(args: argparse.Namespace) -> int:
    printed = 0
    if not args.json:
        print(
            f"{'replay_seq':>12} {'ts_event':>20} {'instrument':>10} a s {'price':>20} {'size':>8} "
            f"{'order_id':>20} {'flg':>3} {'sequence':>12}"
        )
    async with MarketDataClient(args.target, trace=args.trace) as client:
        follower = EventFollower(
            client,
            [_instrument(i) for i in args.instrument],
            with_snapshot=args.with_snapshot,
            start_after=args.start_after,
            reconnect=not args.no_reconnect,
        )
        async for batch, _ in follower.follow():
            if args.limit and printed + len(batch) > args.limit:
                keep = args.limit - printed
                batch = replace(batch, records=batch.records[:keep], replay_sequence=batch.replay_sequence[:keep])
            lines = _record_lines(batch, args.json)
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
            printed += len(lines)
            if args.limit and printed >= args.limit:
                break
    sys.stdout.flush()
    return EXIT_OK


async def _get_book(args: argparse.Namespace) -> int:
    async with MarketDataClient(args.target, trace=args.trace) as client:
        books = [
            await client.get_book(_instrument(symbol), depth=args.depth, include_orders=args.orders)
            for symbol in args.symbol
        ]
    if args.json:
        doc = {"instruments": [book_json(book, with_orders=args.orders) for book in books]}
        json.dump(doc, sys.stdout, indent=args.indent or None)
        sys.stdout.write("\n")
    else:
        print("\n\n".join(ladder(book) for book in books))
    return EXIT_OK


async def _latency(args: argparse.Namespace) -> int:
    cfg = LatencyConfig(
        target=args.target,
        streams=args.streams,
        events_streams=args.events_streams,
        seconds=args.seconds,
        warmup=args.warmup,
        depth=args.depth,
        max_updates_per_second=args.max_updates_per_second,
        connections=args.connections,
        instruments=tuple(_instrument(i) for i in args.instrument),
        spread=args.spread,
        combine=args.combine,
        receive_window=args.receive_window,
    )
    result = await measure(cfg)
    result["event_loop"] = "uvloop" if args.uvloop else "asyncio"
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return EXIT_OK


async def _bench_decode(args: argparse.Namespace) -> int:
    from mbostream_client._bench import bench_decode, format_decode

    result = bench_decode(records=args.records, batch_records=args.batch_records)
    print(json.dumps(result, indent=2) if args.json else format_decode(result))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The full ``mbostream-client`` argument parser."""
    parser = argparse.ArgumentParser(prog="mbostream-client", description="Client of an mbostream gRPC server.")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server HOST:PORT (default {DEFAULT_TARGET})")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="start a W3C trace per call (traceparent) and print its trace_id on stderr (book, events, get-book)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("book", help="live ladder of one book, redrawn in place (Ctrl-C to quit)")
    p.add_argument("symbol", metavar="SYMBOL", help="raw symbol or instrument id")
    p.add_argument("--depth", type=non_negative_int, default=10, help="levels per side (default 10; 0: all)")
    p.add_argument(
        "--max-updates-per-second", type=non_negative_float, default=20.0, help="redraw rate limit (default 20)"
    )
    p.set_defaults(func=_book)

    p = sub.add_parser("events", help="print the raw MBO records as they are replayed")
    p.add_argument("--instrument", action="append", default=[], metavar="ID_OR_SYMBOL", help="only these (repeatable)")
    p.add_argument("--with-snapshot", action="store_true", help="start with each book's snapshot records")
    p.add_argument(
        "--start-after", type=non_negative_int, default=None, metavar="N", help="resume after replay position N"
    )
    p.add_argument("--limit", type=non_negative_int, default=0, metavar="N", help="stop after N records (0: never)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (prices as decimal strings)")
    p.add_argument(
        "--no-reconnect",
        action="store_true",
        help="end on the first error instead of reconnecting (by default a broken stream resumes where it "
        "stopped, or starts over from a snapshot, printed as such, when it cannot)",
    )
    p.set_defaults(func=_events)

    p = sub.add_parser("get-book", help="print books once (JSON with --json)")
    p.add_argument("symbol", nargs="+", metavar="SYMBOL", help="raw symbol or instrument id")
    p.add_argument("--json", action="store_true", help="the `mbostream book` JSON document")
    p.add_argument("--depth", type=non_negative_int, default=0, help="levels per side (0: all)")
    p.add_argument("--orders", action="store_true", help="include each level's L3 queue")
    p.add_argument("--indent", type=non_negative_int, default=2, help="JSON indent (0: compact)")
    p.set_defaults(func=_get_book)

    p = sub.add_parser("latency", help="publish→receive latency and throughput of K book (+E event) streams")
    p.add_argument("--streams", type=non_negative_int, default=10, metavar="K", help="StreamBook streams (default 10)")
    p.add_argument("--events-streams", type=non_negative_int, default=0, metavar="E", help="StreamEvents streams")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="measured window (default 10)")
    p.add_argument("--warmup", type=non_negative_float, default=1.0, help="seconds before the window (default 1)")
    p.add_argument("--depth", type=non_negative_int, default=10, help="book levels per side (default 10)")
    p.add_argument("--max-updates-per-second", type=non_negative_float, default=0.0, help="per-book limit (0: none)")
    p.add_argument(
        "--connections", type=non_negative_int, default=0, help="TCP connections to spread streams over (0: one each)"
    )
    p.add_argument(
        "--instrument", action="append", default=[], metavar="ID_OR_SYMBOL", help="books per StreamBook stream"
    )
    p.add_argument(
        "--spread", action="store_true", help="each book stream watches one instrument, round-robin (a screen each)"
    )
    p.add_argument("--combine", action="store_true", help="one message per refresh with every changed book")
    p.add_argument(
        "--receive-window",
        type=lambda text: int(RECEIVE_WINDOW.argtype(text)),
        default=None,
        metavar="BYTES",
        help=f"HTTP/2 receive windows of every connection ({RECEIVE_WINDOW.describe()}; default: gRPC's own)",
    )
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the asyncio loop")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_latency)

    p = sub.add_parser("bench-decode", help="time the ways to decode StreamEvents batches (no server needed)")
    p.add_argument("--records", type=non_negative_int, default=200_000, help="generated records (default 200,000)")
    p.add_argument("--batch-records", type=non_negative_int, default=4096, help="records per batch (default 4096)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_bench_decode)
    return parser


def _run(coro: Coroutine[Any, Any, int], use_uvloop: bool) -> int:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbostream-client`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Reconnects, resumes and rebuilds are reported on stderr; the records stay alone on stdout.
    logging.basicConfig(level=logging.WARNING, format=f"mbostream-client {args.command}: %(message)s")
    if args.trace:
        logging.getLogger("mbostream_client.trace").setLevel(logging.INFO)
    if args.command == "latency" and args.streams + args.events_streams == 0:
        parser.error("latency needs --streams or --events-streams above 0")
    try:
        return _run(args.func(args), getattr(args, "uvloop", False))
    except (ClientError, TimeoutError, ValueError) as exc:
        print(f"mbostream-client {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Ctrl-C is how the live ladder is meant to end; elsewhere it interrupts.
        return EXIT_OK if args.command == "book" else EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
