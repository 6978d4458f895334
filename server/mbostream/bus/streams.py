"""Bus streams: names, subjects, headers, and their declaration (created or updated idempotently)."""

from __future__ import annotations

import logging
import ssl
from typing import Any, Final, Protocol

import nats.aio.client
import nats.errors
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

#: Bytes nats-py reads from the socket at a time (its ``DEFAULT_BUFFER_SIZE``, also its stream
#: reader's limit). Its 32 KiB default cut a record message of ~200 KB into seven reads, each a trip
#: through the event loop, the reader pausing and resuming the socket and a parser pass (a
#: throw-away script saw a gateway's CPU per record fall by about a fifth with 1 MiB; ``mbostream
#: bench cluster``'s lone-gateway phase gives the CPU per record as it is). It is a module global
#: of nats-py: :func:`connect` sets it for every connection of the process.
READ_BUFFER_BYTES: Final = 1 << 20


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


async def ensure_streams(js: JetStreamContext, *, max_age_seconds: float, max_bytes: int, update: bool = True) -> None:
    """Creates the streams; with ``update``, also sets an existing stream's limits to these
    settings. Idempotent. Only the replayer (the writer, whose settings size the stream) updates: a
    gateway declaring the streams with its own defaults once shrank a bigger record stream the
    replayer had sized, and retention then dropped the run's start under it."""
    for config in stream_configs(max_age_seconds, max_bytes):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("bus stream created", extra={"stream": config.name})
        else:
            if update:
                await js.update_stream(config)


class BusTlsFiles(Protocol):
    """The bus's TLS settings (:class:`mbostream.config.Settings` has them; PEM paths, empty: unset)."""

    nats_tls_ca_file: str
    nats_tls_cert_file: str
    nats_tls_key_file: str


def tls_context(settings: BusTlsFiles) -> ssl.SSLContext | None:
    """TLS to the bus verified against ``nats_tls_ca_file`` (with ``nats_tls_cert_file`` and its
    key for mTLS); None: plaintext. The files were checked at start-up (:func:`mbostream.config.validate`).
    """
    if not settings.nats_tls_ca_file:
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
    if settings.nats_tls_cert_file:
        context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    return context


class TlsRequiredError(nats.errors.Error):
    """The bus server did not ask for TLS although this process is configured for it."""


#: SSL errors that end an established connection (the peer closed it, or we are closing it), not a
#: refused handshake: a shutdown on either side, reported like any other lost connection.
_TLS_CONNECTION_ENDED: Final = frozenset({"APPLICATION_DATA_AFTER_CLOSE_NOTIFY", "UNEXPECTED_EOF_WHILE_READING"})


def is_tls_refusal(exc: BaseException) -> bool:
    """True for a certificate or TLS setting that is wrong on one side; False for a TLS connection
    that merely ended (:data:`_TLS_CONNECTION_ENDED`, ``SSLZeroReturnError``, ``SSLEOFError``)."""
    if isinstance(exc, TlsRequiredError):
        return True
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
        return False
    return getattr(exc, "reason", None) not in _TLS_CONNECTION_ENDED


class _TlsOnlyClient(Client):
    """A client that refuses a server not asking for TLS, before it sends anything.

    nats-py upgrades a connection to TLS only when the server's INFO says ``tls_required``: a
    plaintext server (or one posing as ours) would otherwise get our CONNECT and messages in clear,
    at start or on any reconnect.
    """

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and not info.get("tls_required"):
            raise TlsRequiredError("the bus server does not require TLS, but MBOSTREAM_NATS_TLS_CA_FILE asks for it")
        await super()._process_info(info, initial_connection)


async def connect(url: str, *, name: str, tls: ssl.SSLContext | None = None, connect_timeout: float = 10.0) -> Client:
    """A connection that reconnects for ever (the bus may restart under a running role); over TLS
    only when ``tls`` is given (:func:`tls_context`).

    An unreachable server and a refused TLS handshake are not errors, at start either: both are
    retried every 0.2 s (a role may start before its bus; either side's TLS may be fixed and
    restarted), a refused handshake logged as a warning each time. Anything nats-py raises at start
    becomes a :class:`~mbostream.errors.BusError`.
    """

    client: list[Client] = []

    async def on_error(exc: Exception) -> None:
        closing = bool(client) and (client[0].is_closed or client[0].is_draining)
        if not closing and is_tls_refusal(exc):
            # Not a bus that is down: a certificate or TLS setting that is wrong on one side.
            log.warning("bus TLS refused: %s", exc, extra={"nats": url})
            return
        log.debug("bus connection: %s", exc)  # every failed reconnect attempt: the disconnect said it

    async def on_disconnected() -> None:
        if client and not client[0].is_closed:
            log.warning("bus disconnected; reconnecting", extra={"nats": url})

    async def on_reconnected() -> None:
        log.info("bus reconnected", extra={"nats": url})

    nats.aio.client.DEFAULT_BUFFER_SIZE = READ_BUFFER_BYTES
    nc = Client() if tls is None else _TlsOnlyClient()
    try:
        await nc.connect(
            url,
            name=name,
            tls=tls,
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
