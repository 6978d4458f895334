"""The native spike's twin on grpc.aio: the same captured messages, ticks and phases, sent from a
bare grpc.aio server (no replay, no hub), so the two send paths are measured by the same client.

Usage: aio_spike.py MESSAGES_FILE [--interval-ms F] [--phases N] [--port P]
Prints ``listening 127.0.0.1:P`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time

import grpc
from grpc import aio

STREAM_BOOK = "/mbostream.v1.MarketDataService/StreamBook"


def load(path: str) -> list[tuple[bytes, list[bytes]]]:
    """Each book's snapshot and live messages (ts_out cleared), as capture.py wrote them."""
    data = open(path, "rb").read()
    snapshots: dict[int, bytes] = {}
    live: dict[int, list[bytes]] = {}
    at = 0
    while at + 6 <= len(data):
        index, snapshot, length = struct.unpack_from("<BBI", data, at)
        body = data[at + 6 : at + 6 + length]
        at += 6 + length
        if snapshot:
            snapshots[index] = body
        else:
            live.setdefault(index, []).append(body)
    return [(snapshots[i], live[i]) for i in sorted(snapshots)]


def ts_field(ts_out: int) -> bytes:
    """Field 3 (ts_out) as a tag and a varint."""
    out = bytearray([0x18])
    while True:
        byte = ts_out & 0x7F
        ts_out >>= 7
        out.append(byte | (0x80 if ts_out else 0))
        if not ts_out:
            return bytes(out)


class Fanout:
    def __init__(self, books: list[tuple[bytes, list[bytes]]], interval: float, phases: int) -> None:
        self.books = books
        self.interval = interval
        self.phases = phases
        self.queues: list[asyncio.Queue[tuple[int, bytes]]] = []

    async def stream_book(self, request: bytes, context: aio.ServicerContext) -> object:
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.queues.append(queue)
        try:
            snapshot = True
            while True:
                round_, ts = await queue.get()
                for first, live in self.books:
                    body = first if snapshot else live[round_ % len(live)]
                    yield ts + body
                snapshot = False
        finally:
            self.queues.remove(queue)

    async def tick(self) -> None:
        step = 0
        started = time.monotonic()
        while True:
            step += 1
            await asyncio.sleep(max(0.0, started + step * self.interval / self.phases - time.monotonic()))
            phase = step % self.phases
            ts = ts_field(time.time_ns())
            for index, queue in enumerate(self.queues):
                if index % self.phases == phase and queue.empty():  # else conflated: it has not sent the last
                    queue.put_nowait((step // self.phases, ts))


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--phases", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fanout = Fanout(load(args.messages), args.interval_ms / 1000, max(1, args.phases))
    handler = grpc.method_handlers_generic_handler(
        "mbostream.v1.MarketDataService",
        {"StreamBook": grpc.unary_stream_rpc_method_handler(fanout.stream_book)},
    )
    server = aio.server(handlers=[handler])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"listening 127.0.0.1:{port}", flush=True)
    ticker = asyncio.create_task(fanout.tick())
    try:
        await server.wait_for_termination()
    finally:
        ticker.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
