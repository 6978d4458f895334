"""A book stream that stops reading for a while: how much old book it reads before live ones.

Shared by the tests of what bounds that backlog: the client's receive window (tests/test_client.py)
and Envoy's stream windows behind the edge (tests/test_edge.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, NamedTuple

from mbostream_client import MarketDataClient

#: A book older than this when the reading resumes is an old one (tests/test_client.py's LatestBooks
#: test holds the books it takes to it).
LIVE_WITHIN_NS: Final = 500_000_000
#: gRPC's prefix of each message: what an HTTP/2 window counts beside the message.
GRPC_PREFIX_BYTES: Final = 5


class OldBooks(NamedTuple):
    """What a paused book stream read before its first live book."""

    #: Bytes of the old books (each with its gRPC prefix).
    read: int
    #: The largest of them, in bytes.
    largest: int
    #: Each old book's age when the reading resumed, then the first live one's, in ms: what a
    #: failed bound shows, so a backlog too large can be told from a server that published late.
    ages_ms: tuple[float, ...]


async def old_books_after_a_pause(target: str, receive_window: int | None, pause: float, timeout: float) -> OldBooks:
    """Opens a stream of every whole L3 book (large messages) on a connection of its own, reads its
    first message, stops reading for ``pause`` seconds, then reads until a live book: the old books
    read before it. ``timeout`` bounds each wait.

    A book is old when it was published in the pause's first half. What waited in buffers for the
    reading to resume was published while they filled, in the pause's first 0.2-0.3 s (measured:
    2.7-3.1 s old after a 3 s pause, on a quiet machine and beside 16 busy processes alike); the
    first book the server writes after it is its newest, 0.02-0.27 s old there. A cut at half the
    pause keeps a server slowed by a loaded machine (CI) from having its newest books, published
    late, counted as a backlog. With a cut at LIVE_WITHIN_NS (0.5 s) a CI run read one round of
    books more than the edge's bound allows (701,094 bytes against 687,496), most likely so: that
    run did not record the ages, which the result now carries."""
    async with MarketDataClient(target, own_connection=True, receive_window=receive_window) as client:
        stream = client.stream_book(depth=0, include_orders=True)
        await asyncio.wait_for(stream.__anext__(), timeout)
        await asyncio.sleep(pause)
        resumed = time.time_ns()
        live_from = resumed - int(pause * 1e9 / 2)
        read = largest = 0
        ages: list[float] = []
        async with asyncio.timeout(timeout):
            async for update in stream:
                ages.append((resumed - update.ts_out) / 1e6)
                if update.ts_out >= live_from:
                    break
                size = update.ByteSize() + GRPC_PREFIX_BYTES
                read, largest = read + size, max(largest, size)
        await stream.aclose()
        return OldBooks(read, largest, tuple(ages))
