"""What the store role put where: its consumer's ack floor on the bus, and the points in InfluxDB.

Shared by the store's crash test (tests/test_cluster.py) and the fault suite (tests/test_faults.py):
a database is compared with the one a run without faults fills, measurement by measurement, by the
count of its points and a checksum of every row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any, Final

from mbostream.bus.store import CONSUMER
from mbostream.bus.streams import RECORDS_STREAM, connect

from influx.harness import InfluxEngine
from nats_harness import NatsServer, nats_call

#: The measurements the store writes with ``MBOSTREAM_STORE_MBO=true`` and depth sampling off.
MEASUREMENTS: Final = ("mbo", "trades", "bbo")
WAIT_SECONDS: Final = 120.0


async def acked_stream_seq(url: str) -> tuple[int, int]:
    """The store consumer's ack floor (stream sequence) and the stream's last sequence."""
    nc = await nats_call(connect(url, name="test-probe"))
    try:
        js = nc.jetstream()
        info = await nats_call(js.consumer_info(RECORDS_STREAM, CONSUMER))
        stream = await nats_call(js.stream_info(RECORDS_STREAM))
        return int(info.ack_floor.stream_seq), int(stream.state.last_seq)
    finally:
        await nats_call(nc.close())


async def delete_consumer(url: str) -> None:
    """Removes the store's durable consumer: the next store starts from the stream's first message."""
    nc = await nats_call(connect(url, name="test-probe"))
    try:
        await nats_call(nc.jetstream().delete_consumer(RECORDS_STREAM, CONSUMER))
    finally:
        await nats_call(nc.close())


def wait_acked(nats: NatsServer, *, at_least: int, timeout: float = WAIT_SECONDS) -> int:
    """Polls until the store acked stream sequence ``at_least``; returns its ack floor."""
    deadline = time.monotonic() + timeout
    while True:
        acked, _ = asyncio.run(acked_stream_seq(nats.url))
        if acked >= at_least:
            return acked
        if time.monotonic() > deadline:
            raise AssertionError(f"the store acked stream sequence {acked}, not {at_least}, within {timeout} s")
        time.sleep(0.05)


def checksum(items: Any) -> tuple[int, str]:
    """How many strings ``items`` holds and a SHA-256 of all of them, whatever their order."""
    digest = hashlib.sha256()
    for item in sorted(items):
        digest.update(item.encode())
    return len(items), digest.hexdigest()


def fingerprint(engine: InfluxEngine, database: str, measurement: str) -> tuple[int, str]:
    """Points of one measurement in ``database``: their count and a checksum of every row (time, tags, fields)."""
    return checksum([json.dumps(row, sort_keys=True) for row in engine.rows(f'SELECT * FROM "{measurement}"', database)])
