"""Metrics room: every Prometheus series the server exports, defined once."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass(frozen=True)
class Metrics:
    records_ingested: Counter
    replay_rate: Gauge
    replay_target_rate: Gauge
    replay_sink_wait_seconds: Counter
    apply_seconds: Histogram
    publish_seconds: Histogram
    subscribers: Gauge
    events_queue_depth: Gauge
    events_coalesced_batches: Counter
    book_refresh_interval_seconds: Gauge
    conflations: Counter
    slow_reader_disconnects: Counter
    rpcs: Counter
    rpc_seconds: Histogram
    anomalies: Counter


METRICS = Metrics(
    records_ingested=Counter("mbostream_records_ingested", "MBO records applied to the books"),
    replay_rate=Gauge("mbostream_replay_rate_records_per_second", "Achieved replay rate over the last seconds"),
    replay_target_rate=Gauge("mbostream_replay_target_rate_records_per_second", "Target replay rate (0: max/speed)"),
    replay_sink_wait_seconds=Counter(
        "mbostream_replay_sink_wait_seconds", "Time the replay waited for storage that could not keep up (MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES)"
    ),
    apply_seconds=Histogram("mbostream_apply_seconds", "Time to apply one replay batch to the books", buckets=_FAST),
    publish_seconds=Histogram("mbostream_publish_seconds", "Time to publish one batch to every subscriber", buckets=_FAST),
    subscribers=Gauge("mbostream_subscribers", "Open streams by type", ["stream"]),
    events_queue_depth=Gauge("mbostream_events_queue_depth_max", "Deepest StreamEvents subscriber queue (batches)"),
    events_coalesced_batches=Counter(
        "mbostream_events_coalesced_batches",
        "Replay batches a StreamEvents reader that fell behind received merged into an earlier message (catch-up)",
    ),
    book_refresh_interval_seconds=Gauge(
        "mbostream_book_refresh_interval_seconds",
        "Current book-channel refresh interval: the configured one, stretched up to MBOSTREAM_BOOK_INTERVAL_MAX_MS while "
        "the event loop runs late (book streams then conflate instead of queueing)",
    ),
    conflations=Counter("mbostream_book_updates_conflated", "Book updates replaced by a newer one before sending"),
    slow_reader_disconnects=Counter("mbostream_slow_reader_disconnects", "StreamEvents clients cut off for lagging"),
    rpcs=Counter("mbostream_rpcs", "Finished RPCs by method and status code", ["method", "code"]),
    rpc_seconds=Histogram("mbostream_rpc_seconds", "RPC duration (streams: until they end)", ["method"]),
    anomalies=Counter("mbostream_book_anomalies", "Records the engine could not apply literally", ["kind"]),
)
