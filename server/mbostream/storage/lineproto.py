"""Line protocol room: replay batches and book views as InfluxDB line protocol.

Every measurement is formatted by the native ``LineFormatter`` straight from the batch's record
and event buffers (``mbo``, ``trades``, ``bbo``) or from a ``Market.depth_table`` (``depth``), with
the GIL released: no Python object per point. The sink runs the same formatter on the native
pipeline's thread (:mod:`mbostream.storage.pipeline`); this wrapper is the synchronous way in,
for the benchmarks and tests: it resolves instrument symbols on first sight and cuts large
batches into windows of at most ``max_points`` records. :mod:`mbostream.storage.schema`
documents the points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import numpy as np

from mbostream_core import _engine
from mbostream_core.records import MBO_RECORD_SIZE
from mbostream.feed import Batch

log = logging.getLogger(__name__)

REWIND_WINDOW_NS: Final[int] = _engine.LINEPROTO_REWIND_WINDOW_NS
_NO_ROWS: Final = np.empty(0, dtype=np.uint8)


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

    @property
    def skipped(self) -> int:
        """Records skipped because neither ``ts_event`` nor ``ts_recv`` is a usable time."""
        return int(self._native.skipped)

    def _resolve(self, instrument_ids: Iterable[int]) -> None:
        for iid, symbol in instrument_tags(self._symbols, instrument_ids):
            self._native.set_symbol(iid, symbol)

    def _native_call(self, method: Callable[..., Any], *args: Any) -> tuple[bytes, int]:
        try:
            return method(*args)  # type: ignore[no-any-return]
        except KeyError as missing:
            self._resolve(missing.args[0])
            return method(*args)  # type: ignore[no-any-return]

    def batch(self, batch: Batch, max_points: int) -> Iterator[tuple[bytes, int]]:
        """Yields ``(line_protocol, points)`` per window of at most ``max_points`` records.

        Synthetic snapshot batches yield nothing: they restate a book, they are not feed events.
        """
        if batch.snapshot or not len(batch.records):
            return
        records, rows = buffers(batch)
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

    def depth(self, table: _engine.DepthTable) -> tuple[bytes, int]:
        """One ``depth`` point per book of a sample that changed since its last one: ``(line_protocol, points)``."""
        return self._native_call(self._native.depth, table, self._depth_levels)


def instrument_tags(symbols: Callable[[int], str], instrument_ids: Iterable[int]) -> list[tuple[int, str]]:
    """``(instrument_id, instrument tag)`` pairs: the symbol, or the id's digits when the lookup
    is empty or fails (logged: a failing lookup must not stop persistence)."""
    pairs = []
    for iid in instrument_ids:
        try:
            symbol = symbols(iid)
        except Exception:
            log.warning("symbol lookup failed; tagging instrument %d by its id", iid, exc_info=True)
            symbol = ""
        pairs.append((iid, symbol or str(iid)))
    return pairs


def buffers(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The batch's records and event rows as contiguous byte arrays (views when they already are)."""
    records = batch.records if batch.records.flags.c_contiguous else np.ascontiguousarray(batch.records)
    if not len(batch.events):
        return records.view(np.uint8), _NO_ROWS
    events = batch.events if batch.events.flags.c_contiguous else np.ascontiguousarray(batch.events)
    return records.view(np.uint8), events.view(np.uint8)
