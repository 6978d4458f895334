"""Loading room: DBN files into a :class:`~mbostream_core.market.Market`, whole or up to a sequence."""

from __future__ import annotations

import os

import numpy as np

from mbostream_core.dbn import DbnReader, FileInfo
from mbostream_core.market import Market
from mbostream_core.records import F_LAST



def _cut_at_sequence(records: np.ndarray, at_sequence: int) -> np.ndarray:
    """Keeps, per book, the records up to its last F_LAST at or before ``at_sequence``.

    Records are taken in file order while their sequence is at most ``at_sequence``; a book's
    records after its last F_LAST in that prefix (an event still open) are dropped, so every book
    is exactly as it was at an F_LAST boundary.
    """
    beyond = np.flatnonzero(records["sequence"].astype(np.int64) > at_sequence)
    prefix = records[: beyond[0]] if len(beyond) else records
    keys = (prefix["instrument_id"].astype(np.uint64) << np.uint64(16)) | prefix["publisher_id"].astype(np.uint64)
    is_last = (prefix["flags"] & F_LAST) != 0
    keep = np.zeros(len(prefix), dtype=bool)
    for key in np.unique(keys):
        mine = keys == key
        closing = np.flatnonzero(mine & is_last)
        if len(closing):
            keep[: closing[-1] + 1] |= mine[: closing[-1] + 1]
    return prefix[keep]


def load_market(path: str | os.PathLike[str], at_sequence: int | None = None) -> tuple[FileInfo, Market]:
    """Replays a whole file (or up to ``at_sequence``) into a new market."""
    with DbnReader(path) as reader:
        market = Market(reader.info.symbols)
        if at_sequence is None:
            market.apply_all(reader.chunks())
        else:
            market.apply(_cut_at_sequence(reader.read_all(), at_sequence), complete_events=False)
        return reader.info, market
