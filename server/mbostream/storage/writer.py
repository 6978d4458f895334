"""Writer room: blocks of line protocol into InfluxDB through ``influxdb-client``.

Requests go through the client's generated ``WriteService`` (``POST /api/v2/write``,
``precision=ns``) on a client built with the settings' timeout and no urllib3 retries, because
this module owns the retry policy:

* 429, 5xx, timeouts and connection errors are retried up to ``max_retries`` times, waiting an
  exponentially growing delay with jitter (``Retry-After`` is honoured, capped at ``retry_max``);
  then :class:`DatabaseUnavailableError` tells the caller to spool the batch.
* 401, 403, 404 and the other 4xx but 429 (token, org, bucket or URL wrong) raise
  :class:`DatabaseRefusedError` at once: retrying will not help, and the caller keeps the data.
* 400, 413 and 422 mean the points themselves were refused. The batch is inflated to its lines,
  split in halves and re-sent (each half as a new block) until every refused line stands alone (a
  bounded number of requests); each one is logged with the database's reason and set aside in the
  spool's ``rejected.lp``, the others are written. Re-sending the good half is harmless: InfluxDB
  1.x has already stored it (a partial write), and the same point written again replaces itself
  with identical values. A block that does not even inflate (corrupted on disk) cannot be narrowed
  down: its points are logged as lost and counted as rejected, so the spool is not stuck behind it.

A payload is one or more blocks (:mod:`mbostream.storage.blocks`): gzip members compressed once,
when the lines were made. Their concatenation is a multi-member gzip body, POSTed as it is with
``Content-Encoding: gzip``: nothing is compressed here, neither live nor when the spool drains
(the client's own ``enable_gzip`` stays off: zlib level 9, ~35 MB/s). The client is thread-safe,
so several threads may call :meth:`InfluxWriter.write`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mbostream.storage import blocks
from mbostream.storage.errors import (
    BlockError,
    DatabaseRefusedError,
    DatabaseUnavailableError,
    PointsRejectedError,
    WriteError,
)
from mbostream.storage.metrics import StorageMetrics

if TYPE_CHECKING:
    from influxdb_client.rest import ApiException

# influxdb-client (with urllib3, dateutil and reactivex: ~0.35 s and ~40 MiB to import) is imported
# where a writer is made and used, not with this module: every `mbostream` command imports the
# storage settings, and only the ones that write to a database need the client.

log = logging.getLogger(__name__)

#: Statuses that mean "these points are bad"; every other 4xx but 429 means "this request is".
REJECTED_STATUS: Final = frozenset({400, 413, 422})
#: What Go's HTTP servers (InfluxDB's) answer, with a 400, to plain HTTP on an HTTPS port: the URL is
#: wrong, not the points, so they are kept (refused) rather than set aside line by line.
PLAIN_HTTP_TO_HTTPS: Final = "Client sent an HTTP request to an HTTPS server"
#: Most extra requests spent narrowing a refused batch down to its bad lines.
MAX_ISOLATION_REQUESTS: Final = 64
#: Longest excerpt of a refused line put in a log record.
LOG_LINE_CHARS: Final = 1000


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What one :meth:`InfluxWriter.write` achieved."""

    #: Lines the database accepted.
    written: int
    #: Lines it refused as bad data (each set aside and logged).
    rejected: int


class InfluxWriter:
    """Writes blocks of line protocol to one InfluxDB bucket, with the retry policy of this module.

    Parameters
    ----------
    url, org, bucket, token
        The InfluxDB 2.x write target.
    ca_file
        The CA an https target's certificate is verified against (None: the system's).
    timeout
        Seconds for one request.
    gzip_level
        Compression level of the blocks (see :func:`~mbostream.storage.blocks.encode_block`): the
        level of the new blocks this writer makes when it narrows down a refused batch.
    max_retries, retry_initial, retry_max
        Retries of transient failures and their backoff (seconds).
    metrics
        Where requests, latencies and failures are counted.
    set_aside
        Called with each refused line and the database's reason (the spool's ``reject``).
    """

    def __init__(
        self,
        *,
        url: str,
        org: str,
        bucket: str,
        token: str,
        ca_file: str | None = None,
        timeout: float,
        gzip_level: int,
        max_retries: int,
        retry_initial: float,
        retry_max: float,
        metrics: StorageMetrics,
        set_aside: Callable[[bytes, str], object],
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self._gzip_level = gzip_level
        self.max_retries = max_retries
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._metrics = metrics
        self._set_aside = set_aside
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        # ssl_ca_cert: None verifies an https database against the system's trust store.
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout * 1000), enable_gzip=False, ssl_ca_cert=ca_file)
        self._service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
        self._closed = threading.Event()
        self._random = random.Random()

    def close(self) -> None:
        """Cuts short any backoff wait and closes the HTTP connections."""
        self._closed.set()
        self._client.close()  # type: ignore[no-untyped-call]

    # -- one request ------------------------------------------------------------------------------
    def _post(self, body: bytes) -> None:
        """One request with blocks as its body; raises the :class:`WriteError` that matches the outcome."""
        import urllib3
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        started = time.perf_counter()
        try:
            self._service.post_write(  # type: ignore[no-untyped-call]
                org=self.org,
                bucket=self.bucket,
                body=body,
                precision=WritePrecision.NS,
                content_type="text/plain; charset=utf-8",
                content_encoding="gzip",
            )
        except ApiException as exc:
            self._metrics.add("write_errors_total")
            raise _classify(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._metrics.add("write_errors_total")
            raise DatabaseUnavailableError(None, f"{type(exc).__name__}: {exc}") from None
        finally:
            self._metrics.observe_write(time.perf_counter() - started)

    def _post_with_retries(self, body: bytes, retries: int) -> None:
        attempt = 0
        while True:
            try:
                self._post(body)
                return
            except DatabaseUnavailableError as exc:
                if attempt >= retries or self._closed.is_set():
                    raise
                delay = self.backoff(attempt, retry_after=exc.retry_after)
                attempt += 1
                self._metrics.add("write_retries_total")
                log.debug("write failed (%s); retry %d in %.2fs", exc, attempt, delay)
                if self._closed.wait(delay):
                    raise

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry ``attempt + 1``: doubling from ``retry_initial``, capped, jittered.

        Half the delay is fixed and half random ("equal jitter"), so retries of many writers
        spread out but none comes back at once. A server's ``Retry-After`` wins when longer.
        """
        ceiling = min(self._retry_max, self._retry_initial * (2**attempt))
        delay: float = ceiling / 2 + self._random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._retry_max))
        return delay

    # -- one batch --------------------------------------------------------------------------------
    def write(self, payload: bytes, lines: int, *, retries: int | None = None) -> WriteReport:
        """Writes blocks (``payload``: one or more, ``lines`` points in all) as they are.

        Refused lines are narrowed down, logged and set aside.

        Raises
        ------
        DatabaseUnavailableError
            Still failing after the retries (or the writer was closed): spool the payload.
        DatabaseRefusedError
            Token, org or bucket refused: keep the payload and try again later.
        """
        budget = self.max_retries if retries is None else retries
        try:
            self._post_with_retries(payload, budget)
        except PointsRejectedError as exc:
            report = self._isolate(payload, lines, exc, budget)
        else:
            report = WriteReport(written=lines, rejected=0)
        self._metrics.add("batches_written_total")
        self._metrics.add("points_written_total", report.written)
        self._metrics.add("bytes_written_total", _raw_size(payload))
        return report

    def _isolate(self, payload: bytes, points: int, first: PointsRejectedError, retries: int) -> WriteReport:
        """Bisects a refused payload until each refused line stands alone."""
        try:
            text = blocks.decode(payload)
        except BlockError as exc:
            self._lose(points, first, exc)
            return WriteReport(written=0, rejected=points)
        written = rejected = 0
        requests = 0
        pending: list[tuple[list[bytes], PointsRejectedError]] = [(text.splitlines(keepends=True), first)]
        while pending:
            lines, error = pending.pop()
            if not lines:  # blocks without lines: nothing to write or set aside
                continue
            if len(lines) == 1:
                self._refuse(lines, error, narrowed=True)
                rejected += 1
                continue
            if requests >= MAX_ISOLATION_REQUESTS:
                self._refuse(lines, error, narrowed=False)
                rejected += len(lines)
                continue
            middle = len(lines) // 2
            # The second half is pushed first, so the first half is written first.
            for half in (lines[middle:], lines[:middle]):
                requests += 1
                try:
                    self._post_with_retries(blocks.encode_block(b"".join(half), self._gzip_level), retries)
                except PointsRejectedError as exc:
                    pending.append((half, exc))
                else:
                    written += len(half)
        return WriteReport(written=written, rejected=rejected)

    def _lose(self, points: int, error: PointsRejectedError, corrupt: BlockError) -> None:
        """Counts and logs the points of a refused payload that does not inflate (so cannot be narrowed)."""
        self._metrics.add("points_rejected_total", points)
        log.error(
            "InfluxDB refused %d points (HTTP %s: %s) that cannot be narrowed down: %s; they are lost",
            points,
            error.status,
            error.message,
            corrupt,
            extra={"status": error.status, "reason": error.message, "points": points},
        )

    def _refuse(self, lines: list[bytes], error: PointsRejectedError, *, narrowed: bool) -> None:
        """Sets refused lines aside and logs them (one record per narrowed line, else one in all)."""
        reason = f"HTTP {error.status}: {error.message}"
        if not narrowed:
            reason += f" (batch of {len(lines)} lines not narrowed down after {MAX_ISOLATION_REQUESTS} requests)"
        where = None
        for line in lines:
            where = self._set_aside(line, reason)
        self._metrics.add("points_rejected_total", len(lines))
        text = lines[0].rstrip(b"\n").decode("utf-8", errors="replace")[:LOG_LINE_CHARS]
        log.error(
            "InfluxDB refused %s (%s); set aside in %s: %s",
            "a point" if narrowed else f"{len(lines)} points",
            reason,
            where,
            text,
            extra={"status": error.status, "reason": error.message, "line": text, "points": len(lines), "set_aside": str(where)},
        )


def _raw_size(payload: bytes) -> int:
    """Bytes of line protocol in ``payload``, from its block headers (0 if it is not blocks)."""
    try:
        return sum(header.raw_size for _, header in blocks.iter_blocks(payload))
    except BlockError:
        return 0


def _error_message(exc: ApiException) -> str:
    """The database's own words: 2.x ``{"message"}``, 1.x ``{"error"}``, or the raw body."""
    body = exc.body or b""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return str(parsed.get("message") or parsed.get("error") or body)
    except ValueError:
        pass
    return body.strip() or str(exc.reason)


def _retry_after(exc: ApiException) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(exc: ApiException) -> WriteError:
    status = int(exc.status) if exc.status is not None else None
    message = _error_message(exc)
    if status == 400 and PLAIN_HTTP_TO_HTTPS in message:
        return DatabaseRefusedError(status, f"{message.strip()} (the database URL must be https://)")
    if status in REJECTED_STATUS:
        return PointsRejectedError(status, message)
    if status is not None and 400 <= status < 500 and status != 429:
        return DatabaseRefusedError(status, message)
    return DatabaseUnavailableError(status, message, _retry_after(exc))
