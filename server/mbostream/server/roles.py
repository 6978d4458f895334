"""The bus roles' wiring (issue 14, docs/bus.md): ``mbostream replay`` and ``mbostream gateway``.

Both are the embedded server (:class:`~mbostream.server.app.App`) with another source or sink:

* :class:`ReplayerApp` replays the files as ``serve`` does (pacing, ReplayService, its own hub) and
  publishes every batch to the bus as well; it writes the meta message at start and every book's
  snapshot every ``snapshot_interval_seconds``. Restarted on a bus that already holds a run, it
  keeps that run's epoch, continues its positions and first clears every book downstream (``R``).
* :class:`GatewayApp` has no files and no ReplayService: its market and hub are fed from the bus
  (:class:`~mbostream.bus.ingest.BusFeed`), and resumes older than its memory are read from the
  stream. Health is NOT_SERVING until it is at the live edge; a resume a little ahead of it waits
  for it (UNAVAILABLE after a few seconds, so Envoy or the client retries on another gateway).
  A gap in the bus is resynced in place (the process stays up): NOT_SERVING, every stream ended
  UNAVAILABLE as at a restart, the books rebuilt in a fresh market and hub from the snapshots,
  SERVING again at the live edge (docs/bus.md, "Gaps").
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from nats.js.errors import NotFoundError

from mbostream.bus import codec
from mbostream.bus.ingest import BusFeed, StreamHistory
from mbostream.bus.publisher import BusPublisher, SnapshotWriter
from mbostream.bus.streams import (
    EPOCH,
    LAST_SEQ,
    META_STREAM,
    META_SUBJECT,
    RECORDS_STREAM,
    SNAPSHOTS_STREAM,
    connect,
    ensure_streams,
    tls_context,
)
from mbostream.config import Settings
from mbostream.errors import CatchingUpError, ConfigError
from mbostream.feed import Batch, Publisher
from mbostream.hub import Hub
from mbostream.server import market_data
from mbostream.server.app import App, Feed
from mbostream_core.market import BookKey, Market
from mbostream_core.prices import UNDEF_PRICE
from mbostream_core.records import F_LAST, MBO_DTYPE, MBO_LENGTH_WORDS, RTYPE_MBO


def _require_nats(settings: Settings) -> str:
    if not settings.nats_url:
        raise ConfigError("--nats / MBOSTREAM_NATS_URL", "the bus roles need the NATS server's URL")
    return settings.nats_url


def clear_records(keys: list[BookKey]) -> np.ndarray:
    """One ``R`` (clear, F_LAST) record per book: what a restarted replayer sends first."""
    out = np.zeros(len(keys), dtype=MBO_DTYPE)
    for row, key in zip(out, keys):
        row["length"], row["rtype"] = MBO_LENGTH_WORDS, RTYPE_MBO
        row["publisher_id"], row["instrument_id"] = key.publisher_id, key.instrument_id
        row["price"] = UNDEF_PRICE
        row["flags"] = F_LAST
        row["action"], row["side"] = b"R", b"N"
    return out


class _BusApp(App):
    """What both roles share: the connection, opened at start and closed last."""

    async def _connect(self, name: str, *, owns_limits: bool) -> None:
        """Connects and declares the streams; ``owns_limits``: the replayer, whose retention
        settings are applied to streams that exist already (a gateway's only to ones it creates)."""
        s = self.settings
        self.nc = await connect(_require_nats(s), name=name, tls=tls_context(s))
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, max_age_seconds=s.bus_max_age_seconds, max_bytes=s.bus_max_bytes, update=owns_limits)

    async def _close_source(self) -> None:
        nc = getattr(self, "nc", None)
        if nc is not None and not nc.is_closed:
            await nc.close()


class ReplayerApp(_BusApp):
    """``mbostream replay FILE... --nats URL``: the one writer of the bus."""

    async def _open_source(self) -> tuple[list[str], dict[int, str], str, str]:
        files, symbols, dataset, epoch = await super()._open_source()
        await self._connect("mbostream-replay", owns_limits=True)
        self.writer = secrets.token_hex(8)
        self.last_stream_seq = (await self.js.stream_info(RECORDS_STREAM)).state.last_seq
        self.resume_position = 0
        self.previous_books: list[BookKey] = []
        last = await self._last_record_message()
        if last is not None:
            # A run is on the bus already: continue its positions under its epoch, and clear the
            # books it left on the gateways (this replay starts the files over).
            epoch = (last.headers or {})[EPOCH]
            self.resume_position = int((last.headers or {})[LAST_SEQ])
            self.previous_books = await self._snapshot_books()
        meta = codec.Meta(epoch, dataset, symbols, tuple(files))
        await self.js.publish(META_SUBJECT, meta.encode(), stream=META_STREAM)
        return files, symbols, dataset, epoch

    async def _last_record_message(self) -> Any:
        """The record stream's last message; None when it holds none (new, or all of it expired:
        then this is a new run, with a new epoch)."""
        if not self.last_stream_seq:
            return None
        try:
            return await self.js.get_msg(RECORDS_STREAM, seq=self.last_stream_seq)
        except NotFoundError:
            return None

    def _publisher(self) -> Publisher:
        self.bus_publisher = BusPublisher(
            self.nc, self.js, self.hub, epoch=self.hub.epoch, writer=self.writer, last_stream_seq=self.last_stream_seq
        )
        return self.bus_publisher

    def _make_feed(self, files: list[str]) -> Feed:
        replayer = super()._make_feed(files)
        self.replayer.position = self.hub.position = self.resume_position
        if self.previous_books:
            records = clear_records(self.previous_books)
            events = self.market.apply(records, complete_events=True).events
            batch = Batch(self.replayer.position + 1, records, events, time.time_ns())
            self.replayer.position = batch.last_replay_seq
            self.bus_publisher.publish(batch)  # queued: sent first once the publisher runs
        return replayer

    def _background(self) -> list[tuple[str, Any]]:
        snapshots = SnapshotWriter(
            self.js,
            self.market,
            self.bus_publisher,
            lambda: self.replayer.position,
            epoch=self.hub.epoch,
            interval=self.settings.snapshot_interval_seconds,
        )
        return [("bus-publisher", self.bus_publisher.run()), ("bus-snapshots", snapshots.run())]

    async def _snapshot_books(self) -> list[BookKey]:
        """The books that have a snapshot on the bus (those a previous replayer built)."""
        try:
            info = await self.js.stream_info(SNAPSHOTS_STREAM, subjects_filter=">")
        except NotFoundError:
            return []
        keys = []
        for subject in info.state.subjects or {}:
            publisher_id, instrument_id = subject.rsplit(".", 2)[-2:]
            keys.append(BookKey(int(instrument_id), int(publisher_id)))
        return keys


class GatewayApp(_BusApp):
    """``mbostream gateway --nats URL``: a stateless replica fed from the bus."""

    async def _open_source(self) -> tuple[list[str], dict[int, str], str, str]:
        await self._connect("mbostream-gateway", owns_limits=False)
        try:
            msg = await self.js.get_last_msg(META_STREAM, META_SUBJECT)
        except NotFoundError:
            raise ConfigError("--nats / MBOSTREAM_NATS_URL", "no replayer has written to this bus yet (no meta message)") from None
        meta = codec.Meta.decode(msg.data)
        return [], meta.symbols, meta.dataset, meta.epoch

    def _make_feed(self, files: list[str]) -> Feed:
        self.ingest = BusFeed(self.nc, self.js, self.market, self.hub, epoch=self.hub.epoch, resync=self)
        return self.ingest

    def _handlers(self, dataset: str) -> tuple[grpc.GenericRpcHandler, ...]:
        self.service = market_data.MarketDataService(
            self.market, self.hub, dataset, history=StreamHistory(self.js), catch_up=self.ingest.catch_up
        )
        return (market_data.handler(self.service),)

    # -- resync after a gap (the ingest's Resync) ---------------------------------------------------
    async def stop_serving(self) -> None:
        """NOT_SERVING (Envoy and readiness probes move clients away) and every stream ended as a
        restart ends it: an event stream gets what it was queued (contiguous), then UNAVAILABLE,
        so the client resumes; a book stream UNAVAILABLE, so it reconnects for a fresh snapshot.
        Unary reads keep answering from the old books, consistent at the position they state,
        until the rebuilt ones replace them."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for sub in self.hub.event_subscribers:
            sub.error = CatchingUpError(
                f"this gateway resyncs its books after a gap in the bus (at position {self.hub.position}); "
                "resume with start_after_sequence"
            )
        self.hub.close()
        self._background_task("health", self._serving_when_loaded())

    def fresh_market(self) -> tuple[Market, Publisher]:
        """A new, empty market and hub (the old hub's settings) in place of the old ones."""
        old = self.hub
        self.market = Market(self.market.symbols)
        self.hub = Hub(self.market, **{name: getattr(old, name) for name in _HUB_SETTINGS})
        self.hub.sinks.extend(old.sinks)
        self.service.market, self.service.hub = self.market, self.hub
        self._background_task("book-ticker", self.hub.run_ticker())
        return self.market, self.hub

    def _background_task(self, name: str, coro: Any) -> None:
        """Runs ``coro`` as one of the server's tasks (a failure stops it; shutdown cancels it)."""
        if self._stopping:  # shutdown has cancelled the tasks already: none to start
            coro.close()
            return
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)


#: What a resynced gateway's new hub takes over from the old one (the constructor's names).
_HUB_SETTINGS = (
    "event_encoder",
    "book_encoder",
    "replay_buffer_records",
    "subscriber_buffer_batches",
    "max_streams",
    "max_streams_per_peer",
    "book_interval",
    "book_interval_max",
    "book_cpu_target",
    "epoch",
)


async def run_role(app: App) -> int:
    """Runs a role's server as ``serve`` runs the embedded one (ready line, signals, exit code)."""
    from mbostream.server.app import serve

    return await serve(app.settings, app=app)


def run(app: App) -> int:
    return asyncio.run(run_role(app))
