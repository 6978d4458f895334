"""Measurement room: publish→receive latency and throughput of live streams, seen from a client.

``measure`` opens K StreamBook streams and E StreamEvents streams, lets them warm up, then for
``seconds`` records, per message, ``time.time_ns() - ts_out`` (server publish time to the moment
the client has the parsed message; both clocks are this machine's), the book messages and event
records received, and whether the event streams stayed lossless: every live batch must continue
at the replay position after the previous one. A slow-reader cut-off (RESOURCE_EXHAUSTED) is
counted and the stream resumes where it stopped, so a cut-off is visible without ending the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from mbostream_client._channel import DEFAULT_TARGET, receive_window_options
from mbostream_client._exceptions import ClientError, ResumeOutOfRangeError, SlowConsumerError
from mbostream_client._market_data import MarketDataClient

PERCENTILES: Final = (50.0, 99.0, 99.9)


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    """What to measure.

    Parameters
    ----------
    target
        ``HOST:PORT`` of the server.
    streams
        Concurrent StreamBook streams (every book each).
    events_streams
        Concurrent StreamEvents streams (every instrument each).
    seconds
        Length of the measured window.
    warmup
        Seconds streamed before the window opens (snapshots and connection set-up are excluded).
    depth
        Levels per side of the book streams.
    max_updates_per_second
        Per-book rate limit requested on the book streams (0: none).
    connections
        TCP connections the streams are spread over (0: one per stream, like separate clients).
    instruments
        Books each StreamBook stream selects (empty: every book).
    spread
        Each StreamBook stream selects ONE instrument, round-robin over ``instruments`` (or over
        every instrument the server lists): like a screen per instrument, instead of every
        stream watching every book.
    combine
        Ask for ``combine_books``: one message per refresh with every changed book.
    receive_window
        HTTP/2 receive windows of every connection of the run, in bytes (see
        :class:`~mbostream_client.MarketDataClient`); None: gRPC's own.
    """

    target: str = DEFAULT_TARGET
    streams: int = 1
    events_streams: int = 0
    seconds: float = 10.0
    warmup: float = 1.0
    depth: int = 10
    max_updates_per_second: float = 0.0
    connections: int = 0
    instruments: tuple[str | int, ...] = ()
    spread: bool = False
    combine: bool = False
    receive_window: int | None = None

    def __post_init__(self) -> None:
        if self.receive_window is not None:
            receive_window_options(self.receive_window)  # ValueError when out of range
        if self.streams < 0 or self.events_streams < 0 or self.streams + self.events_streams == 0:
            raise ValueError("need at least one stream (streams + events_streams >= 1, both >= 0)")
        if not self.seconds > 0 or self.warmup < 0:
            raise ValueError("seconds must be > 0 and warmup >= 0")
        if self.depth < 0 or self.max_updates_per_second < 0 or self.connections < 0:
            raise ValueError("depth, max_updates_per_second and connections must be >= 0")


@dataclass
class _Window:
    """The measured window, shared by every stream task."""

    opens_ns: int
    closes_ns: int

    def contains(self, t_ns: int) -> bool:
        return self.opens_ns <= t_ns < self.closes_ns


@dataclass
class _BookCounters:
    messages: int = 0
    conflated: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    received_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _EventCounters:
    records: int = 0
    batches: int = 0
    snapshot_records: int = 0
    gaps: int = 0
    records_missed: int = 0
    resource_exhausted: int = 0
    out_of_range: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def _book_stream(
    client: MarketDataClient,
    cfg: LatencyConfig,
    window: _Window,
    out: _BookCounters,
    instruments: tuple[str | int, ...],
) -> None:
    try:
        async for update in client.stream_book(
            instruments,
            depth=cfg.depth,
            max_updates_per_second=cfg.max_updates_per_second,
            combine_books=cfg.combine,
        ):
            now = time.time_ns()
            if update.is_snapshot or not window.contains(now):
                continue
            out.messages += 1
            out.conflated += update.conflated
            out.latencies_ns.append(now - update.ts_out)
            out.received_ns.append(now)
    except ClientError as exc:
        name = type(exc).__name__
        out.errors[name] = out.errors.get(name, 0) + 1


async def _events_stream(client: MarketDataClient, window: _Window, out: _EventCounters) -> None:
    """Streams events until cancelled, resuming after a cut-off, and checks contiguity."""
    last: int | None = None
    while True:
        stream = client.stream_events(start_after_sequence=last)
        try:
            async for batch in stream:
                now = time.time_ns()
                seqs = batch.replay_sequence
                if batch.snapshot or not len(seqs):
                    continue
                first, final = int(seqs[0]), int(seqs[-1])
                if last is not None and first != last + 1:
                    out.gaps += 1
                    out.records_missed += max(0, first - last - 1)
                if final - first != len(seqs) - 1:
                    out.gaps += 1
                last = final
                if window.contains(now):
                    out.records += len(seqs)
                    out.batches += 1
                    out.latencies_ns.append(now - batch.ts_out)
            return
        except SlowConsumerError:
            out.resource_exhausted += 1
        except ResumeOutOfRangeError:
            # Fell further behind than the server retains: the gap shows up at the live edge.
            out.out_of_range += 1
            last = None
        except ClientError as exc:
            name = type(exc).__name__
            out.errors[name] = out.errors.get(name, 0) + 1
            return
        finally:
            await stream.aclose()


def _latency_summary(samples_ns: list[int]) -> dict[str, float | int | None]:
    if not samples_ns:
        return {"samples": 0, "p50": None, "p99": None, "p99.9": None, "max": None}
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p99, p999 = np.percentile(ms, PERCENTILES)
    return {
        "samples": len(samples_ns),
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "p99.9": round(float(p999), 3),
        "max": round(float(ms.max()), 3),
    }


def _worst_per_second(window: _Window, received_ns: list[int], latencies_ns: list[int]) -> list[float]:
    """The largest latency (ms) received in each second of the window: one stall or many."""
    if not received_ns:
        return []
    seconds = (np.asarray(received_ns, dtype=np.int64) - window.opens_ns) // 1_000_000_000
    worst = np.zeros(int(seconds.max()) + 1)
    np.maximum.at(worst, seconds, np.asarray(latencies_ns, dtype=np.float64) / 1e6)
    return [round(float(v), 2) for v in worst]


async def measure(cfg: LatencyConfig) -> dict[str, Any]:
    """Runs the measurement; returns the result document (see the README's ``latency`` section)."""
    total = cfg.streams + cfg.events_streams
    n_clients = total if cfg.connections == 0 else min(cfg.connections, total)
    clients = [
        MarketDataClient(cfg.target, own_connection=n_clients > 1, receive_window=cfg.receive_window)
        for _ in range(n_clients)
    ]
    book, events = _BookCounters(), _EventCounters()
    try:
        await asyncio.gather(*(c.wait_ready(10.0) for c in clients))
        start = time.time_ns()
        window = _Window(start + int(cfg.warmup * 1e9), start + int((cfg.warmup + cfg.seconds) * 1e9))
        selections: list[tuple[str | int, ...]] = [cfg.instruments] * cfg.streams
        if cfg.spread:
            pool = list(cfg.instruments) or [i.symbol for i in await clients[0].list_instruments()]
            selections = [(pool[i % len(pool)],) for i in range(cfg.streams)]
        tasks = [
            asyncio.create_task(_book_stream(clients[i % n_clients], cfg, window, book, selections[i]))
            for i in range(cfg.streams)
        ]
        tasks += [
            asyncio.create_task(_events_stream(clients[(cfg.streams + i) % n_clients], window, events))
            for i in range(cfg.events_streams)
        ]
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, (window.closes_ns - time.time_ns()) / 1e9))
        cpu = time.process_time() - cpu0
        ended_early = sum(t.done() for t in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    seconds = cfg.seconds
    return {
        "config": asdict(cfg),
        "book": {
            "streams": cfg.streams,
            "messages": book.messages,
            "messages_per_second": round(book.messages / seconds, 1),
            "conflated": book.conflated,
            "latency_ms": _latency_summary(book.latencies_ns),
            "worst_ms_each_second": _worst_per_second(window, book.received_ns, book.latencies_ns),
            "errors": book.errors,
        },
        "events": {
            "streams": cfg.events_streams,
            "records": events.records,
            "records_per_second": round(events.records / seconds, 1),
            "batches": events.batches,
            "gaps": events.gaps,
            "records_missed": events.records_missed,
            "resource_exhausted": events.resource_exhausted,
            "out_of_range": events.out_of_range,
            "lossless": events.gaps == 0 and events.resource_exhausted == 0 and events.out_of_range == 0,
            "latency_ms": _latency_summary(events.latencies_ns),
            "errors": events.errors,
        },
        "streams_ended_early": ended_early,
        "client_cpu_percent": round(100 * cpu / (cfg.warmup + seconds), 1),
    }


def format_summary(result: dict[str, Any]) -> str:
    """A few readable lines of a :func:`measure` result."""
    cfg, book, events = result["config"], result["book"], result["events"]
    lines = [f"target {cfg['target']}: {cfg['seconds']:g} s measured after {cfg['warmup']:g} s warm-up"]
    if book["streams"]:
        lat = book["latency_ms"]
        lines.append(
            f"StreamBook   x{book['streams']:<4} {book['messages_per_second']:>12,.0f} msg/s   publish→receive "
            f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  p99.9 {lat['p99.9']} ms  max {lat['max']} ms  "
            f"(conflated {book['conflated']:,})"
        )
        lines.append(f"             worst latency in each second (ms): {book['worst_ms_each_second']}")
    if events["streams"]:
        lat = events["latency_ms"]
        lines.append(
            f"StreamEvents x{events['streams']:<4} {events['records_per_second']:>12,.0f} records/s  "
            f"batch latency p50 {lat['p50']} ms  p99 {lat['p99']} ms   "
            f"{'lossless' if events['lossless'] else 'LOSSY'} (gaps {events['gaps']}, "
            f"resource_exhausted {events['resource_exhausted']}, out_of_range {events['out_of_range']})"
        )
    errors = {**book["errors"], **events["errors"]}
    if errors or result["streams_ended_early"]:
        lines.append(f"errors: {errors}  streams ended early: {result['streams_ended_early']}")
    lines.append(f"client CPU {result['client_cpu_percent']}% of one core")
    return "\n".join(lines)
