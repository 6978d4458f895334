"""Captures real StreamBook messages from a running ``mbostream serve`` for the native-send spike.

Usage: capture.py HOST:PORT OUT [--messages N] [--depth D]

Writes each message with its ``ts_out`` cleared (the spike stamps its own), as records of
``u8 book, u8 snapshot, u32 length (little-endian), bytes``: the first message of each book
(its snapshot), then N live ones, in the order the server sent them.
"""

from __future__ import annotations

import argparse
import struct
import sys

import grpc

from mbostream_core.v1 import market_data_pb2 as pb


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("out")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args(argv)
    books: dict[tuple[int, int], int] = {}
    live = 0
    with grpc.insecure_channel(args.target) as channel, open(args.out, "wb") as out:
        call = channel.unary_stream(
            "/mbostream.v1.MarketDataService/StreamBook",
            request_serializer=pb.StreamBookRequest.SerializeToString,
            response_deserializer=pb.StreamBookResponse.FromString,
        )(pb.StreamBookRequest(depth=args.depth), timeout=60)
        for message in call:
            key = (message.book.instrument_id, message.book.publisher_id)
            index = books.setdefault(key, len(books))
            message.ClearField("ts_out")
            body = message.SerializeToString()
            out.write(struct.pack("<BBI", index, int(message.is_snapshot), len(body)) + body)
            if not message.is_snapshot:
                live += 1
                if live >= args.messages:
                    call.cancel()
                    break
    print(f"captured {live} live messages of {len(books)} books", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
