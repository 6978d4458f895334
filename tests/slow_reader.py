"""A book stream that stops reading for a while: how much old book it reads before live ones.

Shared by the tests of what bounds that backlog: the client's receive window (tests/test_client.py)
and Envoy's stream windows behind the edge (tests/test_edge.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from mbostream_client import MarketDataClient

#: A book older than this when the reading resumes is an old one.
LIVE_WITHIN_NS: Final = 500_000_000
#: gRPC's prefix of each message: what an HTTP/2 window counts beside the message.
GRPC_PREFIX_BYTES: Final = 5


async def old_books_after_a_pause(target: str, receive_window: int | None, pause: float, timeout: float) -> tuple[int, int]:
    """Opens a stream of every whole L3 book (large messages) on a connection of its own, reads its
    first message, stops reading for ``pause`` seconds, then reads until a book published less than
    LIVE_WITHIN_NS before it resumed: the bytes read before that one, and the largest message
    among them. ``timeout`` bounds each wait."""
    async with MarketDataClient(target, own_connection=True, receive_window=receive_window) as client:
        stream = client.stream_book(depth=0, include_orders=True)
        await asyncio.wait_for(stream.__anext__(), timeout)
        await asyncio.sleep(pause)
        resumed = time.time_ns()
        read = largest = 0
        async with asyncio.timeout(timeout):
            async for update in stream:
                if update.ts_out >= resumed - LIVE_WITHIN_NS:
                    break
                size = update.ByteSize() + GRPC_PREFIX_BYTES
                read, largest = read + size, max(largest, size)
        await stream.aclose()
        return read, largest
