"""Metrics room: every Prometheus series the server and the bus roles export, defined once.

Conventions (checked by ``promtool check metrics`` on a live scrape, tests/test_observability.py):
base units (seconds, bytes), counters end in ``_total`` (prometheus_client appends it to the names
below), and every label has a bounded set of values — a gRPC method of our services, a status code,
a stream type, an anomaly kind, a resume source. Which role a process plays (replay, gateway,
store, or the all-in-one server) is a *target* label the scrape configuration adds
(``observability/prometheus/prometheus.yml``), never a metric label, so one series name means the
same thing in every role.

The default registry also carries prometheus_client's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``, ...) and the
Python GC and platform collectors. The storage sink adds ``mbostream_storage_*`` at scrape time
(:mod:`mbostream.storage.prometheus`).

Dashboards (``observability/grafana``) and rules (``observability/prometheus``) use these names;
their tests fail when a name they use is neither scraped nor defined here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

_FAST: Final = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
#: Delivery and freshness: a local client sees a few ms; the book SLO is 250 ms (docs/slo.md).
DELIVERY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The event loop's lag, as the book ticker's timers see it: from the selector's rounding (excluded)
#: up to the stalls that make a refresh late.
LAG_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: RPC durations: unary calls take ms; streams last until the client leaves (minutes, hours).
RPC_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0, 1800.0, 7200.0)


@dataclass(frozen=True)
class Metrics:
    """The server's and the bus roles' metric objects (attribute → series name in ``METRICS``)."""

    records_ingested: Counter
    replay_rate: Gauge
    replay_target_rate: Gauge
    replay_sink_wait_seconds: Counter
    replay_running: Gauge
    serving: Gauge
    apply_seconds: Histogram
    publish_seconds: Histogram
    subscribers: Gauge
    events_queue_depth: Gauge
    events_coalesced_batches: Counter
    book_refresh_interval_seconds: Gauge
    book_refresh_phases: Gauge
    event_loop_lag_seconds: Histogram
    book_refreshes: Counter
    conflations: Counter
    book_transport_writes: Counter
    slow_reader_disconnects: Counter
    rpcs: Counter
    rpc_seconds: Histogram
    publish_to_client_seconds: Histogram
    book_age_seconds: Histogram
    anomalies: Counter
    bus_messages_published: Counter
    bus_messages_consumed: Counter
    bus_redeliveries: Counter
    bus_pending_messages: Gauge
    bus_lag_seconds: Gauge
    resumes: Counter


METRICS = Metrics(
    records_ingested=Counter("mbostream_records_ingested", "MBO records applied to the books (the feed rate)"),
    replay_rate=Gauge("mbostream_replay_rate_records_per_second", "Achieved replay rate over the last seconds"),
    replay_target_rate=Gauge("mbostream_replay_target_rate_records_per_second", "Target replay rate (0: max/speed)"),
    replay_sink_wait_seconds=Counter(
        "mbostream_replay_sink_wait_seconds", "Time the replay waited for storage that could not keep up (MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES)"
    ),
    replay_running=Gauge(
        "mbostream_replay_running",
        "1 while the replay is running; 0 when paused, finished (no --loop) or stopped: a feed that is not running is not stalled",
    ),
    serving=Gauge("mbostream_serving", "1 while the process answers gRPC health checks with SERVING (ready), else 0"),
    apply_seconds=Histogram("mbostream_apply_seconds", "Time to apply one replay batch to the books", buckets=_FAST),
    publish_seconds=Histogram("mbostream_publish_seconds", "Time to publish one batch to every subscriber", buckets=_FAST),
    subscribers=Gauge("mbostream_subscribers", "Open streams by type (events, book)", ["stream"]),
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
    book_refreshes=Counter(
        "mbostream_book_refreshes",
        "Book refresh intervals completed (every phase refreshed once): 1 / rate() is the interval achieved, "
        "against mbostream_book_refresh_interval_seconds, the one in force",
    ),
    book_refresh_phases=Gauge(
        "mbostream_book_refresh_phases",
        "Phases each book refresh interval is split into: book subscribers are spread over them so a refresh leaves as "
        "small bursts (at most 64 book messages each)",
    ),
    event_loop_lag_seconds=Histogram(
        "mbostream_event_loop_lag_seconds",
        "How late the book ticker woke up for each refresh phase, beyond the selector's millisecond: the event loop's lag "
        "(a stall here is a late refresh for every book stream, and a late send for every stream the loop serves)",
        buckets=LAG_BUCKETS,
    ),
    conflations=Counter("mbostream_book_updates_conflated", "Book updates replaced by a newer one before sending"),
    book_transport_writes=Counter(
        "mbostream_book_transport_writes",
        "Writes to book clients' sockets on the native book port: one per connection per refresh, whatever the calls it carries",
    ),
    slow_reader_disconnects=Counter("mbostream_slow_reader_disconnects", "StreamEvents clients cut off for lagging"),
    rpcs=Counter(
        "mbostream_rpcs", "Finished RPCs (unary calls and streams) by method and status code: the stream outcomes", ["method", "code"]
    ),
    rpc_seconds=Histogram("mbostream_rpc_seconds", "RPC duration (streams: until they end)", ["method"], buckets=RPC_BUCKETS),
    publish_to_client_seconds=Histogram(
        "mbostream_publish_to_client_seconds",
        "StreamEvents: from the batch's publish (its ts_out) to the completed stream write to the client; sampled per stream",
        buckets=DELIVERY_BUCKETS,
    ),
    book_age_seconds=Histogram(
        "mbostream_book_age_seconds",
        "StreamBook: age of the book a client receives, from when it was published (ts_out: taken, or sent again unchanged "
        "by a later refresh phase; the oldest of a combined message) "
        "to the completed stream write; sampled per stream",
        buckets=DELIVERY_BUCKETS,
    ),
    anomalies=Counter("mbostream_book_anomalies", "Records the engine could not apply literally", ["kind"]),
    # The scale-out bus (NATS JetStream, mbostream.bus): the replay role publishes, gateway and store roles
    # consume. Each role sets only the series that concern it; the rest stay absent or zero.
    bus_messages_published=Counter(
        "mbostream_bus_messages_published", "Batches the replay role published to the bus and the bus acknowledged"
    ),
    bus_messages_consumed=Counter("mbostream_bus_messages_consumed", "Batches this role (gateway, store) consumed from the bus"),
    bus_redeliveries=Counter(
        "mbostream_bus_redeliveries",
        "Messages the bus delivered to this role more than once (JetStream num_delivered > 1: an ack was late or lost)",
    ),
    bus_pending_messages=Gauge(
        "mbostream_bus_pending_messages",
        "Bus lag in messages: what the stream holds that this role's consumer has not received yet (JetStream num_pending)",
    ),
    bus_lag_seconds=Gauge(
        "mbostream_bus_lag_seconds",
        "Bus lag in time: wall clock at consumption minus the publish time (ts_out) of the last batch this role consumed",
    ),
    resumes=Counter(
        "mbostream_resumes",
        "StreamEvents resumes (start_after_sequence) by where the backlog came from: source=memory (the replay buffer) or bus",
        ["source"],
    ),
)

#: The label values ``METRICS.resumes`` takes.
RESUME_SOURCES: Final = ("memory", "bus")
