"""Storage metrics on the server's Prometheus endpoint, read from the sink's snapshot on scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mbostream.storage.metrics import LATENCY_BUCKETS, StorageMetrics

PREFIX: Final = "mbostream_storage_"
_BUCKET: Final = "write_latency_seconds_bucket_le_"


class StorageCollector(Collector):
    """Exports a :class:`StorageMetrics` snapshot: ``*_total`` as counters, the rest as gauges."""

    def __init__(self, metrics: StorageMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        snap = self.metrics.snapshot()
        buckets = [(f"{bound:g}" if bound != float("inf") else "+Inf", snap[f"{_BUCKET}{bound:g}"]) for bound in (*LATENCY_BUCKETS, float("inf"))]
        yield HistogramMetricFamily(
            PREFIX + "write_latency_seconds",
            "Latency of write requests the database acknowledged",
            buckets=buckets,
            sum_value=snap["write_latency_seconds_sum"],
        )
        for name, value in snap.items():
            if name.startswith("write_latency_seconds"):
                continue
            if name.endswith("_total"):
                yield CounterMetricFamily(PREFIX + name[: -len("_total")], f"storage {name}", value=value)
            else:
                yield GaugeMetricFamily(PREFIX + name, f"storage {name}", value=value)


def register_storage_metrics(metrics: StorageMetrics) -> Callable[[], None]:
    """Registers the sink's metrics on the default registry; returns the unregister function."""
    collector = StorageCollector(metrics)
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
