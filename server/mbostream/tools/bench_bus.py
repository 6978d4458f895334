"""Bus benchmark room: replayer → bus records/s acknowledged, and a gateway's ingest records/s.

``python -m mbostream.tools.bench_bus [FILE] [--nats-server PATH] [--batch-records N]``

Starts its own nats-server (JetStream, 127.0.0.1, a free port, a temporary store; stopped by PID),
then, in this one process:

* **publish**: the file's records in replay steps of ``--batch-records`` (cut at event boundaries,
  as the replayer does), each applied to a market and handed to the bus publisher the replayer
  uses (:class:`~mbostream.bus.publisher.BusPublisher`, pipelined, expected-last-sequence checked);
  records/s from the first publish until the last one is acknowledged (stored).
* **ingest**: a gateway's feed (:class:`~mbostream.bus.ingest.BusFeed`) reads the whole stream,
  re-applies it with the engine and publishes every batch to a real hub (no subscribers); records/s
  from the start until it has caught up.

The nats-server runs on the same machine and competes for its cores: the figures are for one
machine, both ends included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbostream.bus.ingest import BusFeed
from mbostream.bus.publisher import BusPublisher
from mbostream.bus.streams import connect, ensure_streams
from mbostream.feed import Batch
from mbostream.hub import Hub
from mbostream.server.wire import ProtobufBookEncoder, ProtobufEventEncoder
from mbostream_core.dbn import DbnReader
from mbostream_core.market import Market
from mbostream_core.synth import ensure_sample


class _Nowhere:
    """The replayer's local hub stands aside: only the bus path is measured."""

    def publish(self, batch: Batch) -> None:
        pass

    def backlogged(self) -> bool:
        return False

    async def wait_ready(self) -> None:
        return None


def _steps(path: str, batch_records: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], Market]:
    """The file as replay steps (records, events), applied once to find the event boundaries."""
    market = Market()
    with DbnReader(path) as reader:
        market.symbols.update(reader.info.symbols)
        records = reader.read_all()
    steps, pos = [], 0
    while pos < len(records):
        result = market.apply(records, pos, min(len(records), pos + batch_records), complete_events=True)
        events = result.events.copy()
        events["index"] -= pos
        steps.append((records[pos : result.end], events))
        pos = result.end
    return steps, market


async def _bench(url: str, path: str, batch_records: int) -> dict[str, Any]:
    steps, _ = await asyncio.to_thread(_steps, path, batch_records)
    total = sum(len(r) for r, _ in steps)
    nc = await connect(url, name="bench-bus")
    js = nc.jetstream()
    await ensure_streams(js, max_age_seconds=3600, max_bytes=1 << 30)
    epoch = secrets.token_hex(8)
    publisher = BusPublisher(nc, js, _Nowhere(), epoch=epoch, writer=secrets.token_hex(8), last_stream_seq=0)
    sender = asyncio.create_task(publisher.run())
    started = time.perf_counter()
    position = 0
    for records, events in steps:
        if publisher.backlogged():
            await publisher.wait_ready()
        publisher.publish(Batch(position + 1, records, events, time.time_ns()))
        position += len(records)
        await asyncio.sleep(0)
    await publisher.wait_acked(position)
    publish_seconds = time.perf_counter() - started
    sender.cancel()

    market = Market()
    hub = Hub(
        market,
        event_encoder=ProtobufEventEncoder(epoch),
        book_encoder=ProtobufBookEncoder(),
        replay_buffer_records=2_000_000,
        subscriber_buffer_batches=512,
        max_streams=10,
        book_interval=0.005,
        epoch=epoch,
    )
    feed = BusFeed(nc, js, market, hub, epoch=epoch)
    started = time.perf_counter()
    ingest = asyncio.create_task(feed.run())
    await feed.loaded.wait()
    ingest_seconds = time.perf_counter() - started
    feed.stop()
    ingest.cancel()
    await asyncio.gather(sender, ingest, return_exceptions=True)
    await nc.close()
    assert feed.position == total, (feed.position, total)
    return {
        "file": path,
        "records": total,
        "messages": len(steps),
        "records_per_message": round(total / len(steps)),
        "publish_acked_records_per_second": round(total / publish_seconds),
        "publish_seconds": round(publish_seconds, 3),
        "ingest_records_per_second": round(total / ingest_seconds),
        "ingest_seconds": round(ingest_seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mbostream.tools.bench_bus", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="DBN MBO file (default: the generated 2M-record sample)")
    parser.add_argument("--nats-server", default=None, help="nats-server binary (default: scripts/install-nats-server)")
    parser.add_argument("--batch-records", type=int, default=4096, help="records per replay step at most (default 4096)")
    args = parser.parse_args(argv)
    path = args.file or str(ensure_sample())
    binary = args.nats_server or subprocess.run(
        [str(Path(__file__).resolve().parents[3] / "scripts" / "install-nats-server")], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    store = tempfile.mkdtemp(prefix="mbostream-bench-bus-")
    from mbostream.edge.cluster import free_port

    port = free_port()
    server = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        result = asyncio.run(_bench(f"nats://127.0.0.1:{port}", path, args.batch_records))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
