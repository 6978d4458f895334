"""Test helpers for the storage tests: a replay loop driving a sink, and bounded async waits."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final

import numpy as np
from mbostream_core.dbn import FileInfo
from mbostream.feed import Batch
from mbostream_core.market import Market

WAIT_TIMEOUT_SECONDS: Final = 60.0
#: ``(instrument_id, publisher_id, sequence, ts_event, ts_recv, record_count, bid_levels,
#: ask_levels, bids, asks)``, levels as ``(price, size, count)``: a row of ``DepthTable.rows()``.
DepthRow = tuple[int, int, int, int, int, int, int, int, list[tuple[int, int, int]], list[tuple[int, int, int]]]
TEST_TIMEOUT_SECONDS: Final = 240.0


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an ``async def`` test body in a fresh event loop, bounded by a timeout."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_SECONDS)

        asyncio.run(bounded())

    return run


class Replay:
    """Drives a sink as the replay loop does: apply a chunk, then ``offer`` its Batch."""

    def __init__(self, info: FileInfo, records: np.ndarray, *, depth: int = 10) -> None:
        self.market = Market(info.symbols)
        self.records = records
        self.depth = depth
        #: Every depth sample taken, as ``DepthTable.rows()``.
        self.sampled: list[list[DepthRow]] = []
        self.events: list[np.ndarray] = []
        self.next_seq = 1

    def depth_source(self) -> Any:
        """What the server passes as ``depth_source`` (a ``DepthTable``); remembers its rows."""
        table = self.market.depth_table(self.depth)
        self.sampled.append(table.rows())
        return table

    def symbols(self, instrument_id: int) -> str:
        return self.market.symbol(instrument_id)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.records), size):
            yield self.records[start : start + size]

    def step(self, offer: Callable[[Batch], None], chunk: np.ndarray) -> None:
        result = self.market.apply(chunk, complete_events=False)
        self.events.append(result.events)
        offer(Batch(self.next_seq, chunk, result.events, time.time_ns()))
        self.next_seq += len(chunk)

    def run(self, offer: Callable[[Batch], None], size: int = 4096) -> None:
        for chunk in self.chunks(size):
            self.step(offer, chunk)

    @property
    def all_events(self) -> np.ndarray:
        return np.concatenate(self.events) if self.events else np.empty(0)


async def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_SECONDS) -> None:
    """Polls ``check`` until true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def expected_times(ts: Sequence[int], keys: Sequence[object], window: int) -> list[int]:
    """The schema's timestamp rule, written out independently of the native clock."""
    last: dict[object, int] = {}
    out = []
    for t, key in zip(ts, keys):
        prev = last.get(key)
        time_ = prev + 1 if prev is not None and t <= prev and prev - t <= window else t
        last[key] = time_
        out.append(time_)
    return out
