"""Line protocol room: replay batches and book views as InfluxDB line protocol.

The high-volume measurements (``mbo``, ``trades``, ``bbo``) are formatted by the native
``LineFormatter`` straight from the batch's record and event buffers, with the GIL released: no
Python object per point. This wrapper resolves instrument symbols on first sight, groups small
batches into one native call and cuts large ones into windows of at most ``max_points`` records,
and formats the low-rate ``depth`` samples (one point per book per interval) in Python. :mod:`mbostream.storage.schema` documents the points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import numpy as np

from mbostream import _engine
from mbostream.dbn import MBO_RECORD_SIZE
from mbostream.feed import Batch
from mbostream.market import BookView

log = logging.getLogger(__name__)

REWIND_WINDOW_NS: Final[int] = _engine.LINEPROTO_REWIND_WINDOW_NS
_NO_ROWS: Final = np.empty(0, dtype=np.uint8)
MAX_POINT_TIME: Final[int] = _engine.LINEPROTO_MAX_POINT_TIME


class LineFormatter:
    """Formats what the sink receives; keeps the symbols and the per-book point clocks.

    Parameters
    ----------
    symbols
        instrument_id → symbol, written as the ``instrument`` tag (an empty or failing lookup
        falls back to the id's digits).
    mbo
        Also format every record as an ``mbo`` point.
    depth_levels
        Levels per side in a ``depth`` point.

    Not thread-safe: one formatting thread owns it.
    """

    def __init__(self, symbols: Callable[[int], str], *, mbo: bool, depth_levels: int) -> None:
        self._native = _engine.LineFormatter()
        self._symbols = symbols
        self._mbo = mbo
        self._depth_levels = depth_levels
        self._depth_clock: dict[tuple[int, int], int] = {}
        self._depth_state: dict[tuple[int, int], tuple[int, int, int]] = {}

    @property
    def skipped(self) -> int:
        """Records skipped because neither ``ts_event`` nor ``ts_recv`` is a usable time."""
        return int(self._native.skipped)

    def _resolve(self, instrument_ids: Iterable[int]) -> None:
        for iid in instrument_ids:
            try:
                symbol = self._symbols(iid)
            except Exception:  # a failing lookup must not stop persistence
                log.warning("symbol lookup failed; tagging instrument %d by its id", iid, exc_info=True)
                symbol = ""
            self._native.set_symbol(iid, symbol or str(iid))

    def _native_call(self, method: Callable[..., Any], *args: Any) -> tuple[bytes, int]:
        try:
            return method(*args)  # type: ignore[no-any-return]
        except KeyError as missing:
            self._resolve(missing.args[0])
            return method(*args)  # type: ignore[no-any-return]

    def batches(self, batches: Sequence[Batch], max_points: int) -> Iterator[tuple[bytes, int]]:
        """Yields ``(line_protocol, points)`` for many batches, in order.

        Consecutive small batches (up to ``max_points`` records together) are formatted in one
        native call, so the GIL is taken and released once per group rather than per batch.
        """
        group: list[tuple[np.ndarray, np.ndarray]] = []
        size = 0
        for batch in batches:
            if batch.snapshot or not len(batch.records):
                continue
            if group and size + len(batch.records) > max_points:
                yield from self._format_group(group)
                group, size = [], 0
            if len(batch.records) > max_points:
                yield from self.batch(batch, max_points)
                continue
            group.append(_buffers(batch))
            size += len(batch.records)
        yield from self._format_group(group)

    def _format_group(self, group: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[bytes, int]]:
        if group:
            text, points = self._native_call(self._native.batches, group, self._mbo)
            if points:
                yield text, points

    def batch(self, batch: Batch, max_points: int) -> Iterator[tuple[bytes, int]]:
        """Yields ``(line_protocol, points)`` per window of at most ``max_points`` records.

        Synthetic snapshot batches yield nothing: they restate a book, they are not feed events.
        """
        if batch.snapshot or not len(batch.records):
            return
        records, rows = _buffers(batch)
        total = len(batch.records)
        row_count = len(batch.events)
        if total <= max_points:
            windows: Iterable[tuple[int, int, int, int]] = ((0, total, 0, row_count),)
        else:
            starts = np.arange(0, total, max_points)
            stops = np.minimum(starts + max_points, total)
            row_starts = np.searchsorted(batch.events["index"], starts) if row_count else np.zeros_like(starts)
            row_ends = np.append(row_starts[1:], row_count)
            windows = zip(starts.tolist(), stops.tolist(), row_starts.tolist(), row_ends.tolist())
        for start, stop, row_start, row_stop in windows:
            text, points = self._native_call(
                self._native.batch, records, rows, self._mbo, MBO_RECORD_SIZE, start, stop, row_start, row_stop
            )
            if points:
                yield text, points

    def depth(self, views: Iterable[BookView]) -> tuple[bytes, int]:
        """One ``depth`` point per book that changed since its last sample: ``(line_protocol, points)``."""
        lines: list[bytes] = []
        for view in views:
            key = (view.instrument_id, view.publisher_id)
            state = (view.sequence, view.ts_event, view.record_count)
            if self._depth_state.get(key) == state or not 0 < view.ts_event <= MAX_POINT_TIME - REWIND_WINDOW_NS:
                continue
            self._depth_state[key] = state
            time = self._stamp_depth(key, view.ts_event)
            try:
                tags = self._native.book_tags(view.instrument_id, view.publisher_id)
            except KeyError as missing:
                self._resolve(missing.args[0])
                tags = self._native.book_tags(view.instrument_id, view.publisher_id)
            fields: list[str] = []
            for side, levels in (("bid", view.bids), ("ask", view.asks)):
                for i, level in enumerate(levels[: self._depth_levels]):
                    fields.append(f"{side}_px_{i:02d}={level.price}i,{side}_sz_{i:02d}={level.size}i,{side}_ct_{i:02d}={level.count}i")
            fields.append(
                f"bid_levels={view.bid_levels}i,ask_levels={view.ask_levels}i,sequence={view.sequence}i,"
                f"ts_event={view.ts_event}i,ts_recv={view.ts_recv}i"
            )
            lines.append(b"depth" + tags + b" " + ",".join(fields).encode() + f" {time}\n".encode())
        return b"".join(lines), len(lines)

    def _stamp_depth(self, key: tuple[int, int], ts: int) -> int:
        """The native clock's rule for ``depth``: strictly increasing per book, unless rewound far."""
        last = self._depth_clock.get(key)
        time = last + 1 if last is not None and ts <= last and last - ts <= REWIND_WINDOW_NS else ts
        self._depth_clock[key] = time
        return time


def _buffers(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The batch's records and event rows as contiguous byte arrays (views when they already are)."""
    records = batch.records if batch.records.flags.c_contiguous else np.ascontiguousarray(batch.records)
    if not len(batch.events):
        return records.view(np.uint8), _NO_ROWS
    events = batch.events if batch.events.flags.c_contiguous else np.ascontiguousarray(batch.events)
    return records.view(np.uint8), events.view(np.uint8)
