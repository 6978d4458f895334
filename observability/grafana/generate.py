"""Grafana dashboards as code: the one place the mbostream dashboards are written.

Run ``.venv/bin/python observability/grafana/generate.py`` to rewrite
``observability/grafana/dashboards/*.json``; ``--check`` fails with a diff when the checked-in JSON
is not what this file makes (``scripts/check-generated`` runs it). Never edit the JSON by hand.

Built with Grafana's own typed builders (PyPI ``grafana-foundation-sdk``, generated from Grafana's
schemas). Every query is PromQL over the series of :mod:`mbostream.metrics` and the recording rules
of ``observability/prometheus/rules``; ``tests/test_observability.py`` checks each query's metric
names against a live scrape, ``tests/test_observability_dashboards.py`` checks the JSON offline.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.heatmap import Panel as HeatmapPanel
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT: Final = Path(__file__).resolve().parent / "dashboards"
#: Every panel reads the Prometheus the ``datasource`` variable points at (the provisioned one by default).
PROMETHEUS: Final = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE: Final = "$__rate_interval"
TAGS: Final = ["mbostream"]
#: A panel's height and width in Grafana's 24-column grid.
HEIGHT: Final = 8
WIDTH: Final = 12


@dataclass(frozen=True)
class Query:
    """One PromQL query and the legend of its series."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Chart:
    """A time series panel (``kind="timeseries"``), a single value (``"stat"``) or a latency heatmap."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    kind: str = "timeseries"
    width: int = WIDTH


@dataclass(frozen=True)
class Board:
    """One dashboard: rows of charts."""

    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Chart, ...]], ...] = field(default_factory=tuple)


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def p99(metric: str, by: str = "", selector: str = "") -> str:
    """The 99th percentile of a histogram over the rate window, per ``by`` labels."""
    return f"histogram_quantile(0.99, sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{selector}[{RATE}])))"


def quantiles(metric: str) -> tuple[Query, ...]:
    return tuple(
        q(f"histogram_quantile({quantile}, sum by (le) (rate({metric}_bucket[{RATE}])))", f"p{label}")
        for quantile, label in ((0.5, "50"), (0.9, "90"), (0.99, "99"))
    )


BY_PROCESS: Final = "{{role}} {{instance}}"


def chart(
    title: str, description: str, expr: str, legend: str = "{{instance}}", *, unit: str, kind: str = "timeseries", width: int = WIDTH
) -> Chart:
    """A panel of one query."""
    return Chart(title, description, (q(expr, legend),), unit, kind, width)


def per_second(title: str, description: str, metric: str, legend: str = "{{instance}}", *, by: str = "instance", unit: str = "ops") -> Chart:
    """A panel of one counter's rate, summed ``by`` some labels."""
    return chart(title, description, f"sum by ({by}) (rate({metric}[{RATE}]))", legend, unit=unit)


FEED = Board(
    uid="mbostream-feed",
    title="mbostream / Feed",
    description="Is the feed flowing? Records applied per role, replay pacing, apply and publish cost, process resources.",
    rows=(
        (
            "Flow",
            (
                per_second(
                    "Records applied per second",
                    "MBO records applied to the books, per process (the replay, or a gateway applying the bus's batches).",
                    "mbostream_records_ingested_total", BY_PROCESS, by="role, instance",
                ),
                Chart(
                    "Replay rate and target",
                    "Achieved replay rate against the target (0: max or speed pacing).",
                    (
                        q("mbostream_replay_rate_records_per_second", "achieved {{instance}}"),
                        q("mbostream_replay_target_rate_records_per_second", "target {{instance}}"),
                    ),
                    "ops",
                ),
                chart(
                    "Replay running",
                    "1 while the replay runs; 0 when paused, finished or stopped (FeedStalled only pages a running one).",
                    "mbostream_replay_running", unit="none", kind="stat",
                ),
                chart(
                    "Ready (SERVING)",
                    "1 while the process answers health checks with SERVING.",
                    "mbostream_serving", BY_PROCESS, unit="none", kind="stat",
                ),
            ),
        ),
        (
            "Cost",
            (
                chart(
                    "Apply time per batch (p99)",
                    "Time the engine takes to apply one replay batch to the books.",
                    p99("mbostream_apply_seconds", "instance"), unit="s",
                ),
                chart(
                    "Publish time per batch (p99)",
                    "Time the hub takes to hand one batch to every subscriber and sink.",
                    p99("mbostream_publish_seconds", "instance"), unit="s",
                ),
                chart(
                    "Time spent waiting for storage",
                    "Share of time the replay waited for a storage sink that could not keep up (backpressure).",
                    f"rate(mbostream_replay_sink_wait_seconds_total[{RATE}])", unit="percentunit",
                ),
                per_second(
                    "Book anomalies",
                    "Records the engine could not apply literally, by kind (a data problem, not a server one).",
                    "mbostream_book_anomalies_total", "{{kind}}", by="kind",
                ),
            ),
        ),
        (
            "Processes",
            (
                chart(
                    "CPU",
                    "CPU seconds per second of each mbostream process (1 = one core).",
                    f"rate(process_cpu_seconds_total{{job=~\"mbostream.*\"}}[{RATE}])", BY_PROCESS, unit="percentunit",
                ),
                chart(
                    "Resident memory",
                    "Resident set size of each mbostream process.",
                    'process_resident_memory_bytes{job=~"mbostream.*"}', BY_PROCESS, unit="bytes",
                ),
                chart(
                    "Scrape targets up",
                    "1 when Prometheus scraped the process at its last attempt.",
                    'up{job=~"mbostream.*"}', BY_PROCESS, unit="none", kind="stat", width=24,
                ),
            ),
        ),
    ),
)

LATENCY = Board(
    uid="mbostream-latency",
    title="mbostream / Latency and freshness",
    description="Do clients get fresh books? Book age and publish-to-client latency, measured at stream write completion, against the SLO (docs/slo.md).",
    rows=(
        (
            "Freshness SLO (99% of book messages at most 250 ms old)",
            (
                Chart(
                    "Book messages within 250 ms",
                    "Share of StreamBook messages written to the client at most 250 ms after the book was taken (SLO: 99%).",
                    (q("1 - mbostream:book_age_over_slo:ratio_rate5m", "5m"), q("1 - mbostream:book_age_over_slo:ratio_rate1h", "1h")),
                    "percentunit",
                ),
                Chart(
                    "Freshness budget burn rate",
                    "How fast the error budget is spent (1 = exactly the budget over 30 days; the page fires at 14.4 over 1h and 5m).",
                    (
                        q("mbostream:book_age_over_slo:ratio_rate1h / 0.01", "1h"),
                        q("mbostream:book_age_over_slo:ratio_rate6h / 0.01", "6h"),
                    ),
                    "none",
                ),
            ),
        ),
        (
            "Book age",
            (
                Chart(
                    "Book age (p50, p90, p99)",
                    "From the moment the hub took a book (ts_out) to the completed write of its message to the client.",
                    quantiles("mbostream_book_age_seconds"),
                    "s",
                ),
                chart(
                    "Book age distribution",
                    "Book messages per age bucket over time.",
                    f"sum by (le) (increase(mbostream_book_age_seconds_bucket[{RATE}]))", "{{le}}", unit="s", kind="heatmap",
                ),
                Chart(
                    "Book refresh interval",
                    "The book channels' refresh interval in force (the configured one, stretched while the server is over its CPU target or its event loop runs late), and the one achieved (1 / the rate of completed refreshes).",
                    (
                        q("mbostream_book_refresh_interval_seconds", "in force {{instance}}"),
                        q(f"1 / rate(mbostream_book_refreshes_total[{RATE}])", "achieved {{instance}}"),
                    ),
                    "s",
                ),
                Chart(
                    "Event loop lag (p50, p90, p99)",
                    "How late the book ticker woke up for each refresh phase, beyond the selector's millisecond. A stall here makes a refresh late for every book stream; the refresh interval stretches when the loop serves book streams itself.",
                    quantiles("mbostream_event_loop_lag_seconds"),
                    "s",
                ),
                per_second(
                    "Book port writes",
                    "Writes to client sockets on the native book port: one per connection per refresh, whatever the number of calls it carries (behind the edge, Envoy's few upstream connections).",
                    "mbostream_book_transport_writes_total",
                ),
                chart(
                    "Book age p99 per process",
                    "The SLO threshold is 250 ms.",
                    p99("mbostream_book_age_seconds", "role, instance"), BY_PROCESS, unit="s",
                ),
            ),
        ),
        (
            "Events",
            (
                Chart(
                    "Publish to client, StreamEvents (p50, p90, p99)",
                    "From a batch's publish (ts_out) to the completed write of its message to the client.",
                    quantiles("mbostream_publish_to_client_seconds"),
                    "s",
                ),
                chart(
                    "Unary RPC duration (p99)",
                    "GetBook and ListInstruments, and the replay controls, as the server measures them.",
                    p99("mbostream_rpc_seconds", "method", '{method!~"Stream.*|Check|Watch"}'), "{{method}}", unit="s",
                ),
            ),
        ),
    ),
)

CLIENTS = Board(
    uid="mbostream-clients",
    title="mbostream / Clients",
    description="Who is connected and how they fare: streams, RPC outcomes, the availability SLO, slow readers and conflation.",
    rows=(
        (
            "Streams and RPCs",
            (
                chart(
                    "Open streams",
                    "Open StreamEvents and StreamBook streams per process.",
                    "mbostream_subscribers", "{{stream}} {{instance}}", unit="short",
                ),
                chart(
                    "RPCs and streams ended, by method and code",
                    "Finished calls per second (streams count when they end); health checks left out.",
                    "mbostream:rpcs:rate5m", "{{method}} {{code}}", unit="reqps",
                ),
                Chart(
                    "Server errors (availability SLI)",
                    "Share of RPCs and streams that ended with UNKNOWN, INTERNAL or DATA_LOSS (SLO: at most 0.1%).",
                    (q("mbostream:rpc_errors:ratio_rate5m", "5m"), q("mbostream:rpc_errors:ratio_rate1h", "1h")),
                    "percentunit",
                ),
                Chart(
                    "Availability budget burn rate",
                    "1 = the budget spent exactly over 30 days; the page fires at 14.4 over 1h and 5m.",
                    (q("mbostream:rpc_errors:ratio_rate1h / 0.001", "1h"), q("mbostream:rpc_errors:ratio_rate6h / 0.001", "6h")),
                    "none",
                ),
            ),
        ),
        (
            "Slow clients",
            (
                chart(
                    "Slow readers cut off",
                    "StreamEvents clients cut off for falling further behind than their buffer (they resume).",
                    f"sum by (role, instance) (increase(mbostream_slow_reader_disconnects_total[{RATE}]))", BY_PROCESS, unit="short",
                ),
                chart(
                    "Deepest StreamEvents queue",
                    "Batches waiting in the fullest event subscriber's queue.",
                    "mbostream_events_queue_depth_max", unit="short",
                ),
                per_second(
                    "Book updates conflated",
                    "Book updates a slow StreamBook client skipped because a newer book replaced them.",
                    "mbostream_book_updates_conflated_total",
                ),
                per_second(
                    "Event batches coalesced for catching-up readers",
                    "Replay batches merged into an earlier message for a StreamEvents reader that fell behind.",
                    "mbostream_events_coalesced_batches_total",
                ),
            ),
        ),
    ),
)

STORAGE = Board(
    uid="mbostream-storage",
    title="mbostream / Storage",
    description="Does the data reach InfluxDB? Write throughput, latency and errors, the spool's backlog and age.",
    rows=(
        (
            "Writes",
            (
                per_second(
                    "Points written per second",
                    "Points InfluxDB acknowledged (a re-sent point counts again).",
                    "mbostream_storage_points_written_total",
                ),
                chart(
                    "Write latency (p99)",
                    "Latency of write requests InfluxDB acknowledged.",
                    p99("mbostream_storage_write_latency_seconds", "instance"), unit="s",
                ),
                Chart(
                    "Write errors and retries",
                    "Failed write requests and retries after 429/5xx/connection errors (data kept).",
                    (
                        q(f"sum by (instance) (rate(mbostream_storage_write_errors_total[{RATE}]))", "errors {{instance}}"),
                        q(f"sum by (instance) (rate(mbostream_storage_write_retries_total[{RATE}]))", "retries {{instance}}"),
                    ),
                    "reqps",
                ),
                Chart(
                    "Points rejected or dropped",
                    "Rejected as bad data (set aside in rejected.lp) and dropped because the spool was full (data lost).",
                    (
                        q(f"sum by (instance) (rate(mbostream_storage_points_rejected_total[{RATE}]))", "rejected {{instance}}"),
                        q(f"sum by (instance) (rate(mbostream_storage_points_dropped_spool_full_total[{RATE}]))", "dropped {{instance}}"),
                    ),
                    "ops",
                ),
            ),
        ),
        (
            "Backlog",
            (
                chart(
                    "Spool size",
                    "Bytes on disk waiting for InfluxDB (MBOSTREAM_SPOOL_MAX_BYTES caps it).",
                    "mbostream_storage_spool_bytes", unit="bytes",
                ),
                chart(
                    "Spool age",
                    "Age of the oldest spooled data (the StorageBacklog alert fires over 5 minutes).",
                    "mbostream_storage_spool_oldest_age_seconds", unit="s",
                ),
                chart(
                    "Formatting queue",
                    "Bytes handed to the line-protocol thread and not yet formatted (MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES makes the replay wait).",
                    "mbostream_storage_format_queue_bytes", unit="bytes",
                ),
                chart(
                    "Replay waiting for storage",
                    "Share of time the replay waited for the storage backlog to shrink.",
                    f"rate(mbostream_replay_sink_wait_seconds_total[{RATE}])", unit="percentunit",
                ),
            ),
        ),
    ),
)

BUS = Board(
    uid="mbostream-bus",
    title="mbostream / Bus",
    description="The scale-out bus (NATS JetStream): the replay publishes, gateways and stores consume. Lag, redeliveries, resumes, readiness per role.",
    rows=(
        (
            "Flow and lag",
            (
                Chart(
                    "Batches published and consumed per second",
                    "Published by the replay role; consumed by each gateway and store.",
                    (
                        q(f"sum by (role, instance) (rate(mbostream_bus_messages_published_total[{RATE}]))", "published " + BY_PROCESS),
                        q(f"sum by (role, instance) (rate(mbostream_bus_messages_consumed_total[{RATE}]))", "consumed " + BY_PROCESS),
                    ),
                    "ops",
                ),
                chart(
                    "Bus lag (time)",
                    "Wall clock minus the publish time of the last batch each consumer got (BusLagHigh over 5 s).",
                    "mbostream_bus_lag_seconds", BY_PROCESS, unit="s",
                ),
                chart(
                    "Bus lag (messages pending)",
                    "Messages the stream holds that each consumer has not received yet.",
                    "mbostream_bus_pending_messages", BY_PROCESS, unit="short",
                ),
                per_second(
                    "Redeliveries",
                    "Messages delivered more than once (late or lost acknowledgements).",
                    "mbostream_bus_redeliveries_total", BY_PROCESS, by="role, instance",
                ),
                Chart(
                    "Duplicates dropped, gaps and resyncs (gateways)",
                    "Record messages a gateway dropped as already applied, gaps in the replay positions it saw, "
                    "and the resyncs in place from the snapshots that each gap starts.",
                    (
                        q(f"sum by (instance) (increase(mbostream_bus_duplicates_dropped_total[{RATE}]))", "duplicates {{instance}}"),
                        q(f"sum by (instance) (increase(mbostream_bus_gaps_total[{RATE}]))", "gaps {{instance}}"),
                        q(f"sum by (instance) (increase(mbostream_bus_resyncs_total[{RATE}]))", "resyncs {{instance}}"),
                    ),
                    "short",
                    width=24,
                ),
            ),
        ),
        (
            "Gateways",
            (
                per_second(
                    "Resumes by source",
                    "StreamEvents resumes served from a gateway's memory or from the bus.",
                    "mbostream_resumes_total", "{{source}}", by="source",
                ),
                chart(
                    "Ready per role",
                    "Processes answering health checks with SERVING, per role.",
                    "sum by (role) (mbostream_serving)", "{{role}}", unit="short",
                ),
            ),
        ),
    ),
)

BOARDS: Final = (FEED, LATENCY, CLIENTS, STORAGE, BUS)


def _panel(chart: Chart, panel_id: int) -> TimeseriesPanel | StatPanel | HeatmapPanel:
    builder: TimeseriesPanel | StatPanel | HeatmapPanel
    if chart.kind == "stat":
        builder = StatPanel().reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    elif chart.kind == "heatmap":
        # Prometheus histograms arrive bucketed (format=heatmap): Grafana must not re-bucket them.
        builder = HeatmapPanel().calculate(False).show_legend()
    else:
        legend = VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM).show_legend(True)
        builder = TimeseriesPanel().legend(legend)
    builder = builder.id(panel_id).title(chart.title).description(chart.description).datasource(PROMETHEUS)
    builder = builder.height(HEIGHT).span(chart.width).unit(chart.unit)
    for index, query in enumerate(chart.queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).range()
        if query.legend:
            target = target.legend_format(query.legend)
        if chart.kind == "heatmap":
            target = target.format(PromQueryFormat.HEATMAP)
        builder = builder.with_target(target)
    return builder


def build(board: Board) -> dict[str, object]:
    """The dashboard's JSON model, as Grafana's provisioning loads it."""
    dashboard = (
        Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("utc")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    panel_id = 1
    for title, charts in board.rows:
        dashboard = dashboard.with_row(Row(title).id(panel_id))
        panel_id += 1
        for chart in charts:
            dashboard = dashboard.with_panel(_panel(chart, panel_id))
            panel_id += 1
    encoded: dict[str, object] = json.loads(JSONEncoder(sort_keys=True).encode(dashboard.build()))
    return encoded


def render(board: Board) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail with a diff when the checked-in JSON is stale")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON files are (default: %(default)s)")
    args = parser.parse_args(argv)
    wanted = {f"{board.uid}.json": render(board) for board in BOARDS}
    stale = False
    for name, text in wanted.items():
        path = args.out / name
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale = True
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), f"{path} (generated)"))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in wanted) if args.out.exists() else []
    if extra:
        stale = True
        print(f"not generated by {Path(__file__).name} (remove them): {', '.join(extra)}", file=sys.stderr)
    if stale:
        print("dashboards are stale: run .venv/bin/python observability/grafana/generate.py and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
