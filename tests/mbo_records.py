"""Builds MBO record arrays for tests, in the exact DBN layout the engine reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mbostream_core.records import (  # noqa: F401 (the flags are re-exported for the tests)
    F_BAD_TS_RECV,
    F_LAST,
    F_SNAPSHOT,
    F_TOB,
    MBO_DTYPE,
    RTYPE_MBO,
    UNDEF_PRICE,
)


@dataclass
class Rec:
    """One MBO record; ``price`` in 1e-9 units."""

    action: str
    side: str = "N"
    order_id: int = 0
    price: int = UNDEF_PRICE
    size: int = 0
    flags: int = F_LAST
    instrument_id: int = 1
    publisher_id: int = 1
    sequence: int = 0
    ts_event: int = 0


def records(recs: Iterable[Rec]) -> np.ndarray:
    """An MBO_DTYPE array; sequence and timestamps default to increasing values."""
    recs = list(recs)
    out = np.zeros(len(recs), dtype=MBO_DTYPE)
    for i, r in enumerate(recs):
        row = out[i]
        row["length"] = 14
        row["rtype"] = RTYPE_MBO
        row["publisher_id"] = r.publisher_id
        row["instrument_id"] = r.instrument_id
        row["ts_event"] = r.ts_event or 1_000_000_000 + i
        row["order_id"] = r.order_id
        row["price"] = r.price
        row["size"] = r.size
        row["flags"] = r.flags
        row["action"] = r.action.encode()
        row["side"] = r.side.encode()
        row["ts_recv"] = 1_000_000_000 + i
        row["sequence"] = r.sequence or i + 1
    return out


def px(value: float | str) -> int:
    """A decimal price as 1e-9 fixed point (exact for test values)."""
    from mbostream_core.prices import parse_price

    return parse_price(str(value))
