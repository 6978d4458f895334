"""Bus streams: names, subjects, headers, and their declaration (created or updated idempotently)."""

from __future__ import annotations

import logging
from typing import Final

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from mbostream.bus.errors import BusError

log = logging.getLogger(__name__)

RECORDS_STREAM: Final = "MBOSTREAM_RECORDS"
RECORDS_SUBJECT: Final = "mbostream.records"
SNAPSHOTS_STREAM: Final = "MBOSTREAM_SNAPSHOTS"
SNAPSHOT_SUBJECTS: Final = "mbostream.snapshot.>"
META_STREAM: Final = "MBOSTREAM_META"
META_SUBJECT: Final = "mbostream.meta"

#: Replay positions of a record message's first and last record (decimal).
FIRST_SEQ: Final = "Mbostream-First-Seq"
LAST_SEQ: Final = "Mbostream-Last-Seq"
#: When the replayer published the step (ns since the UNIX epoch): the batch's ``ts_out``.
TS_OUT: Final = "Mbostream-Ts-Out"
#: The run whose positions these are.
EPOCH: Final = "Mbostream-Epoch"
#: The replayer process that wrote the message (tells a stale second writer from our own retries).
WRITER: Final = "Mbostream-Writer"
#: The replay position a snapshot reflects.
SNAPSHOT_SEQ: Final = "Mbostream-Seq"
#: A snapshot's book statistics and anomaly counts (hex of ``Market.book_state``), restored by replicas.
BOOK_STATE: Final = "Mbostream-Book-State"
MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"
#: JetStream's error code for a failed ``Nats-Expected-Last-Sequence`` check.
WRONG_LAST_SEQUENCE: Final = 10071

#: Publishes retried by their ``Nats-Msg-Id`` within this window are stored once.
DUPLICATE_WINDOW_SECONDS: Final = 120.0


def snapshot_subject(publisher_id: int, instrument_id: int) -> str:
    return f"mbostream.snapshot.{publisher_id}.{instrument_id}"


def stream_configs(max_age_seconds: float, max_bytes: int) -> list[StreamConfig]:
    """The three streams: the records bounded by age and bytes, the others one message per subject."""
    return [
        StreamConfig(
            name=RECORDS_STREAM,
            subjects=[RECORDS_SUBJECT],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=max_age_seconds,
            max_bytes=max_bytes,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        ),
        *(
            StreamConfig(
                name=name,
                subjects=[subjects],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_msgs_per_subject=1,  # the last value of each subject
            )
            for name, subjects in ((SNAPSHOTS_STREAM, SNAPSHOT_SUBJECTS), (META_STREAM, META_SUBJECT))
        ),
    ]


async def ensure_streams(js: JetStreamContext, *, max_age_seconds: float, max_bytes: int) -> None:
    """Creates the streams, or updates their limits to these settings; idempotent."""
    for config in stream_configs(max_age_seconds, max_bytes):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("bus stream created", extra={"stream": config.name})
        else:
            await js.update_stream(config)


async def connect(url: str, *, name: str, connect_timeout: float = 10.0) -> Client:
    """A connection that reconnects for ever (the bus may restart under a running role).

    Raises :class:`~mbostream.errors.BusError` when the server cannot be reached at start.
    """

    client: list[Client] = []

    async def on_error(exc: Exception) -> None:
        log.debug("bus connection: %s", exc)  # every failed reconnect attempt: the disconnect said it

    async def on_disconnected() -> None:
        if client and not client[0].is_closed:
            log.warning("bus disconnected; reconnecting", extra={"nats": url})

    async def on_reconnected() -> None:
        log.info("bus reconnected", extra={"nats": url})

    try:
        nc = await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    except Exception as exc:  # nats raises several unrelated types for "cannot connect"
        raise BusError(f"cannot connect to the bus at {url} ({exc or type(exc).__name__})") from None
    client.append(nc)
    return nc
