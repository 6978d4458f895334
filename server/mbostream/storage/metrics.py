"""Storage metrics room: counters and gauges of the write path, readable as one snapshot.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` units) so the server can
export :meth:`StorageMetrics.snapshot` as it is. Counters are updated from the storage threads
under one lock; gauges (spool bytes and age, queue depth) are read from their owners when a snapshot is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

#: Upper bounds (seconds) of the write latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Counters kept here; ``batches_offered_total`` is a gauge of the sink (counted on the event loop,
#: without a lock).
COUNTERS: Final[tuple[str, ...]] = (
    "batches_dropped_total",  # batches offered after stop (a wiring error; logged)
    "points_formatted_total",  # points turned into line protocol
    "points_written_total",  # points the database acknowledged (a re-sent point counts again)
    "batches_written_total",  # write requests the database acknowledged
    "bytes_written_total",  # uncompressed line protocol acknowledged
    "write_retries_total",  # retries after 429/5xx/connection errors or refusals (data kept)
    "write_errors_total",  # failed write requests, whatever the cause
    "points_rejected_total",  # points refused as bad data, set aside in rejected.lp
    "points_spooled_total",  # points written to the on-disk spool
    "points_dropped_spool_full_total",  # points dropped because the spool reached MBOSTREAM_SPOOL_MAX_BYTES
    "spool_drains_total",  # times the spool emptied and live writing resumed
)


class StorageMetrics:
    """Counters, a latency histogram and spool gauges of one storage sink."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._gauges: dict[str, Callable[[], float]] = {}

    def add(self, name: str, value: int = 1) -> None:
        """Adds to one counter (a name from :data:`COUNTERS`)."""
        with self._lock:
            self._counters[name] += value

    def observe_write(self, seconds: float) -> None:
        """Records the latency of one write request."""
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        with self._lock:
            self._latency_buckets[index] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """Registers a gauge, read when a snapshot is taken (e.g. ``spool_bytes``)."""
        self._gauges[name] = read

    def get(self, name: str) -> int:
        """The current value of one counter (or of a gauge registered under a counter's name)."""
        read = self._gauges.get(name)
        if read is not None:
            return int(read())
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> dict[str, float]:
        """Every metric: counters, ``write_latency_seconds_{bucket_le_*,sum,count}``, gauges.

        Histogram buckets are cumulative, as Prometheus expects.
        """
        with self._lock:
            out: dict[str, float] = dict(self._counters)
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self._latency_buckets):
                cumulative += count
                out[f"write_latency_seconds_bucket_le_{bound:g}"] = cumulative
            out["write_latency_seconds_sum"] = self._latency_sum
            out["write_latency_seconds_count"] = self._latency_count
        for name, read in self._gauges.items():
            out[name] = read()
        return out
