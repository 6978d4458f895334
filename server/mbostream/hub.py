"""Fan-out room: one replay, many subscribers, and the replay never waits for any of them.

* **Event subscribers** (StreamEvents) get every batch, encoded by the API layer's
  :class:`EventEncoder` when the subscriber takes it, once per distinct (instrument filter, batch
  range) and shared as the same payload object. A subscriber that fell behind takes its whole
  queue as one message (catch-up). Each has a bounded queue; one that falls further behind than
  its queue is cut off with :class:`~mbostream.errors.SlowConsumerError`, which says where to resume.
  A bounded replay buffer of recent batches serves resumption by replay position.
* **Book subscribers** (StreamBook) watch *book channels*, one per (book, depth, include_orders).
  A channel holds only the latest book payload (made once by the API layer's :class:`BookEncoder`); a subscriber that has not taken it before the
  next one arrives counts a conflation. Channels are refreshed on a timer (``book_interval_ms``)
  from the books that changed, so the cost grows with books, not with subscribers; the timer
  stretches (up to ``book_interval_max_ms``) while the event loop runs late (unless every book
  stream is delivered by channel, off the loop) or the process is over ``book_cpu_target``, so book
  streams conflate rather than queue when there are more of them than one core can serve. A subscriber
  either has a task woken per refresh that takes its books (:meth:`BookSubscriber.updates`, the
  grpc.aio path), or a :class:`BookSink` the refresh itself hands them to, with one flush per
  refresh (the native transport): no task per message, and a book leaves in the refresh that made it.
  A sink that is also a :class:`BookFanout` takes a subscriber's books per channel instead (one
  message per book, or every changed book in one with ``combine``, at most ``min_interval``
  apart: the sink makes and paces the messages): once the subscriber's first message of a book is
  out, the sink subscribes it to the channel, and each refresh publishes the channel's new book
  to the sink once for all its subscribers (:meth:`Hub.fan_out`); the per-subscriber work (and
  conflation) is then the sink's, off the loop.
* **Sinks** (storage) get every batch through a non-blocking ``offer``; a sink that is behind
  makes the hub not ready, and the feed waits for :meth:`Hub.wait_ready` (backpressure).

The hub is the feed's :class:`~mbostream.feed.Publisher`. It deals in batches and book states and
never knows the wire: what a payload is, is the encoders' business (the gRPC layer's). Everything
here runs on the server's event loop thread; nothing blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeAlias

import numpy as np

from mbostream.errors import (
    EpochMismatchError,
    ReplayPositionError,
    ShuttingDownError,
    SlowConsumerError,
    TooManyStreamsError,
)
from mbostream.feed import Batch
from mbostream_core.market import BookKey, Market
from mbostream_core.records import concat_records
from mbostream.metrics import METRICS

log = logging.getLogger(__name__)

GOLDEN_RATIO_CONJUGATE: Final = 0.6180339887498949

#: Most records one StreamEvents message carries when a reader that fell behind catches up (about
#: 50 bytes a record on the wire: well under the 4 MiB clients accept by default).
COALESCE_RECORDS: Final = 32_768
#: Encoded event ranges kept for subscribers that take the same range a little later.
ENCODED_CACHE_ENTRIES: Final = 32

#: A book refresh that wakes up later than this (or a quarter of its interval) finds the event loop
#: behind: the interval stretches. One that wakes up within LOOP_ON_TIME_SECONDS lets it shrink back.
LOOP_LATE_SECONDS: Final = 0.002
LOOP_ON_TIME_SECONDS: Final = 0.0005
#: asyncio's epoll selector waits in whole milliseconds, rounded up: a refresh phase that wakes
#: within this of its point of the schedule is on time (lateness is counted beyond it). Counted
#: from the point itself, an idle loop's phases of a few ms in 8 read as 0.5-1 ms late, and a
#: refresh the loop had stretched never returned.
SELECTOR_GRANULARITY_SECONDS: Final = 0.001

#: How long the process's CPU is measured over for the CPU target, and the most the refresh
#: interval moves after one window (by this factor at most, either way).
CPU_WINDOW_SECONDS: Final = 0.25
CPU_STEP_MAX: Final = 1.25

#: Books one refresh phase sends at most (about 60 µs of the loop each through grpc.aio; a combined
#: message counts its books: its bytes, and its client's work, grow with them): more book
#: subscriptions than this are spread over several phases of the refresh interval, so a refresh
#: leaves as small bursts instead of one burst of every message (whose last one waits for all the
#: others), up to BOOK_PHASES_MAX phases.
BOOK_MESSAGES_PER_PHASE: Final = 64
BOOK_PHASES_MAX: Final = 8
#: Fan-out subscribers are spread over this many groups by their slot, each group published at the
#: refresh phase its slot falls in, so a channel's subscribers are written in small bursts too.
FANOUT_GROUPS: Final = BOOK_PHASES_MAX

#: How often a feed waiting for a sink that is behind looks again (sinks drain on their own threads).
SINK_POLL_SECONDS: Final = 0.002


#: Channel topics for fan-out sinks: unique in the process, never reused (a gateway's new hub
#: must not publish to the topics of an old hub's calls still ending on the same transport).
_TOPICS: Final = itertools.count(1)

#: Distinct books :func:`distinct` peels off one by one before it hands the rest to ``np.unique``.
DISTINCT_PEEL_MAX: Final = 8


def distinct(keys: np.ndarray) -> list[int]:
    """The distinct values of ``keys`` (a batch's book keys: thousands of rows, a handful of books).

    One vectorised compare per distinct value while there are few of them (a single-book batch
    costs one pass, ~2 µs for 3,500 rows, where ``np.unique`` hashes every row, ~100 µs); past
    :data:`DISTINCT_PEEL_MAX` of them, ``np.unique`` of what is left.
    """
    found: list[int] = []
    rest = keys
    while len(rest):
        if len(found) == DISTINCT_PEEL_MAX:
            found.extend(np.unique(rest).tolist())
            break
        first = rest[0]
        found.append(int(first))
        rest = rest[rest != first]
    return found


def groups_by_phase(phases: int) -> list[list[int]]:
    """The fan-out groups each of ``phases`` refresh phases publishes: group g at the phase its
    share of the interval falls in, as a subscriber's slot maps to its phase."""
    by_phase: list[list[int]] = [[] for _ in range(phases)]
    for group in range(FANOUT_GROUPS):
        by_phase[group * phases // FANOUT_GROUPS].append(group)
    return by_phase


class Sink(Protocol):
    """A batch consumer that must never block the replay (e.g. the storage sink)."""

    def offer(self, batch: Batch) -> None:
        """Takes one batch without blocking."""

    def behind(self) -> bool:
        """True while the sink holds more than it should; the feed then waits (backpressure)."""

    async def start(self) -> None:
        """Opens what the sink needs before the first batch."""

    async def stop(self, grace: float) -> None:
        """Delivers or keeps what it holds, within ``grace`` seconds."""


#: What an encoder made of a batch or a book, handed to subscribers as it is (opaque to the hub).
Payload: TypeAlias = object


class EventEncoder(Protocol):
    """Turns a batch into a subscriber's stream messages; the hub calls it once per distinct
    (selection, max_records) and gives the same payloads to every subscriber of that variant."""

    def encode(self, batch: Batch, selection: Selection, max_records: int) -> list[tuple[int, Payload]]:
        """``(replay position of the last record, payload)`` per message; [] when none is selected."""
        ...


class BookEncoder(Protocol):
    """Turns one book, as it is now, into a channel's payloads (made once for every subscriber)."""

    def encode(self, market: Market, key: BookKey, depth: int, orders: bool, position: int) -> BookPayload:
        """The book cut to ``depth`` (with its queues when ``orders``) at replay ``position``."""
        ...

    def restamp(self, book: BookPayload, ts_out: int) -> BookPayload:
        """``book``, unchanged since it was taken, stamped as published at ``ts_out``."""
        ...


class BookSink(Protocol):
    """Takes book subscribers' messages as the hub refreshes them, on the loop, without a task
    per message (the native transport): :meth:`BookSubscriber.deliver_to`."""

    def deliver(self, sub: BookSubscriber) -> None:
        """Sends what ``sub`` has pending now (:meth:`BookSubscriber.take`), or leaves it pending
        (conflating) while the client cannot take more; never raises, never blocks."""
        ...

    def flush(self) -> None:
        """Writes what :meth:`deliver` queued since the last flush (once per refresh)."""
        ...


class BookFanout(Protocol):
    """A :class:`BookSink` that delivers channels rather than subscribers: it has each of its
    subscribed clients sent a channel's newest book (a ``combine`` subscriber's changed books in
    one message; a paced subscriber's at most every ``min_interval``), conflating those a client
    has not been sent yet, without work on the loop per client (the native transport)."""

    def subscribe(self, sub: BookSubscriber, channel: BookChannel, topic: int) -> bool:
        """From now on ``sub`` gets what is published on ``topic`` (one of ``channel``'s) after
        the version it was sent (True), or it cannot (False: it stays with :meth:`BookSink.deliver`)."""
        ...

    def publish(self, channel: BookChannel, topic: int) -> None:
        """Hands ``channel``'s new version to every subscriber of ``topic`` (written at the next
        :meth:`BookSink.flush`); never raises, never blocks."""
        ...


@dataclass(frozen=True, slots=True)
class BookPayload:
    """A channel's book as the API layer sends it: on its own, or combined with other books."""

    single: Payload
    multi: Payload
    #: When the book was published (ns since the UNIX epoch): when it was taken, or when a later
    #: refresh sent it again unchanged (:meth:`BookEncoder.restamp`).
    ts_out: int
    #: Bytes a restamp appended to ``single`` (the next restamp replaces them).
    stamp: int = 0


@dataclass(frozen=True)
class Selection:
    """Which books a subscriber wants: instruments at any publisher, or exact books. Empty: all."""

    any_publisher: frozenset[int] = frozenset()
    exact: frozenset[BookKey] = frozenset()

    @property
    def everything(self) -> bool:
        return not self.any_publisher and not self.exact

    def matches(self, key: BookKey) -> bool:
        return self.everything or key.instrument_id in self.any_publisher or key in self.exact

    def mask(self, records: np.ndarray) -> np.ndarray | None:
        """Boolean mask of the records this selection wants (None: all of them)."""
        if self.everything:
            return None
        iid = records["instrument_id"]
        mask = np.isin(iid, np.fromiter(self.any_publisher, dtype=np.uint32, count=len(self.any_publisher)))
        for key in self.exact:
            mask |= (iid == key.instrument_id) & (records["publisher_id"] == key.publisher_id)
        return mask


class EventSubscriber:
    """One StreamEvents client: a bounded queue of the batches it has yet to receive.

    Batches are encoded when the client takes them, not when they are published: a client that
    keeps up takes one batch at a time (encoded once for every subscriber of the same variant, see
    :meth:`Hub._encode_range`), and one that fell behind takes everything queued, up to
    :data:`COALESCE_RECORDS`, in one message. So a reader that the event loop could not serve for
    a while catches up in a few large messages instead of one small message per replay step, and
    is cut off only when it is truly slower than the feed.
    """

    def __init__(self, hub: Hub, selection: Selection, capacity: int, max_records: int, resume_after: int) -> None:
        self.hub = hub
        self.selection = selection
        self.capacity = capacity
        self.max_records = max_records
        #: Already-encoded messages sent before any batch (a snapshot): ``(position, payload)``.
        self.prefix: deque[tuple[int, Payload]] = deque()
        #: Live (or backlog) batches not yet taken, consecutive in replay positions.
        self.queue: deque[Batch] = deque()
        self.wakeup = asyncio.Event()
        self.error: Exception | None = None
        #: Replay position of the last record handed to the client (the resume point).
        self.last_sent = resume_after

    def push(self, batch: Batch) -> None:
        if self.error is not None:
            return
        if len(self.queue) >= self.capacity:
            self.error = SlowConsumerError(resume_after=self.last_sent, buffered=self.capacity)
            self.queue.clear()
            METRICS.slow_reader_disconnects.inc()
            log.warning(
                "slow reader cut off",
                extra={"resume_after": self.last_sent, "buffer_batches": self.capacity},
            )
        else:
            self.queue.append(batch)
        self.wakeup.set()

    def _take(self) -> list[Batch]:
        """The queued batches one message may carry: at least one, at most COALESCE_RECORDS records."""
        taken = [self.queue.popleft()]
        records = len(taken[0])
        while self.queue and records + len(self.queue[0]) <= COALESCE_RECORDS:
            batch = self.queue.popleft()
            records += len(batch)
            taken.append(batch)
        return taken

    async def payloads(self) -> AsyncIterator[Payload]:
        """Yields payloads until the hub closes or the subscriber falls behind (raises then)."""
        while True:
            while self.prefix:
                last, payload = self.prefix.popleft()
                yield payload
                self.last_sent = last
            while self.queue:
                taken = self._take()
                for last, payload in self.hub._encode_range(taken, self.selection, self.max_records):
                    yield payload
                    self.last_sent = last
            if self.error is not None:
                if isinstance(self.error, SlowConsumerError):
                    self.error = SlowConsumerError(resume_after=self.last_sent, buffered=self.capacity)
                raise self.error
            if self.hub.closed:
                raise ShuttingDownError("the server is shutting down; reconnect and resume with start_after_sequence")
            self.wakeup.clear()
            await self.wakeup.wait()


@dataclass
class BookChannel:
    """The latest book payload for one (book, depth, include_orders)."""

    key: BookKey
    depth: int
    orders: bool
    #: The book as of the last refresh that changed it (None until the first).
    book: BookPayload | None = None
    version: int = 0
    #: The hub's publish generation the book was taken at (stale once the book changes after it).
    built_generation: int = -1
    subscribers: set[BookSubscriber] = field(default_factory=set)
    #: The version each refresh phase last announced to its subscribers.
    announced: dict[int, int] = field(default_factory=dict)
    #: For :class:`BookFanout` sinks: the channel's first topic (one per fan-out group from it),
    #: the subscribers they deliver it to (not in ``subscribers``), how many of them each group
    #: and each sink has (a refresh publishes per group and sink, never per subscriber), and the
    #: version last published to each group.
    topic: int = 0
    fanout: dict[BookSubscriber, BookFanout] = field(default_factory=dict)
    groups: Counter[int] = field(default_factory=Counter)
    sinks: Counter[BookFanout] = field(default_factory=Counter)
    published: dict[int, int] = field(default_factory=dict)


class BookSubscriber:
    """One StreamBook client: which channels changed since it last looked, and how often."""

    def __init__(
        self, hub: Hub, selection: Selection, depth: int, orders: bool, min_interval: float, combine: bool = False
    ) -> None:
        self.hub = hub
        self.selection = selection
        self.depth = depth
        self.orders = orders
        self.min_interval = min_interval
        self.combine = combine
        self.channels: dict[BookKey, BookChannel] = {}
        self.pending: dict[BookKey, int] = {}  # key -> conflated count since last taken
        self.seen_versions: dict[BookKey, int] = {}
        self.wakeup = asyncio.Event()
        #: Where in the refresh interval this subscriber's books are refreshed, in [0, 1); the
        #: phase is ``int(slot * phases)``, so subscribers keep their order when phases change.
        self.slot = 0.0
        self.phase = 0
        #: Where the hub hands this subscriber's books as it refreshes them (:meth:`deliver_to`);
        #: None: the subscriber's task takes them from :meth:`updates`, woken per refresh.
        self.sink: BookSink | None = None
        #: The books its sink delivers by channel (:meth:`Hub.fan_out`), not by subscriber.
        self.fanout: set[BookKey] = set()

    @property
    def group(self) -> int:
        """Its fan-out group: where in the refresh interval its books are published."""
        return int(self.slot * FANOUT_GROUPS)

    def notify(self, channel: BookChannel) -> None:
        if channel.key in self.pending:
            self.pending[channel.key] += 1
            METRICS.conflations.inc()
        else:
            self.pending[channel.key] = 0
        if self.sink is not None:
            self.hub.due[self] = None  # delivered by the hub once this refresh is done
        else:
            self.wakeup.set()

    def raise_if_closed(self) -> None:
        """ShuttingDownError once the hub is closed (the stream's end, UNAVAILABLE)."""
        if self.hub.closed:
            raise ShuttingDownError("the server is shutting down; reconnect to keep streaming books")

    def deliver_to(self, sink: BookSink) -> None:
        """From now on the hub hands this subscriber's books to ``sink`` as it refreshes them,
        starting with every watched book's first message, instead of waking a task per message."""
        if self.sink is None and self in self.hub.book_subscribers:
            self.hub.loop_streams -= 1
        self.sink = sink
        for key in self.channels:
            if key not in self.seen_versions:
                self.pending[key] = 0  # a first message: conflated 0, as :meth:`updates` sends it
        self.hub.due[self] = None
        self.hub.deliver_due()

    def take(self) -> Iterator[tuple[list[BookChannel], bool, int]]:
        """The messages due now from what is pending, taken as they are iterated: one per book,
        or — with ``combine`` — every changed book (firsts aside) in one message last."""
        pending, self.pending = self.pending, {}
        combined: list[BookChannel] = []
        conflated_total = 0
        for key, conflated in pending.items():
            channel = self.channels[key]
            first = key not in self.seen_versions
            if not first and self.seen_versions[key] == channel.version:
                continue  # announced again by another phase, or taken already: nothing new
            self.seen_versions[key] = channel.version
            if self.combine and not first:
                combined.append(channel)
                conflated_total += conflated
            else:
                yield [channel], first, conflated
        if combined:
            yield combined, False, conflated_total

    async def updates(self) -> AsyncIterator[tuple[list[BookChannel], bool, int]]:
        """Yields ``(channels, is_first, conflated)``: every watched book first, then changes.

        A book's first message is always on its own; later ones are one per book, or — with
        ``combine`` — every changed book in one message.
        """
        for key, channel in list(self.channels.items()):
            self.pending.pop(key, None)
            self.seen_versions[key] = channel.version
            yield [channel], True, 0
        last_sent = 0.0
        while True:
            self.raise_if_closed()
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if self.min_interval:
                wait = last_sent + self.min_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            for message in self.take():
                yield message
            last_sent = time.monotonic()


class Hub:
    """Publishes the replay's batches to every kind of subscriber."""

    def __init__(
        self,
        market: Market,
        *,
        event_encoder: EventEncoder,
        book_encoder: BookEncoder,
        replay_buffer_records: int,
        subscriber_buffer_batches: int,
        max_streams: int,
        book_interval: float,
        max_streams_per_peer: int | None = None,
        book_interval_max: float | None = None,
        book_cpu_target: float = 0.0,
        epoch: str = "",
    ) -> None:
        self.market = market
        #: Identity of the run whose replay positions this hub publishes.
        self.epoch = epoch
        self.event_encoder = event_encoder
        self.book_encoder = book_encoder
        self.replay_buffer_records = replay_buffer_records
        self.subscriber_buffer_batches = subscriber_buffer_batches
        self.max_streams = max_streams
        #: Streams one client address may hold at once (None: only the global limit applies).
        self.max_streams_per_peer = max_streams_per_peer
        #: Open streams by client address; an address leaves the map with its last stream.
        self.streams_by_peer: Counter[str] = Counter()
        self._peer_of: dict[EventSubscriber | BookSubscriber, str] = {}
        self.book_interval = book_interval
        #: Longest the refresh interval stretches to while the loop runs late (a bound on book age).
        self.book_interval_max = max(book_interval, book_interval_max if book_interval_max is not None else book_interval)
        #: The refresh interval in force now (``book_interval`` while the loop keeps up).
        self.effective_book_interval = book_interval
        #: The process CPU (cores) the refresh interval is set to keep the process at, when the
        #: books would take more (0: none), and the interval that target asks for: a loop that
        #: runs late stretches the refresh further, and on time again returns to this one.
        self.book_cpu_target = book_cpu_target
        self._cpu_interval = book_interval
        self.buffer: deque[Batch] = deque()
        self.buffered_records = 0
        #: Replay position of the last published record (0 before the first).
        self.position = 0
        self.event_subscribers: set[EventSubscriber] = set()
        self.book_subscribers: set[BookSubscriber] = set()
        self.channels: dict[tuple[BookKey, int, bool], BookChannel] = {}
        self.sinks: list[Sink] = []
        #: Books changed since each refresh phase last looked (phase -> keys).
        self.dirty: dict[int, set[BookKey]] = {0: set()}
        #: Publish generation (one per published batch) at which each book last changed.
        self.generation = 0
        self.changed_at: dict[BookKey, int] = {}
        self.channels_by_book: dict[BookKey, list[BookChannel]] = {}
        #: Refresh phases in force, and the slot the next book subscriber takes (a low-discrepancy
        #: sequence: any number of subscribers spreads evenly over any number of phases).
        self.book_phases = 1
        #: The fan-out groups each phase publishes (phase -> groups).
        self._phase_groups = groups_by_phase(1)
        self._next_slot = 0.0
        self.known_books: set[BookKey] = set()
        #: Subscribers with a sink that have books to deliver now (insertion-ordered).
        self.due: dict[BookSubscriber, None] = {}
        #: Fan-out sinks a channel was published to since their last flush.
        self.published_to: dict[int, BookSink] = {}
        #: Book subscribers served by a task of their own on the loop (no sink: the gRPC port's
        #: grpc.aio streams), whose sends make the loop late.
        self.loop_streams = 0
        self.closed = False
        self._encoded: OrderedDict[tuple[Selection, int, int, int], list[tuple[int, Payload]]] = OrderedDict()

    # -- publishing -------------------------------------------------------------------------------
    def backlogged(self) -> bool:
        """True while a sink (the storage) cannot keep up and asks the feed to wait."""
        return any(sink.behind() for sink in self.sinks)

    async def wait_ready(self) -> None:
        """Returns once no sink is behind (sinks drain on their own threads: polled)."""
        while self.backlogged() and not self.closed:
            await asyncio.sleep(SINK_POLL_SECONDS)

    def publish(self, batch: Batch) -> None:
        """Hands one applied batch to every subscriber; returns at once."""
        started = time.perf_counter()
        self.position = batch.last_replay_seq
        if not batch.snapshot:
            self.buffer.append(batch)
            self.buffered_records += len(batch)
            while self.buffered_records - len(self.buffer[0]) >= self.replay_buffer_records:
                self.buffered_records -= len(self.buffer.popleft())
        if self.event_subscribers:
            wanted: dict[Selection, bool] = {}
            for sub in list(self.event_subscribers):
                selected = wanted.get(sub.selection)
                if selected is None:
                    mask = sub.selection.mask(batch.records)
                    selected = wanted[sub.selection] = mask is None or bool(mask.any())
                if selected:
                    sub.push(batch)
            METRICS.events_queue_depth.set(max((len(s.queue) for s in self.event_subscribers), default=0))
        for sink in self.sinks:
            try:
                sink.offer(batch)
            except Exception:  # a sink must never stop the replay
                log.exception("sink failed to accept a batch")
        if len(batch.events):
            books = batch.books
            if books is None:  # not from the engine's apply: found in the rows
                books = distinct((batch.events["instrument_id"].astype(np.uint64) << np.uint64(16)) | batch.events["publisher_id"].astype(np.uint64))
            changed = {BookKey(k >> 16, k & 0xFFFF) for k in books}
            new = changed - self.known_books
            self.generation += 1
            for key in changed:
                self.changed_at[key] = self.generation
            if new:
                self.known_books |= new
                self._attach_new_books(new)
            for dirty in self.dirty.values():
                dirty |= changed
            if self.book_interval == 0:
                self.refresh_books()
        METRICS.publish_seconds.observe(time.perf_counter() - started)

    def refresh_books(self) -> None:
        """Refreshes every phase now: rebuilds the channels of books that changed, notifies."""
        for phase in range(self.book_phases):
            self.refresh_phase(phase)

    def refresh_phase(self, phase: int) -> None:
        """Rebuilds the changed channels that subscribers of ``phase`` watch and notifies those
        subscribers (a channel another phase rebuilt since the book last changed is reused)."""
        dirty = self.dirty.get(phase)
        if not dirty:
            return
        self.dirty[phase] = set()
        for key in dirty:
            for channel in self.channels_by_book.get(key, ()):
                if channel.groups:
                    self._publish(channel, phase)
                subs = [sub for sub in channel.subscribers if sub.phase == phase]
                if not subs:
                    continue
                self._take(channel)
                if channel.announced.get(phase) != channel.version:
                    channel.announced[phase] = channel.version
                    for sub in subs:
                        if sub.seen_versions.get(key) != channel.version:  # not the version it has
                            sub.notify(channel)
        self.deliver_due()

    def _publish(self, channel: BookChannel, phase: int) -> None:
        """Publishes the channel's book as it is now to the fan-out groups of ``phase`` that
        have subscribers, through each of its fan-out sinks."""
        groups = [g for g in self._phase_groups[phase] if channel.groups[g]]
        if not groups:
            return
        self._take(channel)
        for group in groups:
            if channel.published.get(group) == channel.version:
                continue
            channel.published[group] = channel.version
            for sink in channel.sinks:
                self.published_to[id(sink)] = sink
                try:
                    sink.publish(channel, channel.topic + group)
                except Exception:  # a sink must never stop the refresh
                    log.exception("book sink failed to publish")

    def fan_out(self, sub: BookSubscriber, key: BookKey, sink: BookFanout) -> bool:
        """Moves ``sub``'s book ``key`` (its first message sent) to delivery by channel through
        ``sink``; False when the sink cannot take it (it stays with per-subscriber delivery)."""
        channel = sub.channels.get(key)
        if channel is None or key in sub.fanout or sub not in channel.subscribers:
            return False
        if not channel.topic:
            channel.topic = next(_TOPICS) * FANOUT_GROUPS
        group = sub.group
        if not sink.subscribe(sub, channel, channel.topic + group):
            return False
        channel.published.setdefault(group, channel.version)
        channel.subscribers.discard(sub)
        channel.fanout[sub] = sink
        channel.groups[group] += 1
        channel.sinks[sink] += 1
        sub.fanout.add(key)
        return True

    def deliver_due(self) -> None:
        """Hands the subscribers with a sink what they have pending, then flushes each sink once
        (and each fan-out sink a channel was published to)."""
        sinks, self.published_to = self.published_to, {}
        if not self.due and not sinks:
            return
        due, self.due = self.due, {}
        for sub in due:
            sink = sub.sink
            if sink is None or sub not in self.book_subscribers:
                continue
            sinks[id(sink)] = sink
            try:
                sink.deliver(sub)
            except Exception:  # a sink must never stop the refresh
                log.exception("book sink failed to deliver")
        for sink in sinks.values():
            try:
                sink.flush()
            except Exception:
                log.exception("book sink failed to flush")

    def _stale(self, channel: BookChannel) -> bool:
        return channel.book is None or channel.built_generation < self.changed_at.get(channel.key, 0)

    def _take(self, channel: BookChannel) -> None:
        """The channel's book for a refresh that sends it now: taken again when the book changed
        since, else restamped. A book taken by an earlier phase of the refresh (or at an earlier
        refresh) and unchanged since is the live book now; its ts_out says when it is published
        (the API's meaning), not when another phase took it: without this, a phase's books said
        they were up to a refresh interval older than they were."""
        if self._stale(channel):
            self._rebuild(channel)
        elif channel.book is not None:
            channel.book = self.book_encoder.restamp(channel.book, time.time_ns())

    def _rebuild(self, channel: BookChannel) -> None:
        """Takes the channel's book as it is now (a new version), encoded once for everyone."""
        channel.book = self.book_encoder.encode(self.market, channel.key, channel.depth, channel.orders, self.position)
        channel.built_generation = self.generation
        channel.version += 1

    def _set_phases(self) -> None:
        """Spreads book subscribers over enough phases that none sends more than
        BOOK_MESSAGES_PER_PHASE books a refresh (a combined message counts its books: counted as
        one, 100 clients of 4 books each left in 2 bursts of 50 messages of 4 books, and book p99
        with ``combine_books`` was 5.6-6.0 ms against 3.2-3.7 in 7 bursts, docs/performance.md)."""
        messages = sum(len(sub.channels) for sub in self.book_subscribers)
        phases = max(1, min(BOOK_PHASES_MAX, -(-messages // BOOK_MESSAGES_PER_PHASE)))
        if phases == self.book_phases:
            return
        pending = set().union(*self.dirty.values())
        self.book_phases = phases
        self._phase_groups = groups_by_phase(phases)
        self.dirty = {phase: set(pending) for phase in range(phases)}
        for sub in self.book_subscribers:
            sub.phase = int(sub.slot * phases)
        for channel in self.channels.values():
            channel.announced.clear()
        METRICS.book_refresh_phases.set(phases)

    async def run_ticker(self) -> None:
        """Refreshes book channels every ``book_interval`` seconds until closed.

        While book streams are served by tasks of their own on the loop (the gRPC port), the
        interval stretches while the event loop runs late (the ticker wakes up later than it
        asked): the loop has more to send than it can, so every book stream gets fewer, fresher
        books (each client's conflation count says how many it skipped) instead of a queue of
        stale ones behind which the event streams starve. It stretches by half at a time, up to
        ``book_interval_max``, and returns by 5% a tick once the loop is on time again. When every
        book stream goes through a sink (the native transport) a late loop is the replay's doing
        and is not looked at. With a CPU target, the interval is also set once per
        CPU_WINDOW_SECONDS so that the process stays at that CPU (see :meth:`adapt_interval`):
        book streams, the elastic part of the work, give way first.
        """
        if self.book_interval <= 0:
            return
        loop = asyncio.get_running_loop()
        interval = self.book_interval
        METRICS.book_refresh_interval_seconds.set(interval)
        window = (loop.time(), time.process_time())
        due = loop.time()
        while not self.closed:
            # One refresh interval, in as many phases as there are now: each phase refreshes its
            # own subscribers' books at its own moment of the interval. The moments are fixed
            # points of the schedule, not a sleep from the end of the last phase: epoll waits in
            # whole milliseconds, rounded up, so with 8 phases of a 5 ms interval each sleep took
            # at least 1 ms and the refresh came every 11-12 ms, not 5 (docs/performance.md).
            late = 0.0
            phase = 0
            while phase < self.book_phases and not self.closed:
                due += interval / self.book_phases
                now = loop.time()
                behind = 0.0
                if now - due > interval:  # more than an interval behind: start again from now
                    behind = now - due
                    due = now
                await asyncio.sleep(max(0.0, due - now))
                woke = max(behind, loop.time() - due)
                late = max(late, woke)
                METRICS.event_loop_lag_seconds.observe(max(0.0, woke - SELECTOR_GRANULARITY_SECONDS))
                self.refresh_phase(phase)
                phase += 1
            if phase >= self.book_phases:  # every phase of this interval refreshed
                METRICS.book_refreshes.inc()
            late = max(0.0, late - SELECTOR_GRANULARITY_SECONDS)  # the selector's rounding is on time
            cpu = None
            now = loop.time()
            if self.book_cpu_target and now - window[0] >= CPU_WINDOW_SECONDS:
                spent = time.process_time()
                cpu = (spent - window[1]) / (now - window[0])
                window = (now, spent)
            if not self.loop_streams:
                # Every book stream is delivered through a sink (the native transport: by
                # channel, or per subscriber at a few µs a message), none by a grpc.aio task: a
                # late loop is the replay's doing, and fewer books would not make it earlier.
                late = 0.0
            adapted = self.adapt_interval(interval, late, cpu)
            if adapted != interval:
                interval = adapted
                METRICS.book_refresh_interval_seconds.set(interval)
            self.effective_book_interval = interval

    def adapt_interval(self, interval: float, late: float, cpu: float | None = None) -> float:
        """The next refresh interval after a tick that woke up ``late`` seconds after it was due;
        ``cpu``: the process's CPU (cores) over the window that ended with this tick, or None
        when no window ended (the last one's verdict holds).

        The CPU target scales the interval by ``cpu / target`` (at most CPU_STEP_MAX either way a
        window): the books' share of the CPU falls as the interval grows, so this approaches the
        interval at which the process is at its target from either side, without overshooting
        it, and stays there (a window at the target leaves it as it is). The rule before (a step up
        by a quarter over the target, a hold down to 90% of it, then a return by 5% a tick) left
        the interval wherever its steps happened to stop in that band, or swinging through it."""
        if late > max(LOOP_LATE_SECONDS, 0.25 * interval):
            return min(self.book_interval_max, interval * 1.5)
        if cpu is not None and self.book_cpu_target:
            step = min(CPU_STEP_MAX, max(1 / CPU_STEP_MAX, cpu / self.book_cpu_target))
            self._cpu_interval = min(self.book_interval_max, max(self.book_interval, interval * step))
            return self._cpu_interval
        if late < LOOP_ON_TIME_SECONDS and interval > self._cpu_interval:
            return max(self._cpu_interval, interval * 0.95)
        return interval

    # -- subscribing ------------------------------------------------------------------------------
    def _check_capacity(self, peer: str) -> None:
        if len(self.event_subscribers) + len(self.book_subscribers) >= self.max_streams:
            raise TooManyStreamsError(f"stream limit reached ({self.max_streams} concurrent streams)")
        limit = self.max_streams_per_peer
        if peer and limit is not None and self.streams_by_peer[peer] >= limit:
            raise TooManyStreamsError(f"stream limit per client address reached ({limit} concurrent streams from {peer})")

    def _count_peer(self, sub: EventSubscriber | BookSubscriber, peer: str) -> None:
        if peer:
            self._peer_of[sub] = peer
            self.streams_by_peer[peer] += 1

    def _uncount_peer(self, sub: EventSubscriber | BookSubscriber) -> None:
        peer = self._peer_of.pop(sub, None)
        if peer is not None:
            self.streams_by_peer[peer] -= 1
            if self.streams_by_peer[peer] <= 0:
                del self.streams_by_peer[peer]

    def subscribe_events(
        self,
        selection: Selection,
        *,
        with_snapshot: bool,
        start_after: int | None,
        max_records: int,
        resume_epoch: str = "",
        peer: str = "",
    ) -> EventSubscriber:
        """Registers a StreamEvents client; snapshot or backlog is queued before live batches.

        A resume (``start_after``) that names another run's ``resume_epoch`` is refused: its
        position means nothing in this run, and the client's books must be rebuilt. ``peer``: the
        client's address, counted against ``max_streams_per_peer`` ("" counts against nothing).
        """
        self._check_capacity(peer)
        capacity = self.subscriber_buffer_batches
        if start_after is not None and resume_epoch and resume_epoch != self.epoch:
            raise EpochMismatchError(resume_epoch, self.epoch)
        if start_after is not None:
            oldest = self.buffer[0].first_replay_seq - 1 if self.buffer else self.position
            if start_after < oldest or start_after > self.position:
                raise ReplayPositionError(start_after, oldest, self.position)
            sub = EventSubscriber(self, selection, capacity, max_records, start_after)
            backlog: list[Batch] = []
            for batch in self.buffer:
                if batch.last_replay_seq <= start_after:
                    continue
                skip = max(0, start_after - batch.first_replay_seq + 1)
                if skip:
                    batch = Batch(batch.first_replay_seq + skip, batch.records[skip:], batch.events, batch.ts_out, books=batch.books)
                backlog.append(batch)
            # A resume may need more than the live buffer holds: give the backlog its own room.
            sub.capacity = capacity + len(backlog)
            sub.queue.extend(backlog)
        else:
            sub = EventSubscriber(self, selection, capacity, max_records, self.position)
            if with_snapshot:
                payloads: list[tuple[int, Payload]] = []
                now = time.time_ns()
                for key in self.market.books():
                    if selection.matches(key):
                        # Stamped with the book's own last ts_recv: a replica built from it matches GetBook.
                        snap = self.market.snapshot(key, ts_recv=self.market.stats(key).ts_recv)
                        payloads.extend(
                            self.event_encoder.encode(Batch(self.position, snap, snap[:0], now, snapshot=True), Selection(), 0)
                        )
                sub.prefix.extend(payloads)
        self.event_subscribers.add(sub)
        self._count_peer(sub, peer)
        METRICS.subscribers.labels("events").set(len(self.event_subscribers))
        return sub

    def unsubscribe_events(self, sub: EventSubscriber) -> None:
        self.event_subscribers.discard(sub)
        self._uncount_peer(sub)
        METRICS.subscribers.labels("events").set(len(self.event_subscribers))

    def subscribe_books(
        self, selection: Selection, *, depth: int, orders: bool, max_rate: float, combine: bool = False, peer: str = ""
    ) -> BookSubscriber:
        """Registers a StreamBook client on the channels of every matching book (``peer``: as
        :meth:`subscribe_events`)."""
        self._check_capacity(peer)
        sub = BookSubscriber(self, selection, depth, orders, 1.0 / max_rate if max_rate > 0 else 0.0, combine)
        sub.slot = self._next_slot
        self._next_slot = (self._next_slot + GOLDEN_RATIO_CONJUGATE) % 1.0
        sub.phase = int(sub.slot * self.book_phases)
        for key in self.market.books():
            if selection.matches(key):
                self._attach(sub, key)
        self.book_subscribers.add(sub)
        self.loop_streams += 1  # until it is given a sink (:meth:`BookSubscriber.deliver_to`)
        self._set_phases()
        self._count_peer(sub, peer)
        METRICS.subscribers.labels("book").set(len(self.book_subscribers))
        return sub

    def _attach(self, sub: BookSubscriber, key: BookKey) -> None:
        """Adds ``sub`` to the book's channel (its book taken now, or restamped: its first
        message goes out now)."""
        ckey = (key, sub.depth, sub.orders)
        channel = self.channels.get(ckey)
        if channel is None:
            channel = BookChannel(key, sub.depth, sub.orders)
            self.channels[ckey] = channel
            self.channels_by_book.setdefault(key, []).append(channel)
        if channel.subscribers or channel.fanout:
            self._take(channel)
        else:
            self._rebuild(channel)
        channel.subscribers.add(sub)
        sub.channels[key] = channel

    def _attach_new_books(self, keys: Iterable[BookKey]) -> None:
        """Attaches books seen for the first time to the subscribers that want them (built as
        they are now, and announced at once)."""
        for sub in self.book_subscribers:
            for key in keys:
                if sub.selection.matches(key) and key not in sub.channels:
                    self._attach(sub, key)
                    sub.notify(sub.channels[key])
        self._set_phases()
        self.deliver_due()

    def unsubscribe_books(self, sub: BookSubscriber) -> None:
        if sub in self.book_subscribers and sub.sink is None:
            self.loop_streams -= 1
        self.book_subscribers.discard(sub)
        self.due.pop(sub, None)
        self._uncount_peer(sub)
        for channel in sub.channels.values():
            channel.subscribers.discard(sub)
            sink = channel.fanout.pop(sub, None)
            if sink is not None:
                for counts, counted in ((channel.groups, sub.group), (channel.sinks, sink)):
                    counts[counted] -= 1
                    if not counts[counted]:
                        del counts[counted]
            if not channel.subscribers and not channel.fanout:
                self.channels.pop((channel.key, channel.depth, channel.orders), None)
                siblings = self.channels_by_book.get(channel.key, [])
                if channel in siblings:
                    siblings.remove(channel)
                if not siblings:
                    self.channels_by_book.pop(channel.key, None)
        self._set_phases()
        METRICS.subscribers.labels("book").set(len(self.book_subscribers))

    def _encode_range(self, batches: list[Batch], selection: Selection, max_records: int) -> list[tuple[int, Payload]]:
        """Consecutive batches as one variant's messages, encoded once for every subscriber that
        takes the same range (subscribers that keep up take the same single batches)."""
        first, last = batches[0], batches[-1]
        key = (selection, max_records, first.first_replay_seq, last.last_replay_seq)
        encoded = self._encoded.get(key)
        if encoded is None:
            if len(batches) == 1:
                merged = first
            else:
                records = concat_records([b.records for b in batches])
                # The oldest publication time: a merged message is as late as its first record.
                merged = Batch(first.first_replay_seq, records, records[:0], first.ts_out)
            encoded = self.event_encoder.encode(merged, selection, max_records)
            self._encoded[key] = encoded
            while len(self._encoded) > ENCODED_CACHE_ENTRIES:
                self._encoded.popitem(last=False)
            if len(batches) > 1:
                METRICS.events_coalesced_batches.inc(len(batches) - 1)
        return encoded

    def close(self) -> None:
        """Ends every stream: each gets UNAVAILABLE (shutting down) once its queue is sent."""
        self.closed = True
        for sub in self.event_subscribers:
            sub.wakeup.set()
        for bsub in self.book_subscribers:
            bsub.wakeup.set()
