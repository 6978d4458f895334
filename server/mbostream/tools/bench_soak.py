"""Soak benchmark: ``mbostream bench soak`` — a real server fed at a fixed rate for a long time,
with clients that keep connecting and leaving, sampled every interval.

The server is ``bench e2e``'s (:class:`~mbostream.tools.bench_server.BenchServer`: ``mbostream serve
--rate R --loop`` on a free port; the generated sample by default, which ``--loop`` replays for as
long as the soak lasts, one replay sequence for the life of the process). The clients:

* **StreamBook** clients come from the Go load tool ``mbostream-load`` (``bench e2e``'s client,
  built into the cache on first use), in ``--generations`` groups: every ``--churn-seconds`` the
  oldest group's process ends (its streams and connections close) and a new one dials and
  subscribes, so each group lives ``generations × churn-seconds``. Each group reports its book
  latency (``time.time_ns() - ts_out``, one clock) when it ends: p50/p99 over its life.
* **StreamEvents** clients (``--events-clients``) run in this process (grpc.aio, a channel each)
  and check their own continuity: every ``replay_sequence`` follows the one before, within a
  stream and across resumes. Every churn period one of them disconnects and resumes with
  ``start_after_sequence`` (and ``resume_epoch``) from the last record it got, and another leaves
  for good and a new one subscribes from the live edge. A RESOURCE_EXHAUSTED cut-off is counted
  and resumed the same way; it is not a loss.

Every ``--interval-seconds`` a sample: the server's RSS and CPU, the replay's records/s, the book
latency of the groups that ended in the interval, the events delivered and the gaps/duplicates so
far. At the end a verdict on flatness: the RSS slope (least squares) over the second half and the
book p99 of the first third against the last third; printed as a table and one JSON line (the
last line of the output). Speed figures are benchmark output: the exit status is 0 unless
something failed or ``--strict`` and a client lost or duplicated a record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
from grpc import aio as grpc_aio

from mbostream.errors import BenchError
from mbostream.tools.bench_e2e import _go_load_binary
from mbostream.tools.bench_server import BenchServer, Window, cpu_sets, pin
from mbostream_core.v1 import market_data_pb2, market_data_pb2_grpc

#: The verdict's thresholds: RSS rising less than this over the second half reads as flat ...
FLAT_RSS_MIB_PER_MINUTE: Final = 1.0
#: ... and the book p99 of the last third at most this many times that of the first third.
FLAT_P99_RATIO: Final = 1.5
#: Seconds the Go clients stream before their latency window opens (dialling, first snapshot).
_GO_WARMUP: Final = 1.0
#: A Go group is not started, and no StreamEvents client churned, with less than this much of the
#: soak left: a client that joins in its last instant gets no data before the soak ends.
_MIN_GROUP_SECONDS: Final = 3.0
#: Bound on one events client's connect + first read (the server answers at once when healthy).
_EVENTS_TIMEOUT: Final = 30.0


@dataclass(frozen=True, kw_only=True)
class SoakConfig:
    """What ``mbostream bench soak`` runs (see the module docstring)."""

    files: tuple[str, ...] = ()
    minutes: float = 30.0
    rate: float = 200_000.0
    #: Every client alive at once: StreamBook (in Go groups) plus StreamEvents.
    clients: int = 100
    events_clients: int = 4
    generations: int = 4
    churn_seconds: float = 10.0
    interval_seconds: float = 10.0
    depth: int = 10
    pin: bool = True
    #: Keep the server's storage sink on (it spools to disk without a database: mind the space).
    store: bool = False
    server_args: tuple[str, ...] = ()
    server_log: str = ""


# -- StreamEvents clients ------------------------------------------------------------------------


@dataclass
class EventsClient:
    """One StreamEvents client over its sessions (each a new connection), checking continuity."""

    name: str
    last: int | None = None
    epoch: str = ""
    records: int = 0
    batches: int = 0
    sessions: int = 0
    resumes: int = 0
    gaps: int = 0
    records_missed: int = 0
    duplicates: int = 0
    cutoffs: int = 0
    out_of_range: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def check(self, message: market_data_pb2.StreamEventsResponse) -> None:
        """Counts one live batch, and any gap or duplicate against the record before it."""
        seqs = np.asarray(message.replay_sequence, dtype=np.uint64)
        if not len(seqs):
            return
        if message.epoch:
            if self.epoch and message.epoch != self.epoch:
                self._error("epoch changed")
            self.epoch = message.epoch
        if self.last is not None:
            self._step(int(seqs[0]) - self.last)
        steps = np.diff(seqs.astype(np.int64))
        if len(steps) and not (steps == 1).all():
            for step in steps[steps != 1]:
                self._step(int(step))
        self.last = int(seqs[-1])
        self.records += len(seqs)
        self.batches += 1

    def _step(self, step: int) -> None:
        if step > 1:
            self.gaps += 1
            self.records_missed += step - 1
        elif step < 1:
            self.duplicates += 1

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def session(self, target: str, stop: asyncio.Event) -> None:
        """Streams until ``stop`` is set, resuming after ``last`` when it has one."""
        resume = self.last is not None
        self.sessions += 1
        self.resumes += resume
        request = market_data_pb2.StreamEventsRequest(resume_epoch=self.epoch)
        if resume:
            request.start_after_sequence = self.last
        async with grpc_aio.insecure_channel(target) as channel:
            call = market_data_pb2_grpc.MarketDataServiceStub(channel).StreamEvents(request)
            stopper = asyncio.create_task(stop.wait())
            stopper.add_done_callback(lambda _: call.cancel())
            try:
                async for message in call:
                    if not message.snapshot:
                        self.check(message)
                if not stop.is_set():
                    self._error("stream ended")
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.cutoffs += 1  # a slow reader cut off: the caller resumes it
                elif code == grpc.StatusCode.OUT_OF_RANGE:
                    self.out_of_range += 1
                    self.last = None  # the resume point is gone: records were lost
                elif not (code == grpc.StatusCode.CANCELLED and stop.is_set()):
                    self._error(code.name)
            finally:
                stopper.cancel()
                call.cancel()

    def summary(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("last")
        doc.pop("epoch")
        return doc


class EventsSlot:
    """A place for one StreamEvents client: runs it session after session until the soak ends."""

    def __init__(self, target: str, name: str, done: list[EventsClient]) -> None:
        self.target = target
        self.client = EventsClient(name)
        self._done = done
        self._serial = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._task is not None:
            stop = self._stop = asyncio.Event()
            await self.client.session(self.target, stop)
            if self._task is not None and not stop.is_set():
                await asyncio.sleep(0.2)  # cut off or failed: resume shortly

    async def _restart(self) -> None:
        task, self._task = self._task, None
        self._stop.set()
        if task is not None:
            await asyncio.wait_for(task, _EVENTS_TIMEOUT)

    async def reconnect(self) -> None:
        """Disconnects and resumes with start_after_sequence (the same client)."""
        await self._restart()
        self.start()

    async def replace(self) -> None:
        """The client leaves for good; a new one subscribes from the live edge."""
        await self._restart()
        self._done.append(self.client)
        self._serial += 1
        self.client = EventsClient(f"{self.client.name.split('.')[0]}.{self._serial}")
        self.start()

    async def finish(self) -> None:
        await self._restart()
        self._done.append(self.client)


# -- StreamBook clients (Go groups) --------------------------------------------------------------


@dataclass
class BookGroup:
    """One ``mbostream-load`` process: ``streams`` StreamBook clients for ``seconds``."""

    index: int
    streams: int
    seconds: float
    started: float
    proc: asyncio.subprocess.Process
    result: dict[str, Any] | None = None
    error: str = ""
    ended: float = 0.0
    #: Counted in a sample already.
    sampled: bool = False

    def summary(self) -> dict[str, Any]:
        book = (self.result or {}).get("book", {})
        return {
            "group": self.index,
            "streams": self.streams,
            "seconds": self.seconds,
            "messages": book.get("messages", 0),
            "p50_ms": book.get("p50_ms"),
            "p99_ms": book.get("p99_ms"),
            "max_ms": book.get("max_ms"),
            "streams_ended_early": (self.result or {}).get("streams_ended_early"),
            "errors": book.get("errors", {}),
            "error": self.error,
        }


async def _start_group(
    binary: Path, target: str, index: int, streams: int, seconds: float, depth: int, cpus: set[int] | None
) -> BookGroup:
    cmd = [
        str(binary), "--target", target, "--book-streams", str(streams), "--events-streams", "0",
        "--seconds", f"{seconds - _GO_WARMUP:g}", "--warmup", f"{_GO_WARMUP:g}", "--depth", str(depth), "--json",
    ]  # fmt: skip
    env = {**os.environ, **({"GOMAXPROCS": str(len(cpus))} if cpus else {})}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    pin(proc.pid, cpus)
    return BookGroup(index=index, streams=streams, seconds=seconds, started=time.monotonic(), proc=proc)


async def _collect_group(group: BookGroup) -> BookGroup:
    try:
        stdout, stderr = await asyncio.wait_for(group.proc.communicate(), group.seconds + 120)
    except TimeoutError:
        group.proc.kill()
        await group.proc.wait()
        group.error = "did not finish in time"
    else:
        if group.proc.returncode != 0:
            group.error = f"exit {group.proc.returncode}: {stderr.decode(errors='replace').strip()[-500:]}"
        else:
            group.result = json.loads(stdout)
    group.ended = time.monotonic()
    return group


# -- sampling and verdict -------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute (None under two points)."""
    points = [(t, v) for t, v in points if not math.isnan(v)]
    if len(points) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    if den == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / den


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def verdict(samples: list[dict[str, Any]], groups: list[BookGroup], t0: float, duration: float) -> dict[str, Any]:
    """Flatness of RSS (second half) and book p99 (first third against last third)."""
    second_half = [(s["t"], s["rss_mib"]) for s in samples if s["t"] >= duration / 2]
    slope = slope_per_minute(second_half)
    ended = [g for g in groups if g.result]
    first = [g.summary()["p99_ms"] for g in ended if g.ended - t0 <= duration / 3]
    last = [g.summary()["p99_ms"] for g in ended if g.ended - t0 >= 2 * duration / 3]
    p99_first, p99_last = _median(first), _median(last)
    ratio = round(p99_last / p99_first, 2) if p99_first and p99_last else None
    rss = [s["rss_mib"] for s in samples if not math.isnan(s["rss_mib"])]
    return {
        "rss_mib_first": round(rss[0], 1) if rss else None,
        "rss_mib_last": round(rss[-1], 1) if rss else None,
        "rss_mib_max": round(max(rss), 1) if rss else None,
        "rss_slope_mib_per_min_second_half": None if slope is None else round(slope, 3),
        "rss_flat": None if slope is None else slope < FLAT_RSS_MIB_PER_MINUTE,
        "book_p99_ms_first_third": p99_first,
        "book_p99_ms_last_third": p99_last,
        "book_p99_ratio_last_to_first": ratio,
        "latency_flat": None if ratio is None else ratio <= FLAT_P99_RATIO,
        "thresholds": {"rss_mib_per_min": FLAT_RSS_MIB_PER_MINUTE, "p99_ratio": FLAT_P99_RATIO},
    }


def churn_offsets(duration: float, churn_seconds: float) -> list[float]:
    """Seconds into the soak at which StreamEvents clients churn: every ``churn_seconds``, but
    none in the last ``_MIN_GROUP_SECONDS`` (a client replaced at the very end would leave with
    no record and count as a client that got no data)."""
    offsets: list[float] = []
    k = 1
    while k * churn_seconds <= duration - _MIN_GROUP_SECONDS:
        offsets.append(k * churn_seconds)
        k += 1
    return offsets


async def _soak(cfg: SoakConfig, server: BenchServer, client_cpus: set[int] | None) -> dict[str, Any]:
    binary = _go_load_binary()
    duration = cfg.minutes * 60
    book_streams = cfg.clients - cfg.events_clients
    per_group = [book_streams // cfg.generations + (i < book_streams % cfg.generations) for i in range(cfg.generations)]
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    end = t0 + duration

    finished: list[EventsClient] = []
    slots = [EventsSlot(server.target, f"events{i}", finished) for i in range(cfg.events_clients)]
    for slot in slots:
        slot.start()
    groups: list[BookGroup] = []
    life = cfg.generations * cfg.churn_seconds

    async def lane(index: int, size: int) -> None:
        """One group after another: the first lives (index + 1) churn periods, the next ones a full
        life, so one group of the lanes ends (and is replaced at once) each churn period."""
        seconds = min((index + 1) * cfg.churn_seconds, duration)
        while seconds >= _MIN_GROUP_SECONDS:
            group = await _start_group(binary, server.target, len(groups), size, seconds, cfg.depth, client_cpus)
            groups.append(group)
            await _collect_group(group)
            seconds = min(life, end - time.monotonic())

    lanes = [asyncio.create_task(lane(i, size)) for i, size in enumerate(per_group) if size]

    samples: list[dict[str, Any]] = []
    churns = 0
    churn_at = [t0 + offset for offset in churn_offsets(duration, cfg.churn_seconds)]
    next_sample = t0 + cfg.interval_seconds
    previous = await loop.run_in_executor(None, server.read)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        next_churn = churn_at[churns] if churns < len(churn_at) else end
        await asyncio.sleep(max(0.0, min(next_churn, next_sample, end) - now))
        now = time.monotonic()
        if churns < len(churn_at) and now >= churn_at[churns]:
            if slots:
                await slots[churns % len(slots)].reconnect()
                if len(slots) > 1:
                    await slots[(churns + 1) % len(slots)].replace()
            churns += 1
        if now >= next_sample:
            next_sample += cfg.interval_seconds
            reading = await loop.run_in_executor(None, server.read)
            window = Window(previous, reading)
            new = [g.summary() for g in groups if g.ended and not g.sampled]
            for g in groups:
                g.sampled = bool(g.ended)
            live_events = [s.client for s in slots]
            every = finished + live_events
            samples.append({
                "t": round(now - t0, 1),
                "rss_mib": round(reading.rss_mib, 1),
                "server_cpu_percent": window.server_cpu_percent,
                "others_cpu_percent": window.others_cpu_percent(),
                "replayed_records_per_second": window.replayed_records_per_second,
                "book_clients": sum(g.streams for g in groups if g.proc.returncode is None),
                "book_groups_ended": len(new),
                "book_p50_ms": _median([g["p50_ms"] for g in new]),
                "book_p99_ms": _median([g["p99_ms"] for g in new]),
                "events_records": sum(c.records for c in every),
                "events_gaps": sum(c.gaps for c in every),
                "events_duplicates": sum(c.duplicates for c in every),
                "events_cutoffs": sum(c.cutoffs for c in every),
            })  # fmt: skip
            previous = reading
            if server.proc.poll() is not None:
                raise BenchError(f"the server exited with {server.proc.returncode} during the soak")

    for slot in slots:
        await slot.finish()
    await asyncio.gather(*lanes)  # every group's life ends with the soak
    elapsed = time.monotonic() - t0
    events = [c.summary() for c in finished]
    book = [g.summary() for g in groups]
    return {
        "duration_seconds": round(elapsed, 1),
        "samples": samples,
        "book_groups": book,
        "events_clients": events,
        "totals": {
            "clients_connected": sum(g.streams for g in groups) + len(events),
            "book_streams_connected": sum(g.streams for g in groups),
            "book_messages": sum(g["messages"] for g in book),
            "book_groups_without_data": sum(1 for g in book if not g["messages"]),
            "book_errors": sum(1 for g in book if g["error"] or g["errors"] or g["streams_ended_early"]),
            "events_clients_connected": len(events),
            "events_sessions": sum(c["sessions"] for c in events),
            "events_resumes": sum(c["resumes"] for c in events),
            "events_records": sum(c["records"] for c in events),
            "events_clients_without_data": sum(1 for c in events if not c["records"]),
            "events_gaps": sum(c["gaps"] for c in events),
            "events_records_missed": sum(c["records_missed"] for c in events),
            "events_duplicates": sum(c["duplicates"] for c in events),
            "events_cutoffs": sum(c["cutoffs"] for c in events),
            "events_out_of_range": sum(c["out_of_range"] for c in events),
            "events_errors": sum(sum(c["errors"].values()) for c in events),
        },
        "verdict": verdict(samples, groups, t0, duration),
    }


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    """Runs the soak and returns its result document (see the module docstring)."""
    if cfg.events_clients >= cfg.clients:
        raise BenchError("--events-clients must leave room for book clients under --clients")
    _go_load_binary()  # built before the server starts, not inside the soak
    server_cpus, client_cpus = cpu_sets(cfg.pin)
    log_path = Path(cfg.server_log) if cfg.server_log else Path(tempfile.mkdtemp(prefix="mbostream-soak-")) / "server.log"
    server_args = (*(() if cfg.store else ("--no-store",)), *cfg.server_args)
    pacing = ("--rate", f"{cfg.rate:g}")
    with (
        open(log_path, "w") as log,
        BenchServer(pacing, files=cfg.files, server_args=server_args, cpus=server_cpus, log=log) as server,
    ):
        result = asyncio.run(_soak(cfg, server, client_cpus))
    log_text = log_path.read_text(errors="replace")
    result["config"] = asdict(cfg)
    result["server"] = {
        "exit_code": server.exit_code,
        "log": str(log_path),
        "log_tracebacks": log_text.count("Traceback (most recent call last)"),
        "cpus": sorted(server_cpus) if server_cpus else None,
    }
    t, v = result["totals"], result["verdict"]
    result["lossless"] = t["events_records"] > 0 and not (
        t["events_gaps"] or t["events_duplicates"] or t["events_out_of_range"]
    )
    result["flat"] = bool(v["rss_flat"]) and bool(v["latency_flat"])
    return result


def format_table(result: dict[str, Any]) -> str:
    """The per-interval samples and the totals, readable."""
    cfg = result["config"]
    lines = [
        f"mbostream bench soak: {cfg['minutes']:g} min at {cfg['rate']:,.0f} records/s, {cfg['clients']} clients "
        f"({cfg['clients'] - cfg['events_clients']} StreamBook in {cfg['generations']} Go groups, "
        f"{cfg['events_clients']} StreamEvents), churn every {cfg['churn_seconds']:g} s",
        f"{'t s':>7} {'RSS MiB':>8} {'srv CPU%':>8} {'other%':>7} {'replay/s':>9} {'book':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'events':>11} {'gaps':>5} {'dups':>5} {'cutoffs':>7}",
    ]
    for s in result["samples"]:
        lines.append(
            f"{s['t']:>7.0f} {s['rss_mib']:>8.1f} {s['server_cpu_percent']:>8.1f} {s['others_cpu_percent']:>7.1f} "
            f"{s['replayed_records_per_second']:>9,} {s['book_clients']:>5} "
            f"{s['book_p50_ms'] if s['book_p50_ms'] is not None else '-':>7} "
            f"{s['book_p99_ms'] if s['book_p99_ms'] is not None else '-':>7} "
            f"{s['events_records']:>11,} {s['events_gaps']:>5} {s['events_duplicates']:>5} {s['events_cutoffs']:>7}"
        )
    t, v = result["totals"], result["verdict"]
    lines += [
        f"clients connected: {t['clients_connected']} ({t['book_streams_connected']} StreamBook, "
        f"{t['events_clients_connected']} StreamEvents with {t['events_resumes']} resumes); "
        f"book messages {t['book_messages']:,}; events records {t['events_records']:,}",
        f"events: gaps {t['events_gaps']}, duplicates {t['events_duplicates']}, cut-offs {t['events_cutoffs']}, "
        f"OUT_OF_RANGE {t['events_out_of_range']} → {'lossless' if result['lossless'] else 'NOT lossless'}",
        f"RSS {v['rss_mib_first']} → {v['rss_mib_last']} MiB (max {v['rss_mib_max']}), slope over the second half "
        f"{v['rss_slope_mib_per_min_second_half']} MiB/min → {'flat' if v['rss_flat'] else 'NOT flat'}",
        f"book p99 first third {v['book_p99_ms_first_third']} ms, last third {v['book_p99_ms_last_third']} ms "
        f"(×{v['book_p99_ratio_last_to_first']}) → {'flat' if v['latency_flat'] else 'NOT flat'}",
        f"server exit {result['server']['exit_code']}, tracebacks in its log {result['server']['log_tracebacks']} "
        f"({result['server']['log']})",
    ]
    return "\n".join(lines)


def _verdict_line(result: dict[str, Any]) -> str:
    keys = ("duration_seconds", "lossless", "flat", "verdict", "totals", "server")
    return json.dumps({"soak": {k: result[k] for k in keys}}, separators=(",", ":"))


def _cmd_soak(args: argparse.Namespace) -> int:
    cfg = SoakConfig(
        files=tuple(args.file),
        minutes=args.minutes,
        rate=args.rate,
        clients=args.clients,
        events_clients=args.events_clients,
        generations=args.generations,
        churn_seconds=args.churn_seconds,
        interval_seconds=args.interval_seconds,
        depth=args.depth,
        pin=not args.no_pin,
        store=args.store,
        server_args=tuple(arg for option in args.server_arg for arg in option.split()),
        server_log=args.server_log or "",
    )
    result = run_soak(cfg)
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(_verdict_line(result), flush=True)
    return 1 if args.strict and not result["lossless"] else 0
