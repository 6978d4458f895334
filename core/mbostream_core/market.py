"""Domain room: the market of L3 books, as Python sees it.

A thin, typed layer over the native engine (``mbostream_core._engine``): it applies chunks of raw MBO
records, turns the engine's per-F_LAST event rows into a numpy table, drains and logs anomalies with
their context, and returns immutable views. No I/O, asyncio, gRPC or metrics here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, NamedTuple

import numpy as np

from mbostream_core import _engine
from mbostream_core.errors import UnknownInstrumentError
from mbostream_core.records import EVENT_DTYPE, MBO_DTYPE, UNDEF_PRICE

log = logging.getLogger(__name__)

#: Anomalies of one kind and book logged at WARNING before the rest go to DEBUG.
WARN_FIRST_N: Final = 5

# Fields of the engine's raw anomaly tuples (the order of :class:`Anomaly`).
_KIND: Final = itemgetter(0)
_KIND_AND_BOOK: Final = itemgetter(0, 2, 3)


class BookKey(NamedTuple):
    """A book's identity: one instrument at one publisher.

    A named tuple, not a dataclass: the hub looks books up by key for every subscriber at every
    refresh, and a tuple's hash and equality run in C (66 ns a dict lookup against 153 for a frozen
    dataclass, whose ``__hash__`` is Python)."""

    instrument_id: int
    publisher_id: int


@dataclass(frozen=True, slots=True)
class Level:
    """An aggregated price level; ``orders`` is the L3 queue ``(order_id, size)`` when requested."""

    price: int
    size: int
    count: int
    orders: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Trade:
    """The last trade (`T` record) of a book."""

    price: int
    size: int
    side: str
    ts_event: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One record the engine could not apply literally, with the context to find it again."""

    kind: str
    record_index: int
    instrument_id: int
    publisher_id: int
    order_id: int
    sequence: int
    ts_event: int
    action: str
    side: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one :meth:`Market.apply` call did."""

    #: Index one past the last applied record of the array.
    end: int
    #: True when no book is inside an event.
    consistent: bool
    #: One :data:`EVENT_DTYPE` row per F_LAST applied, with its BBO then.
    events: np.ndarray
    #: Integrity violations (audit mode only): ``(index, instrument_id, publisher_id, sequence, message)``.
    violations: list[tuple[int, int, int, int, str]] = field(default_factory=list)
    #: With ``apply(books=True)``: the books with a row in ``events``, each once, as
    #: ``instrument_id << 16 | publisher_id``, in the order of each one's first row; else None.
    books: list[int] | None = None


@dataclass(frozen=True, slots=True)
class BookView:
    """A consistent view of one book as of its last F_LAST."""

    instrument_id: int
    publisher_id: int
    symbol: str
    sequence: int
    ts_event: int
    ts_recv: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    crossed: bool
    locked: bool
    crossed_since: int
    last_trade: Trade | None
    volume: int
    trade_count: int
    record_count: int
    order_count: int
    bid_levels: int
    ask_levels: int
    anomalies: dict[str, int]
    unattributed_fills: int
    fills_over_displayed: int

    @property
    def best_bid(self) -> Level | None:
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        return self.asks[0] if self.asks else None


def _level(t: tuple[int, int, int]) -> Level:
    return Level(t[0], t[1], t[2])


def _level_with_orders(t: tuple[int, int, int, list[tuple[int, int]]]) -> Level:
    return Level(t[0], t[1], t[2], tuple(t[3]))


class Market:
    """Every book of a feed. Feed it record arrays with :meth:`apply`; read books between calls.

    Parameters
    ----------
    symbols
        instrument_id → symbol (from the DBN metadata); unknown ids are shown as their number.
    """

    def __init__(self, symbols: Mapping[int, str] | None = None) -> None:
        self._engine = _engine.Market()
        self.symbols: dict[int, str] = dict(symbols or {})
        self.anomaly_totals: Counter[str] = Counter()
        self._warned: Counter[tuple[str, int, int]] = Counter()
        #: Order ids that entered the book through a modify of an unknown id (queue place unknown).
        self.orders_from_unknown_modify: set[int] = set()

    @property
    def engine(self) -> _engine.Market:
        """The native engine itself, for encoders that read books straight from it (the gRPC
        layer's book payloads); everything else goes through this class's methods."""
        return self._engine

    # -- feeding ---------------------------------------------------------------------------------
    def apply(
        self,
        records: np.ndarray,
        start: int = 0,
        stop: int | None = None,
        *,
        complete_events: bool = True,
        audit: bool = False,
        books: bool = False,
    ) -> ApplyResult:
        """Applies ``records[start:stop]`` (an :data:`MBO_DTYPE` array).

        With ``complete_events`` it may apply past ``stop`` until every book is outside an event, so
        the views read afterwards are consistent. Anomalies are logged with their context. With
        ``books`` the result names the books the rows are for (:attr:`ApplyResult.books`: a pass
        over the rows, for a replay step's consumers, not for a bulk apply).
        """
        if records.dtype != MBO_DTYPE:
            raise TypeError(f"records must have MBO_DTYPE, not {records.dtype}")
        end, consistent, rows, violations, keys = self._engine.apply(
            records.view(np.uint8), start=start, stop=stop, complete_events=complete_events, audit=audit, books=books
        )
        self._account_anomalies()
        return ApplyResult(end, consistent, np.frombuffer(rows, dtype=EVENT_DTYPE), violations, keys if books else None)

    def apply_all(self, chunks: Iterable[np.ndarray]) -> int:
        """Applies every chunk in turn; returns the number of records applied."""
        n = 0
        for chunk in chunks:
            self.apply(chunk, complete_events=False)
            n += len(chunk)
        return n

    def drain_anomalies(self) -> list[Anomaly]:
        """Takes the anomalies logged by the engine since the last drain, and logs them."""
        return [Anomaly(*a) for a in self._account_anomalies()]

    def _account_anomalies(self) -> Sequence[tuple]:
        """Takes the engine's anomalies since the last drain: counts them, remembers the orders that
        entered through a modify of an unknown id, logs the first :data:`WARN_FIRST_N` of each kind
        and book at WARNING (the rest at DEBUG); returns them raw (:class:`Anomaly`'s field order).

        A file that starts without a snapshot repeats thousands of them per pass when looped (the
        real CLX5 file: 3.8% of its records), so once every kind and book in a drain has had its
        warnings, and DEBUG is off, they are only counted, in C (``Counter`` over ``itemgetter``).
        """
        raw, dropped = self._engine.take_anomalies()
        if raw:
            books = Counter(map(_KIND_AND_BOOK, raw))
            if log.isEnabledFor(logging.DEBUG) or any(self._warned[key] < WARN_FIRST_N for key in books):
                for a in raw:
                    self._log_anomaly(Anomaly(*a))
            else:
                self._warned.update(books)
                self.anomaly_totals.update(map(_KIND, raw))
                self.orders_from_unknown_modify.update(a[4] for a in raw if a[0] == "modify_unknown_order")
        if dropped:
            log.warning("anomaly log overflowed: %d anomalies counted but not itemised", dropped)
        return raw

    def _log_anomaly(self, a: Anomaly) -> None:
        self.anomaly_totals[a.kind] += 1
        if a.kind == "modify_unknown_order":
            self.orders_from_unknown_modify.add(a.order_id)
        key = (a.kind, a.instrument_id, a.publisher_id)
        self._warned[key] += 1
        level = logging.WARNING if self._warned[key] <= WARN_FIRST_N else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "book anomaly %s",
                a.kind,
                extra={
                    "anomaly": a.kind,
                    "instrument_id": a.instrument_id,
                    "publisher_id": a.publisher_id,
                    "order_id": a.order_id,
                    "sequence": a.sequence,
                    "ts_event": a.ts_event,
                    "action": a.action,
                    "side": a.side,
                    "record_index": a.record_index,
                    "occurrence": self._warned[key],
                },
            )

    # -- reading ---------------------------------------------------------------------------------
    @property
    def records_applied(self) -> int:
        return int(self._engine.records_applied)

    @property
    def consistent(self) -> bool:
        return bool(self._engine.consistent)

    def books(self) -> list[BookKey]:
        """Every book seen, in order of first appearance."""
        return [BookKey(i, p) for i, p in self._engine.books()]

    def symbol(self, instrument_id: int) -> str:
        return self.symbols.get(instrument_id, str(instrument_id))

    def _candidates(self, instrument: int | str) -> tuple[list[int], str]:
        """Instrument ids a symbol or id may mean, and the selector text for errors."""
        if isinstance(instrument, str) and not instrument.isdigit():
            return [i for i, s in self.symbols.items() if s == instrument], f"symbol={instrument!r}"
        return [int(instrument)], f"instrument_id={instrument}"

    def instrument_id(self, instrument: int | str) -> int:
        """The id of an instrument known from the metadata or from the feed (symbol or id).

        Raises UnknownInstrumentError for anything else.
        """
        ids, selector = self._candidates(instrument)
        seen = {k.instrument_id for k in self.books()}
        for iid in ids:
            if iid in self.symbols or iid in seen:
                return iid
        raise UnknownInstrumentError(selector)

    def resolve(self, instrument: int | str, publisher_id: int = 0) -> BookKey:
        """Finds the book for an instrument id or symbol (publisher 0: the first publisher seen).

        Raises UnknownInstrumentError when there is no such book.
        """
        ids, selector = self._candidates(instrument)
        for key in self.books():
            if key.instrument_id in ids and publisher_id in (0, key.publisher_id):
                return key
        if publisher_id:
            selector += f" publisher_id={publisher_id}"
        raise UnknownInstrumentError(selector)

    def bbo(self, key: BookKey) -> tuple[Level | None, Level | None]:
        bid, ask = self._engine.bbo(key.instrument_id, key.publisher_id)
        return (_level(bid) if bid else None, _level(ask) if ask else None)

    def depth(self, key: BookKey, depth: int = 0) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """Aggregated levels per side, best first (``depth`` 0: all)."""
        bids, asks = self._engine.depth(key.instrument_id, key.publisher_id, depth)
        return tuple(map(_level, bids)), tuple(map(_level, asks))

    def depth_table(self, depth: int) -> _engine.DepthTable:
        """The top ``depth`` levels a side of every book, in one native object (a storage sample)."""
        return self._engine.depth_table(depth)

    def level_queue(self, key: BookKey, side: str, price: int) -> list[tuple[int, int]] | None:
        """The L3 queue of one level, ``side`` ``"B"`` or ``"A"``; None when the level is absent."""
        return self._engine.level_queue(key.instrument_id, key.publisher_id, side == "B", price)

    def order(self, key: BookKey, order_id: int) -> tuple[int, int, bool, int] | None:
        """A resting order as ``(price, size, is_bid, priority)``, or None."""
        return self._engine.order(key.instrument_id, key.publisher_id, order_id)

    def stats(self, key: BookKey) -> _engine.BookStats:
        """The book's statistics (counts, last trade, crossed/locked intervals), typed and immutable."""
        return self._engine.stats(key.instrument_id, key.publisher_id)

    def anomaly_counts(self, key: BookKey) -> dict[str, int]:
        return {k: v for k, v in self._engine.anomaly_counts(key.instrument_id, key.publisher_id) if v}

    def in_event(self, key: BookKey) -> bool:
        return bool(self._engine.in_event(key.instrument_id, key.publisher_id))

    def view(self, key: BookKey, depth: int = 0, orders: bool = False) -> BookView:
        """A :class:`BookView` of one book (its last F_LAST state when read between events)."""
        iid, pid = key.instrument_id, key.publisher_id
        if orders:
            raw_bids, raw_asks = self._engine.depth_with_orders(iid, pid, depth)
            bids, asks = tuple(map(_level_with_orders, raw_bids)), tuple(map(_level_with_orders, raw_asks))
        else:
            bids, asks = self.depth(key, depth)
        s = self._engine.stats(iid, pid)
        trade = None
        if s.last_trade_price != UNDEF_PRICE:
            trade = Trade(s.last_trade_price, s.last_trade_size, s.last_trade_side, s.last_trade_ts)
        return BookView(
            instrument_id=iid,
            publisher_id=pid,
            symbol=self.symbol(iid),
            sequence=s.sequence,
            ts_event=s.ts_event,
            ts_recv=s.ts_recv,
            bids=bids,
            asks=asks,
            crossed=s.crossed,
            locked=s.locked,
            crossed_since=s.crossed_since,
            last_trade=trade,
            volume=s.volume,
            trade_count=s.trade_count,
            record_count=s.record_count,
            order_count=s.order_count,
            bid_levels=s.bid_levels,
            ask_levels=s.ask_levels,
            anomalies=self.anomaly_counts(key),
            unattributed_fills=s.unattributed_fills,
            fills_over_displayed=s.fills_over_displayed,
        )

    def snapshot(self, key: BookKey, ts_recv: int) -> np.ndarray:
        """The book as MBO snapshot records (``R`` + ``A``… flagged F_SNAPSHOT, last F_LAST)."""
        raw = self._engine.snapshot(key.instrument_id, key.publisher_id, ts_recv)
        return np.frombuffer(raw, dtype=MBO_DTYPE)

    def book_state(self, key: BookKey) -> bytes:
        """The book's statistics and anomaly counts (opaque bytes), for a replica that rebuilds it
        from :meth:`snapshot` and must carry the same counters (volume, trades, last trade, …)."""
        return bytes(self._engine.book_state(key.instrument_id, key.publisher_id))

    def restore_book_state(self, key: BookKey, state: bytes) -> None:
        """Restores what :meth:`book_state` saved, after the book's snapshot records were applied."""
        self._engine.restore_book_state(key.instrument_id, key.publisher_id, state)

    def check_integrity(self, key: BookKey) -> list[str]:
        """Structural invariant violations of one book (empty when sound)."""
        return list(self._engine.check_integrity(key.instrument_id, key.publisher_id))
