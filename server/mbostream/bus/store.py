"""Bus store room: ``mbostream store --nats URL``, storage as its own durable consumer of the bus.

::

    MBOSTREAM_RECORDS ──fetch──▶ Market.apply (a replica's books: the events the sink formats)
      (durable consumer             │
       "mbostream-store",           ▼
       ack policy: all)          StorageSink.offer ──▶ pipeline ──▶ InfluxDB / spool
                                    │
        ack(last message) ◀── state file ◀── StorageSink.flush (written or spooled: durable)

The store works in rounds of about ``ack_interval`` seconds. A round offers every message it
fetches to the store's one :class:`~mbostream.storage.StorageSink` (started once, with its spool
and write threads, for the process's lifetime), then flushes it: ``flush`` returns once
everything offered is in the database or in the spool (whose appends survive a killed process;
the machine's crash loses at most ``MBOSTREAM_SPOOL_SYNC_INTERVAL``). Only then does the store
write its state file (every book's MBO snapshot and the replay position they reflect;
written, fsync'ed, renamed) and ack the round's last message (the consumer acks *all*: one ack
covers the round). So an acked message is durable, and after a ``kill -9`` the consumer redelivers
from its ack floor; what the state file already covers is skipped, the rest is stored again.

A point stored twice is the same point: InfluxDB keeps one point per (measurement, tag set,
time), and the point time is a pure function of the feed (``docs/storage.md``, "Timestamps").
The one piece of formatter state a flush starts afresh (as a restarted store does) is the
per-book clock that nudges equal ``ts_event`` values apart; a round boundary changes a point's
time only if the next event of a book has a ``ts_event`` at or below the nudged time of that
book's last point. That never happens at the event boundaries of the sample files (0 of 79,073
boundaries, measured in ``docs/scale-out.md``); depth samples are taken at the store's own pace
and are not reproducible point for point (as in ``serve``).

Cold start (no state file): when the record stream still begins at position 1, from empty books
and the first message (everything is stored, as a gateway does); when retention dropped the
start, the books come from the latest snapshots of ``MBOSTREAM_SNAPSHOTS`` and each book's records
at or below its snapshot's position are skipped, so such a store stores the feed from each book's
snapshot on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.registry import Collector

from mbostream.metrics import METRICS
from mbostream import logs
from mbostream.bus.codec import Meta, RecordMessage, decode_record_message, decode_snapshot
from mbostream.bus.errors import BusError
from mbostream.bus.streams import (
    FIRST_SEQ,
    META_STREAM,
    META_SUBJECT,
    RECORDS_STREAM,
    RECORDS_SUBJECT,
    SNAPSHOT_SUBJECTS,
    SNAPSHOTS_STREAM,
    connect,
    tls_context,
)
from mbostream.config import Settings, load_settings
from mbostream.errors import ConfigError
from mbostream.feed import Batch
from mbostream.lifecycle import on_stop_signals, print_ready_line
from mbostream.storage import StorageSink
from mbostream.storage.prometheus import StorageCollector
from mbostream_core.market import Market
from mbostream_core.records import MBO_DTYPE, concat_records

log = logging.getLogger(__name__)

#: The store's durable consumer of ``MBOSTREAM_RECORDS``.
CONSUMER: Final = "mbostream-store"
#: The store's state file, in the spool directory (one store per spool: the spool is locked).
STATE_NAME: Final = "bus-store-state.npz"
#: Messages asked for per fetch.
FETCH_BATCH: Final = 256
#: Longest wait of one fetch when the stream is idle (seconds).
FETCH_WAIT_SECONDS: Final = 0.25
#: How long the server waits for the ack of a delivered message before redelivering it; far above
#: a round (ack interval + the sink's stop), so a live store never sees its own messages again.
ACK_WAIT_SECONDS: Final = 300.0
#: Longest wait for the replayer's metadata (symbols) at start (seconds); without it, ids are tags.
META_WAIT_SECONDS: Final = 10.0
#: Seconds a round's flush (and the final stop) waits for the database before it spools the rest.
FLUSH_TIMEOUT_SECONDS: Final = 10.0


class StoreError(BusError):
    """The store cannot go on (a malformed bus message, an unreadable state file)."""


class _Counters:
    """The store's own series (the sink's are exported under ``mbostream_storage_*``)."""

    def __init__(self) -> None:
        self.messages = Counter("mbostream_store_messages", "Bus messages the store applied and offered to storage")
        self.records = Counter("mbostream_store_records", "MBO records the store applied and offered to storage")
        self.rounds = Counter("mbostream_store_rounds", "Rounds made durable and acknowledged")
        self.gaps = Counter("mbostream_store_gaps", "Gaps in the replay positions (books resynced from snapshots)")
        self.acked_seq = Gauge("mbostream_store_acked_replay_seq", "Last replay position stored durably and acknowledged")
        self.round_seconds = Gauge("mbostream_store_last_round_stop_seconds", "Time the last round's durable stop took")

    def unregister(self) -> None:
        for metric in vars(self).values():
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(metric)


class BusStore:
    """The store role: consume, apply, store, ack (see the module docstring).

    ``start`` connects and restores the books; ``run`` loops until ``stop`` is set; ``close``
    ends the last round durably and releases everything.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.nats_url:
            raise ConfigError("--nats / MBOSTREAM_NATS_URL", "required: the NATS server of the bus")
        if not settings.nats_url.startswith(("nats://", "tls://")):
            raise ConfigError("--nats / MBOSTREAM_NATS_URL", f"{settings.nats_url!r} is not a nats:// URL")
        self.settings = settings
        #: The state file, in the spool directory (one store per spool: the spool is locked).
        self.state_path = Path(settings.storage.spool_dir) / STATE_NAME
        self.market = Market({})
        self.symbols: dict[int, str] = {}
        #: Last replay position applied (and offered); 0 before the first.
        self.replay_seq = 0
        #: Last replay position made durable and acknowledged.
        self.acked_seq = 0
        #: The run (epoch) of the bus's meta: a state file of another run is not used.
        self.epoch = ""
        #: Stream sequence of the last message the state file covers (0: none).
        self._state_stream_seq = 0
        #: Stream sequence of the last message applied.
        self._stream_seq = 0
        #: Per book, the position of the snapshot it was restored from: its records up to it are skipped.
        self._skip: dict[tuple[int, int], int] = {}
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._server: grpc_aio.Server | None = None
        self._health: HealthServicer | None = None
        self._counters = _Counters()
        levels = settings.storage.depth_levels
        self._sink = StorageSink(settings.storage, depth_source=lambda: self.market.depth_table(levels), symbols=self._symbol)
        self._sink_started = False
        self._collector: Collector = StorageCollector(self._sink.metrics)
        REGISTRY.register(self._collector)
        self.port = 0
        self.metrics_port = -1
        self._metrics_httpd: Any = None

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Health (NOT_SERVING), metrics, the bus connection, the books; then health SERVING."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        o = self.settings
        self._server = grpc_aio.server()
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = self._server.add_insecure_port(f"{o.host}:{o.port}")
        if not self.port:
            raise ConfigError("--port / MBOSTREAM_PORT", f"cannot listen on {o.host}:{o.port}")
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if o.metrics_port >= 0:
            self._metrics_httpd, _ = start_http_server(o.metrics_port, addr=o.host)
            self.metrics_port = self._metrics_httpd.server_port
        self._nc = await connect(o.nats_url, name=CONSUMER, tls=tls_context(o))
        self._js = self._nc.jetstream()
        await self._wait_for_stream()
        meta = await self._read_meta()
        self.symbols = meta.symbols if meta else {}
        self.epoch = meta.epoch if meta else ""
        self.market = Market(self.symbols)
        if not await asyncio.to_thread(self._load_state) and not await self._stream_holds_the_start():
            await self._load_snapshots()
        await self._sink.start()
        self._sink_started = True
        start_seq = await self._resume_point()
        config = ConsumerConfig(
            durable_name=CONSUMER,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else DeliverPolicy.ALL,
            opt_start_seq=start_seq if start_seq > 1 else None,
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_SECONDS,
            max_ack_pending=-1,
            filter_subject=RECORDS_SUBJECT,
        )
        self._sub = await self._js.pull_subscribe(RECORDS_SUBJECT, durable=CONSUMER, stream=RECORDS_STREAM, config=config)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "store started",
            extra={"nats": o.nats_url, "consumer": CONSUMER, "resume_after": self.replay_seq, "books": len(self.market.books())},
        )

    async def _resume_point(self) -> int:
        """The stream sequence to consume from: after the consumer's ack floor and the state file.

        Messages a killed store had fetched but not acked would come back only after the ack wait
        (minutes), behind newer ones: the consumer is created again at its ack floor instead, so
        they come first. Its ack floor is its only state worth keeping.
        """
        from nats.js.errors import NotFoundError

        start = self._state_stream_seq + 1
        try:
            info = await self._js.consumer_info(RECORDS_STREAM, CONSUMER)
        except NotFoundError:
            return start
        start = max(start, int(info.ack_floor.stream_seq) + 1)
        await self._js.delete_consumer(RECORDS_STREAM, CONSUMER)
        return start

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop`` is set; the round in progress is finished durably."""
        while not stop.is_set():
            await self._round(stop)

    async def close(self) -> None:
        """Health NOT_SERVING, then the sink, the bus connection, the metrics and the health server."""
        if self._health is not None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._sink_started:
            await self._sink.stop(FLUSH_TIMEOUT_SECONDS)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        if self._server is not None:
            await self._server.stop(1)
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self._collector)
        self._counters.unregister()

    # -- one round --------------------------------------------------------------------------------
    async def _round(self, stop: asyncio.Event) -> None:
        """Fetches and offers for ``ack_interval`` seconds, flushes the sink, saves the state, acks."""
        import nats.errors

        offered = False
        last_msg: Any = None
        deadline = time.monotonic() + self.settings.store_ack_interval_seconds
        while time.monotonic() < deadline and not stop.is_set():
            try:
                msgs = await self._sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT_SECONDS)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                break
            for msg in msgs:
                try:
                    step = decode_record_message(msg.headers, msg.data)
                except (ValueError, KeyError) as exc:
                    raise StoreError(f"bus message {msg.metadata.sequence.stream} is not a replay step: {exc}") from None
                last_msg = msg
                meta = msg.metadata
                self._stream_seq = meta.sequence.stream
                # The bus series every consuming role sets (BusLagHigh, BusRedeliveries, the Bus dashboard).
                METRICS.bus_messages_consumed.inc()
                METRICS.bus_pending_messages.set(meta.num_pending or 0)
                METRICS.bus_lag_seconds.set(max(0.0, (time.time_ns() - step.ts_out) / 1e9))
                if meta.num_delivered and meta.num_delivered > 1:
                    METRICS.bus_redeliveries.inc()
                if self.replay_seq and step.first_seq > self.replay_seq + 1:
                    await self._resync(step, msg.metadata.sequence.stream)
                batch = self._apply(step)
                if batch is None:
                    continue
                self._sink.offer(batch)
                offered = True
                self._counters.messages.inc()
                self._counters.records.inc(len(batch.records))
        if offered:
            started = time.monotonic()
            await self._sink.flush(FLUSH_TIMEOUT_SECONDS)
            self._counters.round_seconds.set(time.monotonic() - started)
        if last_msg is not None:
            if offered:
                await asyncio.to_thread(self._save_state)
            try:
                await last_msg.ack_sync(timeout=10)
            except (nats.errors.Error, TimeoutError) as exc:
                # The round is durable already (stored or spooled, state file written): a lost ack
                # only means the bus redelivers it, and the state file makes that a no-op; the next
                # round's ack (policy "all") covers it too. The bus restarting is no reason to exit.
                log.warning("round not acknowledged (%s); the next round's ack covers it", type(exc).__name__)
                return
            self.acked_seq = self.replay_seq
            self._counters.acked_seq.set(self.acked_seq)
            self._counters.rounds.inc()

    def _symbol(self, instrument_id: int) -> str:
        """The ``instrument`` tag (read by the sink's formatting thread: the market of the moment)."""
        return self.market.symbol(instrument_id)

    def _apply(self, step: RecordMessage) -> Batch | None:
        """Applies a step's new records to the books; the batch to store, or None (nothing new)."""
        if step.last_seq <= self.replay_seq:
            return None  # already stored: a redelivery, or covered by the state file
        records = step.records
        first = step.first_seq
        if first <= self.replay_seq:
            records = records[self.replay_seq + 1 - first :]
            first = self.replay_seq + 1
        if self._skip:
            keep = self._unskipped(records, first)
            if keep is not None:
                records = records[keep]
        self.replay_seq = step.last_seq
        if not len(records):
            return None
        result = self.market.apply(records, complete_events=False)
        return Batch(first, records, result.events, step.ts_out or time.time_ns())

    def _unskipped(self, records: np.ndarray, first: int) -> np.ndarray | None:
        """Mask of the records past their book's snapshot; None when all are (the skip is over)."""
        last = first + len(records) - 1
        self._skip = {key: seq for key, seq in self._skip.items() if seq > first - 1}
        if not self._skip:
            return None
        positions = np.arange(first, last + 1, dtype=np.int64)
        keep = np.ones(len(records), dtype=bool)
        for (instrument_id, publisher_id), seq in self._skip.items():
            mine = (records["instrument_id"] == instrument_id) & (records["publisher_id"] == publisher_id)
            keep &= ~(mine & (positions <= seq))
        return keep

    # -- books: the state file and the snapshots ---------------------------------------------------
    def _save_state(self) -> None:
        """Every book's snapshot and the position they reflect: written, fsync'ed, renamed."""
        books = self.market.books()
        snapshot = concat_records([self.market.snapshot(key, 0) for key in books]) if books else np.empty(0, MBO_DTYPE)
        meta = json.dumps({"epoch": self.epoch, "replay_seq": self.replay_seq, "stream_seq": self._stream_seq, "skip": [[*key, seq] for key, seq in self._skip.items()]})
        path = self.state_path
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez(f, snapshot=snapshot, meta=np.frombuffer(meta.encode(), dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _load_state(self) -> bool:
        """Restores the books from the state file; False when there is none."""
        path = self.state_path
        if not path.is_file():
            return False
        try:
            with np.load(path) as saved:
                snapshot = saved["snapshot"]
                meta = json.loads(saved["meta"].tobytes())
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"cannot read the store's state file {path}: {exc} (move it away to start cold)") from None
        if meta.get("epoch", "") != self.epoch:
            # Positions of another run (a new bus, or a stream that expired): they mean nothing here.
            log.warning(
                "the store's state file is of another run; starting cold",
                extra={"state_epoch": meta.get("epoch", ""), "bus_epoch": self.epoch, "state_file": str(path)},
            )
            return False
        if len(snapshot):
            self.market.apply(snapshot)
        self.replay_seq = self.acked_seq = int(meta["replay_seq"])
        self._state_stream_seq = self._stream_seq = int(meta["stream_seq"])
        self._skip = {(int(i), int(p)): int(seq) for i, p, seq in meta["skip"]}
        log.info("store state restored", extra={"replay_seq": self.replay_seq, "books": len(self.market.books())})
        return True

    async def _resync(self, step: RecordMessage, stream_seq: int) -> None:
        """A gap (the stream dropped what the store had not read): books again from the snapshots."""
        self._counters.gaps.inc()
        log.error(
            "gap in the bus: positions %d..%d are gone; books resynced from snapshots (those records are not stored)",
            self.replay_seq + 1, step.first_seq - 1, extra={"stream_seq": stream_seq},
        )  # fmt: skip
        self.market = Market(self.symbols)
        self._skip = {}
        await self._load_snapshots()
        self.replay_seq = step.first_seq - 1

    async def _stream_holds_the_start(self) -> bool:
        """True when the record stream still begins at position 1: then everything is stored, from empty books."""
        from nats.js.errors import NotFoundError

        info = await self._js.stream_info(RECORDS_STREAM)
        if not info.state.messages:
            return True
        try:
            first = await self._js.get_msg(RECORDS_STREAM, seq=info.state.first_seq)
        except NotFoundError:
            return False
        return (first.headers or {}).get(FIRST_SEQ) == "1"

    async def _load_snapshots(self) -> None:
        """Cold start: the latest snapshot of every book; its records up to it are skipped."""
        for seq, records in await self._snapshots():
            self.market.apply(records)
            first = records[0]
            self._skip[(int(first["instrument_id"]), int(first["publisher_id"]))] = seq
        log.info("store cold start", extra={"snapshots": len(self._skip)})

    async def _snapshots(self) -> list[tuple[int, np.ndarray]]:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            info = await self._js.stream_info(SNAPSHOTS_STREAM)
        except NotFoundError:
            return []
        if not info.state.messages:
            return []
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, inactive_threshold=30)
        sub = await self._js.pull_subscribe(SNAPSHOT_SUBJECTS, stream=SNAPSHOTS_STREAM, config=config)
        out: list[tuple[int, np.ndarray]] = []
        try:
            while True:
                msgs = await sub.fetch(FETCH_BATCH, timeout=2)
                for msg in msgs:
                    snapshot = decode_snapshot(msg.headers, msg.data)
                    if len(snapshot.records):
                        out.append((snapshot.position, snapshot.records))
                if msgs[-1].metadata.num_pending == 0:
                    return out
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _wait_for_stream(self) -> None:
        """Waits for ``MBOSTREAM_RECORDS`` (the replayer creates it); logs once while waiting."""
        from nats.js.errors import NotFoundError

        logged = False
        while True:
            try:
                await self._js.stream_info(RECORDS_STREAM)
                return
            except NotFoundError:
                if not logged:
                    log.warning("waiting for the replayer to create %s", RECORDS_STREAM)
                    logged = True
                await asyncio.sleep(0.2)

    async def _read_meta(self) -> Meta | None:
        """The replayer's meta (epoch, symbols); None after ``META_WAIT_SECONDS`` without one."""
        from nats.js.errors import NotFoundError

        deadline = time.monotonic() + META_WAIT_SECONDS
        while True:
            try:
                raw = await self._js.get_last_msg(META_STREAM, META_SUBJECT)
                return Meta.decode(raw.data)
            except NotFoundError:
                if time.monotonic() > deadline:
                    log.warning("no replayer metadata on the bus: instruments are tagged by id")
                    return None
                await asyncio.sleep(0.2)

    async def _set_health(self, status: int) -> None:
        assert self._health is not None
        await self._health.set("", status)


# -- the command ----------------------------------------------------------------------------------
async def run_store(settings: Settings, *, ready: Callable[[dict[str, Any]], None]) -> int:
    """Runs the store until SIGTERM/SIGINT; ``ready`` gets the ready line's fields."""
    store = BusStore(settings)
    stop = asyncio.Event()
    on_stop_signals(lambda _: stop.set())
    try:
        await store.start()
        ready({"listening": f"{settings.host}:{store.port}", "metrics_port": store.metrics_port, "consumer": CONSUMER})
        await store.run(stop)
    finally:
        await store.close()
    log.info("store stopped", extra={"acked_replay_seq": store.acked_seq})
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    flags = {
        "nats_url": args.nats,
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "log_level": args.log_level,
        "log_format": args.log_format if args.log_format != "json" else None,
        "store_ack_interval_seconds": args.ack_interval,
    }
    settings = load_settings(flags)
    if args.spool_dir:
        settings = replace(settings, storage=replace(settings.storage, spool_dir=Path(args.spool_dir)))
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(run_store(settings, ready=print_ready_line))
