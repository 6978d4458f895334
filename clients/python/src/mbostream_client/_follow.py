"""Follow room: a StreamEvents subscription that survives disconnects without losing a record.

:class:`EventFollower` opens ``StreamEvents``, remembers the replay position and epoch of the last
batch it handed out, and when the stream breaks reconnects with exponential backoff and full jitter,
resuming with ``start_after_sequence`` and ``resume_epoch``: nothing is handed out twice or skipped.
When resuming is impossible — the server no longer buffers the position (OUT_OF_RANGE), it runs
another epoch (it restarted: positions of two runs are unrelated), or an unfiltered stream showed a
gap — it starts over from a fresh snapshot and says so (``new_snapshot``), so a consumer that keeps
state rebuilds it instead of mixing two runs. The book replica and ``mbostream-client events`` both
follow the feed through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from mbostream_client._backoff import Backoff
from mbostream_client._decode import EventBatch
from mbostream_client._exceptions import (
    EpochChangedError,
    InstrumentNotFoundError,
    InvalidRequestError,
    MessageTooLargeError,
    ReplicaGapError,
    ResumeOutOfRangeError,
    RpcError,
    SlowConsumerError,
)
from mbostream_client._market_data import Instrument, MarketDataClient

log = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """What a followed stream went through since it started."""

    #: Streams opened (the first connection included).
    connections: int = 0
    #: Streams opened with ``with_snapshot`` (the first, when asked for, and every rebuild).
    snapshots: int = 0
    #: Streams opened with ``start_after_sequence``.
    resumes: int = 0
    #: Times the stream started over from a snapshot because its resume point was gone
    #: (OUT_OF_RANGE, a gap, or another server epoch).
    rebuilds: int = 0
    #: Times the server turned out to run another epoch than the one the positions came from.
    epoch_changes: int = 0
    #: Times the server cut this reader off as too slow.
    slow_consumer_cutoffs: int = 0
    #: Live records handed out.
    records_applied: int = 0


class EventFollower:
    """``StreamEvents`` that reconnects and resumes, and re-snapshots only when it must.

    Parameters
    ----------
    client
        The client whose channel the stream uses.
    instruments
        Instruments to follow; empty follows every instrument (and enables gap detection, which
        needs the unfiltered, contiguous ``replay_sequence``).
    with_snapshot
        Start with each book's snapshot; without it the first connection starts at the live edge
        (or after ``start_after``). Rebuilds always start from a snapshot.
    start_after
        Resume after this replay position on the first connection (of ``start_epoch``, if given).
    backoff
        Reconnection delays; reset after each batch received.
    reconnect
        When false, the first error ends :meth:`follow` (raised) instead of reconnecting.
    """

    def __init__(
        self,
        client: MarketDataClient,
        instruments: Sequence[Instrument] = (),
        *,
        with_snapshot: bool = True,
        start_after: int | None = None,
        start_epoch: str = "",
        backoff: Backoff | None = None,
        reconnect: bool = True,
    ) -> None:
        self.client = client
        self.instruments = tuple(instruments)
        self.with_snapshot = with_snapshot
        self.backoff = backoff or Backoff()
        self.reconnect = reconnect
        self.stats = StreamStats()
        #: Replay position of the last record handed out; None before the first batch.
        self.last_sequence: int | None = start_after
        #: The server run (epoch) that ``last_sequence`` belongs to.
        self.epoch = start_epoch
        self._stopping = False

    def stop(self) -> None:
        """Makes :meth:`follow` return after the batch in hand (cancelling its task works too)."""
        self._stopping = True

    async def follow(self) -> AsyncIterator[tuple[EventBatch, bool]]:
        """Yields ``(batch, new_snapshot)`` until :meth:`stop`; ``new_snapshot`` marks the first
        batch of a snapshot that replaces everything handed out before it.

        Raises
        ------
        InvalidRequestError, InstrumentNotFoundError
            The selection itself is wrong: retrying cannot help.
        MessageTooLargeError
            A message exceeds this client's size limit; it would come again on every reconnect.
        RpcError, ReplicaGapError
            Any other failure, when ``reconnect`` is false.
        """
        while not self._stopping:
            try:
                async for item in self._connection():
                    yield item
                    if self._stopping:
                        return
                log.info("the server ended the stream; reconnecting")
            except (InvalidRequestError, InstrumentNotFoundError, MessageTooLargeError):
                raise
            except (ResumeOutOfRangeError, EpochChangedError, ReplicaGapError) as exc:
                if not self.reconnect:
                    raise
                if isinstance(exc, EpochChangedError):
                    self.stats.epoch_changes += 1
                log.warning("cannot resume (%s); starting over from a snapshot", exc)
                self._forget()
                if isinstance(exc, ReplicaGapError):  # never seen from a sound server: back off
                    await asyncio.sleep(self.backoff.next_delay())
                continue
            except RpcError as exc:
                if not self.reconnect:
                    raise
                if isinstance(exc, SlowConsumerError):
                    self.stats.slow_consumer_cutoffs += 1
                log.info("stream ended: %s; reconnecting", exc.code.name, extra={"details": exc.details})
            delay = self.backoff.next_delay()
            log.debug("reconnecting", extra={"delay_s": round(delay, 3), "attempt": self.backoff.attempt})
            await asyncio.sleep(delay)

    async def _connection(self) -> AsyncIterator[tuple[EventBatch, bool]]:
        """One stream: snapshot, live edge or resume, then live batches until the stream ends."""
        self.stats.connections += 1
        if self.last_sequence is not None:
            self.stats.resumes += 1
            stream = self.client.stream_events(
                self.instruments, start_after_sequence=self.last_sequence, resume_epoch=self.epoch
            )
        else:
            snapshot = self.with_snapshot or self.stats.rebuilds > 0
            self.stats.snapshots += snapshot
            stream = self.client.stream_events(self.instruments, with_snapshot=snapshot)
        first = True
        # A snapshot is only a resume point once it is complete, i.e. once live records follow it.
        snapshot_position: int | None = None
        try:
            async for batch in stream:
                self.backoff.reset()
                if not len(batch):
                    continue
                if batch.snapshot:
                    new_snapshot, first = first, False
                    snapshot_position = int(batch.replay_sequence[-1])
                    self.epoch = batch.epoch
                    yield batch, new_snapshot
                    continue
                first = False
                if snapshot_position is not None:
                    self.last_sequence, snapshot_position = snapshot_position, None
                self._check_contiguous(batch.replay_sequence)
                self.stats.records_applied += len(batch)
                self.last_sequence = int(batch.replay_sequence[-1])
                self.epoch = batch.epoch
                yield batch, False
        finally:
            await stream.aclose()

    def _check_contiguous(self, sequences: np.ndarray) -> None:
        """Live positions of an unfiltered stream must follow on from the last one handed out."""
        if self.instruments or self.last_sequence is None:
            return
        expected = self.last_sequence + 1
        if int(sequences[0]) != expected:
            raise ReplicaGapError(expected, int(sequences[0]))
        if len(sequences) > 1 and int(sequences[-1]) - int(sequences[0]) != len(sequences) - 1:
            steps = np.flatnonzero(np.diff(sequences) != 1)
            raise ReplicaGapError(int(sequences[steps[0]]) + 1, int(sequences[steps[0] + 1]))

    def _forget(self) -> None:
        self.stats.rebuilds += 1
        self.last_sequence = None
        self.epoch = ""
