"""Bus messages: a replay step (raw DBN records + position headers), a book snapshot, the meta.

A record message's payload is the step's MBO records exactly as in the file (56-byte DBN MBO records,
concatenated, no metadata header), so every gateway re-applies the same bytes with the same engine.
Positions, ``ts_out`` and the epoch travel in headers; ``Nats-Msg-Id`` (``<epoch>:<last position>``)
makes a retried publish a duplicate JetStream stores once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbostream.bus.streams import BOOK_STATE, EPOCH, FIRST_SEQ, LAST_SEQ, MSG_ID, SNAPSHOT_SEQ, TS_OUT, WRITER
from mbostream.feed import Batch
from mbostream_core.records import MBO_DTYPE


@dataclass(frozen=True, slots=True)
class RecordMessage:
    """One replay step as read from the bus."""

    first_seq: int
    last_seq: int
    ts_out: int
    epoch: str
    writer: str
    records: np.ndarray


def record_headers(batch: Batch, epoch: str, writer: str) -> dict[str, str]:
    """The headers of a batch's record message (without the expected-last-sequence check)."""
    return {
        FIRST_SEQ: str(batch.first_replay_seq),
        LAST_SEQ: str(batch.last_replay_seq),
        TS_OUT: str(batch.ts_out),
        EPOCH: epoch,
        WRITER: writer,
        MSG_ID: f"{epoch}:{batch.last_replay_seq}",
    }


def record_payload(batch: Batch) -> bytes:
    return np.ascontiguousarray(batch.records).tobytes()


def records_of(payload: bytes) -> np.ndarray:
    """The MBO records of a payload (a read-only view over its bytes)."""
    if len(payload) % MBO_DTYPE.itemsize:
        raise ValueError(f"a record message of {len(payload)} bytes is not whole {MBO_DTYPE.itemsize}-byte records")
    return np.frombuffer(payload, dtype=MBO_DTYPE)


def decode_record_message(headers: Mapping[str, str] | None, payload: bytes) -> RecordMessage:
    """A record message from its headers and payload; ValueError when it is not one of ours."""
    if not headers or FIRST_SEQ not in headers:
        raise ValueError("not an mbostream record message (no position headers)")
    records = records_of(payload)
    first, last = int(headers[FIRST_SEQ]), int(headers[LAST_SEQ])
    if last - first + 1 != len(records):
        raise ValueError(f"positions {first}..{last} do not match {len(records)} records")
    return RecordMessage(first, last, int(headers[TS_OUT]), headers[EPOCH], headers.get(WRITER, ""), records)


def snapshot_headers(position: int, epoch: str, state: bytes = b"") -> dict[str, str]:
    """A snapshot's headers; ``state`` is the book's statistics (:meth:`Market.book_state`)."""
    headers = {SNAPSHOT_SEQ: str(position), EPOCH: epoch}
    if state:
        headers[BOOK_STATE] = state.hex()
    return headers


@dataclass(frozen=True, slots=True)
class SnapshotMessage:
    """One book's snapshot records (``R`` + ``A``… F_SNAPSHOT) and the position they reflect."""

    position: int
    epoch: str
    records: np.ndarray
    #: The book's statistics at ``position`` (empty from a replayer that did not send them).
    state: bytes = b""


def decode_snapshot(headers: Mapping[str, str] | None, payload: bytes) -> SnapshotMessage:
    if not headers or SNAPSHOT_SEQ not in headers:
        raise ValueError("not an mbostream snapshot message (no position header)")
    state = bytes.fromhex(headers[BOOK_STATE]) if headers.get(BOOK_STATE) else b""
    return SnapshotMessage(int(headers[SNAPSHOT_SEQ]), headers[EPOCH], records_of(payload), state)


@dataclass(frozen=True, slots=True)
class Meta:
    """The replayer's description of the run: its epoch, dataset, symbols and files."""

    epoch: str
    dataset: str
    symbols: dict[int, str]
    files: tuple[str, ...]

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "epoch": self.epoch,
            "dataset": self.dataset,
            "symbols": {str(k): v for k, v in self.symbols.items()},
            "files": list(self.files),
        }
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Meta:
        body = json.loads(payload)
        symbols = {int(k): str(v) for k, v in body.get("symbols", {}).items()}
        return cls(str(body["epoch"]), str(body.get("dataset", "")), symbols, tuple(body.get("files", ())))
