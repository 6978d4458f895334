"""The write path's retry policy, against a real HTTP server that answers as told.

The server is a test double of InfluxDB's write endpoint (like httpx's MockTransport: real HTTP,
scripted answers), so the real ``influxdb-client`` and the real writer run unchanged.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mbostream.storage import blocks
from mbostream.storage.errors import DatabaseRefusedError, DatabaseUnavailableError
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.writer import InfluxWriter

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ScriptedInflux:
    """Answers each ``/api/v2/write`` with ``answer(body)`` (the body inflated); records every request.

    ``raw`` keeps each body as it came over the wire.
    """

    answer: Callable[[bytes], Answer]
    requests: list[tuple[dict[str, list[str]], dict[str, str], bytes]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def scripted() -> Iterator[ScriptedInflux]:
    state = ScriptedInflux(lambda body: (204, {}, b""))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            state.raw.append(raw)
            try:
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            except (OSError, EOFError, zlib.error) as exc:  # as InfluxDB answers a body it cannot inflate
                self.answer(400, {}, json.dumps({"error": f"gzip: {exc}"}).encode())
                return
            state.requests.append((parse_qs(urlsplit(self.path).query), dict(self.headers), body))
            self.answer(*state.answer(body))

        def answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def writer_for(url: str, metrics: StorageMetrics, set_aside: list[tuple[bytes, str]] | None = None, **overrides: object) -> InfluxWriter:
    aside = [] if set_aside is None else set_aside
    options: dict[str, object] = {
        "url": url, "org": "desk", "bucket": "feed", "token": "t0ken", "timeout": 2.0, "gzip_level": 1,
        "max_retries": 3, "retry_initial": 0.01, "retry_max": 0.05, "metrics": metrics,
        "set_aside": lambda line, reason: aside.append((line, reason)),
    }
    options.update(overrides)
    return InfluxWriter(**options)  # type: ignore[arg-type]


LINES = b"".join(b"m,t=a v=%di %d\n" % (i, 1_700_000_000_000_000_000 + i) for i in range(8))
PAYLOAD = blocks.encode_block(LINES)


def test_writes_blocks_as_they_are_to_the_v2_endpoint(scripted: ScriptedInflux) -> None:
    metrics = StorageMetrics()
    report = writer_for(scripted.url, metrics).write(PAYLOAD, 8)
    assert (report.written, report.rejected) == (8, 0)
    ((query, headers, body),) = scripted.requests
    assert query == {"org": ["desk"], "bucket": ["feed"], "precision": ["ns"]}
    assert headers["Content-Encoding"] == "gzip" and headers["Authorization"] == "Token t0ken"
    assert scripted.raw == [PAYLOAD]  # not compressed again
    assert body == LINES
    snapshot = metrics.snapshot()
    assert snapshot["points_written_total"] == 8 and snapshot["batches_written_total"] == 1
    assert snapshot["bytes_written_total"] == len(LINES)  # line protocol, as before blocks
    assert snapshot["write_latency_seconds_count"] == 1


@pytest.mark.parametrize("gzip_level", [0, 1, 3])
def test_several_blocks_go_as_one_multi_member_body(scripted: ScriptedInflux, gzip_level: int) -> None:
    more = b"".join(b"m,t=b v=%di %d\n" % (i, i) for i in range(1000))
    payload = blocks.encode_block(LINES, gzip_level) + blocks.encode_block(more, gzip_level)
    report = writer_for(scripted.url, StorageMetrics(), gzip_level=gzip_level).write(payload, 1008)
    assert (report.written, report.rejected) == (1008, 0)
    assert scripted.raw == [payload]
    assert scripted.requests[0][2] == LINES + more


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_errors_are_retried(scripted: ScriptedInflux, status: int) -> None:
    answers: Iterator[Answer] = iter([(status, {}, b'{"message":"busy"}')] * 2)
    scripted.answer = lambda body: next(answers, (204, {}, b""))
    metrics = StorageMetrics()
    assert writer_for(scripted.url, metrics).write(PAYLOAD, 8).written == 8
    assert len(scripted.requests) == 3
    assert metrics.get("write_retries_total") == 2 and metrics.get("write_errors_total") == 2


def test_retries_are_bounded(scripted: ScriptedInflux) -> None:
    scripted.answer = lambda body: (503, {}, b'{"message":"down"}')
    metrics = StorageMetrics()
    with pytest.raises(DatabaseUnavailableError) as caught:
        writer_for(scripted.url, metrics, max_retries=2).write(PAYLOAD, 8)
    assert caught.value.status == 503 and caught.value.message == "down"
    assert len(scripted.requests) == 3
    assert metrics.get("points_written_total") == 0


def test_no_connection_is_unavailable() -> None:
    from influx.harness import free_port

    with pytest.raises(DatabaseUnavailableError) as caught:
        writer_for(f"http://127.0.0.1:{free_port()}", StorageMetrics(), max_retries=1).write(PAYLOAD, 8)
    assert caught.value.status is None


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_refusals_are_not_retried(scripted: ScriptedInflux, status: int) -> None:
    scripted.answer = lambda body: (status, {}, b'{"code":"unauthorized","message":"no such token"}')
    with pytest.raises(DatabaseRefusedError, match="no such token"):
        writer_for(scripted.url, StorageMetrics()).write(PAYLOAD, 8)
    assert len(scripted.requests) == 1


def test_backoff_doubles_with_jitter_and_honours_retry_after(scripted: ScriptedInflux) -> None:
    writer = writer_for(scripted.url, StorageMetrics(), retry_initial=1.0, retry_max=8.0)
    for attempt, ceiling in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        delays = [writer.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert writer.backoff(0, retry_after=5.0) == 5.0
    assert writer.backoff(0, retry_after=60.0) == 8.0


def test_refused_points_are_narrowed_down_logged_and_set_aside(scripted: ScriptedInflux, caplog: pytest.LogCaptureFixture) -> None:
    bad = b'm,t=a v="text" 1700000000000000003\n'
    payload = LINES.replace(LINES.splitlines(keepends=True)[3], bad)
    stored: list[bytes] = []

    def answer(body: bytes) -> Answer:
        good = [line for line in body.splitlines(keepends=True) if line != bad]
        stored.extend(good)  # InfluxDB 1.x keeps the good points of a partial write
        if bad in body:
            message = 'partial write: field type conflict: input field "v" is type string dropped=1'
            return 400, {}, json.dumps({"error": message}).encode()
        return 204, {}, b""

    scripted.answer = answer
    aside: list[tuple[bytes, str]] = []
    metrics = StorageMetrics()
    with caplog.at_level(logging.ERROR, logger="mbostream.storage.writer"):
        report = writer_for(scripted.url, metrics, aside).write(blocks.encode_block(payload), 8)
    assert (report.written, report.rejected) == (7, 1)
    assert all(blocks.decode(raw) for raw in scripted.raw)  # the halves are sent as new blocks
    assert aside == [(bad, 'HTTP 400: partial write: field type conflict: input field "v" is type string dropped=1')]
    assert set(stored) == set(payload.splitlines(keepends=True)) - {bad}
    assert len(scripted.requests) <= 1 + 2 * 3
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "field type conflict" in record.getMessage() and 'v="text"' in record.getMessage()
    assert metrics.get("points_rejected_total") == 1 and metrics.get("points_written_total") == 7


def test_a_batch_refused_line_by_line_is_set_aside_within_a_request_budget(scripted: ScriptedInflux) -> None:
    from mbostream.storage.writer import MAX_ISOLATION_REQUESTS

    scripted.answer = lambda body: (422, {}, b'{"message":"schema rejected"}')
    payload = b"".join(b"m v=%di %d\n" % (i, i) for i in range(1000))
    aside: list[tuple[bytes, str]] = []
    # Refused lines are found across the blocks of one payload, as a drain request sends them.
    cut = payload.index(b"\n", len(payload) // 3) + 1
    report = writer_for(scripted.url, StorageMetrics(), aside).write(blocks.encode_block(payload[:cut]) + blocks.encode_block(payload[cut:]), 1000)
    assert (report.written, report.rejected) == (0, 1000)
    assert b"".join(sorted(line for line, _ in aside)) == b"".join(sorted(payload.splitlines(keepends=True)))
    assert len(scripted.requests) <= 1 + MAX_ISOLATION_REQUESTS + 1


def test_a_refused_payload_that_does_not_inflate_is_counted_lost_not_retried_forever(
    scripted: ScriptedInflux, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = PAYLOAD[:-8] + bytes(8)  # CRC and ISIZE lost: the database cannot read it either
    metrics = StorageMetrics()
    aside: list[tuple[bytes, str]] = []
    with caplog.at_level(logging.ERROR, logger="mbostream.storage.writer"):
        report = writer_for(scripted.url, metrics, aside).write(corrupt, 8)
    assert (report.written, report.rejected) == (0, 8)
    assert aside == [] and len(scripted.raw) == 1
    (record,) = caplog.records
    assert "8 points" in record.getMessage() and "lost" in record.getMessage() and "ISIZE" in record.getMessage()
    assert metrics.get("points_rejected_total") == 8


def test_a_refused_payload_of_empty_blocks_ends_at_once(scripted: ScriptedInflux) -> None:
    scripted.answer = lambda body: (400, {}, b'{"error":"no points"}')
    report = writer_for(scripted.url, StorageMetrics()).write(blocks.encode_block(b"") * 2, 0)
    assert (report.written, report.rejected) == (0, 0)
    assert len(scripted.raw) == 1


def test_waiting_blocks_go_together_up_to_a_request_size(scripted: ScriptedInflux, tmp_path: Path) -> None:
    from mbostream.storage.delivery import Delivery
    from mbostream.storage.spool import Spool

    arrived, release = threading.Event(), threading.Event()

    def answer(body: bytes) -> Answer:
        arrived.set()
        return (204, {}, b"") if release.wait(10) else (503, {}, b"")

    scripted.answer = answer
    parts = [b"".join(b"m,t=a v=%di %d\n" % (i, k * 100 + i) for i in range(50)) for k in range(12)]
    chunks = [blocks.encode_block(part) for part in parts]
    spool = Spool(tmp_path / "spool")
    spool.open()
    metrics = StorageMetrics()
    delivery = Delivery(
        spool, writer_for(scripted.url, metrics), max_pending_bytes=1 << 20, read_bytes=5 * len(chunks[0]) + 10,
        concurrency=1, metrics=metrics,
    )
    delivery.start()
    try:
        delivery.submit(chunks[0], 50)
        assert arrived.wait(10)  # the first is in flight, held by the server; the rest wait
        for chunk in chunks[1:]:
            delivery.submit(chunk, 50)
        release.set()
        deadline = time.monotonic() + 10
        while not delivery.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivery.idle()
    finally:
        delivery.close(timeout=5)
        spool.close()
    assert [len(list(blocks.iter_blocks(raw))) for raw in scripted.raw] == [1, 5, 5, 1]
    assert b"".join(body for _, _, body in scripted.requests) == b"".join(parts)
    assert metrics.get("points_written_total") == 600
