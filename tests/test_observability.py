"""Metrics, rules and dashboards against real parts: a running server's scrape checked by promtool,
the alert and recording rules unit-tested by promtool (and a rule broken on purpose caught), a real
Prometheus scraping the server and evaluating the rules, and every dashboard panel's metric names
found in the scrape (or, for the bus roles' metrics, in mbostream.metrics).

promtool and prometheus are Debian's ``prometheus`` package, installed by scripts/bootstrap-dev.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
import yaml
from influx.harness import Process
from prometheus_client import Counter, Gauge, Histogram
from server_harness import ServeProcess, repo

from mbostream.bus import metrics as bus_metrics
from mbostream.metrics import METRICS
from mbostream_core.v1 import market_data_pb2 as pb
from mbostream_core.v1 import market_data_pb2_grpc

OBSERVABILITY: Final = repo() / "observability"
PROMETHEUS_DIR: Final = OBSERVABILITY / "prometheus"
RULE_FILES: Final = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS: Final = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARDS: Final = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
#: Exported by the bus roles (mbostream replay|gateway|store), not by the all-in-one server a test
#: starts: checked against the metrics mbostream.metrics defines, not against a scrape.
BUS_ROLE_METRICS: Final = frozenset(
    {
        "mbostream_bus_messages_published_total",
        "mbostream_bus_messages_consumed_total",
        "mbostream_bus_redeliveries_total",
        "mbostream_bus_pending_messages",
        "mbostream_bus_lag_seconds",
        "mbostream_resumes_total",
        "mbostream_bus_duplicates_dropped_total",
        "mbostream_bus_gaps_total",
        "mbostream_bus_resyncs_total",
    }
)
#: Labelled series that appear with their first label value, which the test's server never has:
#: checked against mbostream.metrics only.
FIRST_USE_METRICS: Final = frozenset({"mbostream_book_anomalies_total"})  # the generated sample has no anomaly
#: Prometheus's own series, present for every target it scrapes.
PROMETHEUS_SERIES: Final = frozenset({"up", "scrape_duration_seconds", "ALERTS"})
_PROMQL_WORDS: Final = frozenset(
    """sum avg min max count stddev stdvar topk bottomk quantile count_values group by without on ignoring
    group_left group_right bool and or unless offset rate irate increase delta idelta deriv
    histogram_quantile abs ceil floor round clamp clamp_min clamp_max vector scalar time timestamp
    label_replace label_join absent absent_over_time sort sort_desc changes resets predict_linear
    avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time
    quantile_over_time stddev_over_time present_over_time ln log2 log10 exp sqrt inf nan""".split()
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/bootstrap-dev (Debian package prometheus)"
    return path


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (Grafana's ``$__`` variables and label sets removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, label_replace args)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery windows
    expr = re.sub(r"\$\w+", " ", expr)
    words = re.findall(r"(?<![\w.:])[A-Za-z_:][\w:]*", expr)
    return {w for w in words if w not in _PROMQL_WORDS}


def test_metric_names_parses_what_dashboards_write() -> None:
    expr = 'sum by (le) (rate(mbostream_x_bucket{le="0.25", job=~"$job"}[$__rate_interval])) / on (job) group_left up or vector(0)'
    assert metric_names(expr) == {"mbostream_x_bucket", "up"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def _exercise(address: str) -> None:
    """Every RPC kind once, an error among them, so their series exist in the scrape."""
    with grpc.insecure_channel(address) as channel:
        stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
        stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=10)
        for _ in itertools.islice(stub.StreamBook(pb.StreamBookRequest(depth=5), timeout=10), 40):
            pass
        for _ in itertools.islice(stub.StreamEvents(pb.StreamEventsRequest(), timeout=10), 40):
            pass
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetBook(pb.GetBookRequest(symbol="NO-SUCH-SYMBOL"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A real ``mbostream serve`` with metrics and storage on (InfluxDB unreachable: it spools)."""
    tmp = tmp_path_factory.mktemp("observed")
    proc = ServeProcess(
        "--metrics-port",
        "0",
        "--loop",
        log_path=tmp / "serve.log",
        env={
            "MBOSTREAM_SAMPLE_RECORDS": "200000",
            "MBOSTREAM_STORE": "true",
            "INFLUX_URL": f"http://127.0.0.1:{_free_port()}",
            "INFLUX_TOKEN": "unused",
            "INFLUX_ORG": "mbostream",
            "INFLUX_BUCKET": "mbostream",
            "MBOSTREAM_SPOOL_DIR": str(tmp / "spool"),
        },
    ).start()
    try:
        _exercise(proc.address)
        yield proc
    finally:
        proc.stop()


#: The outcomes of _exercise's calls as the scrape counts them: the deliberate NOT_FOUND, and the
#: StreamBook the client cancelled.
GETBOOK_NOT_FOUND: Final = 'mbostream_rpcs_total{code="NOT_FOUND",method="GetBook"} 1.0'
STREAMBOOK_CANCELLED: Final = re.compile(r'mbostream_rpcs_total\{code="CANCELLED",method="StreamBook"\} [1-9]')
#: How long the scrape waits for the server to have counted them.
COUNTED_WITHIN_SECONDS: Final = 10.0


@pytest.fixture(scope="module")
def scrape(server: ServeProcess) -> str:
    """The scrape once the server has counted _exercise's calls (or after COUNTED_WITHIN_SECONDS, as
    it is then). A call's status reaches the client before the server counts it: grpc.aio's
    ``context.abort`` sends the status, then raises into the interceptor that counts; a cancelled
    stream is counted when the server notices. On a busy machine the first scrape came between the
    two (the count missing from a scrape taken right after the client saw NOT_FOUND)."""
    deadline = time.monotonic() + COUNTED_WITHIN_SECONDS
    while True:
        text = _get(f"http://127.0.0.1:{server.metrics_port}/metrics")
        if (GETBOOK_NOT_FOUND in text and STREAMBOOK_CANCELLED.search(text)) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _scraped_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_promtool_check_metrics_on_a_live_scrape_is_clean(scrape: str) -> None:
    result = subprocess.run([_tool("promtool"), "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def test_the_scrape_has_what_an_operator_asks_for(scrape: str) -> None:
    names = _scraped_names(scrape)
    for name in (
        "mbostream_records_ingested_total",
        "mbostream_rpcs_total",
        "mbostream_publish_to_client_seconds_bucket",
        "mbostream_book_age_seconds_bucket",
        "mbostream_book_updates_conflated_total",
        "mbostream_slow_reader_disconnects_total",
        "mbostream_serving",
        "mbostream_replay_running",
        "mbostream_storage_spool_bytes",
        "mbostream_storage_spool_oldest_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    # Streams counted by RPC and outcome; the deliberate NOT_FOUND among them.
    assert GETBOOK_NOT_FOUND in scrape
    assert STREAMBOOK_CANCELLED.search(scrape)
    # The streams' first messages were measured at write completion (sampled: the first always).
    assert re.search(r"^mbostream_book_age_seconds_count [1-9]", scrape, re.M)
    assert re.search(r"^mbostream_publish_to_client_seconds_count [1-9]", scrape, re.M)
    assert re.search(r"^mbostream_serving 1\.0$", scrape, re.M)


def test_every_counter_is_total_and_every_label_bounded() -> None:
    """Names the code defines: counters end in _total once exported, no label carries an id."""
    unbounded = {"symbol", "instrument_id", "client", "peer", "order_id", "trace_id"}
    for name, metric in vars(METRICS).items():
        assert metric._name.startswith("mbostream_"), name
        assert not set(metric._labelnames) & unbounded, name
        kind = type(metric).__name__
        if kind == "Counter":
            assert not metric._name.endswith("_total"), f"{name}: prometheus_client appends _total itself"
        for unit in ("_ms", "_milliseconds", "_us", "_kb", "_mb"):
            assert unit not in metric._name, f"{name}: use base units"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _tool("promtool")
    assert RULE_FILES and RULE_TESTS
    checked = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = subprocess.run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert config.returncode == 0 and f"SUCCESS: {len(RULE_FILES)} rule files found" in config.stdout, config.stdout + config.stderr
    tested = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=240)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(RULE_TESTS)


def _alert_names() -> list[str]:
    return [rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_a_runbook_section_and_a_severity() -> None:
    tests = "\n".join(path.read_text() for path in RULE_TESTS)
    runbook = (repo() / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9]", "", h.lower()) for h in re.findall(r"^## (.+)$", runbook, re.M)}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                assert re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels", tests), f"{name}: no firing unit test"
                assert rule["labels"]["severity"] in ("page", "ticket"), name
                assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name
                assert name.lower() in headings, f"{name}: no section in docs/operations.md"


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        ("mbostream-alerts.yml", "> 14.4 * 0.001", "> 14.4 * 0.1"),  # a page that would never fire
        ("mbostream-alerts.yml", "mbostream_serving == 0", "mbostream_serving == 1"),  # inverted readiness
        ("mbostream-recording.yml", 'code=~"UNKNOWN|INTERNAL|DATA_LOSS"', 'code=~"UNKNOWN|DATA_LOSS"'),  # errors left out
    ],
)
def test_a_rule_broken_on_purpose_fails_its_unit_test(tmp_path: Path, rule: str, old: str, new: str) -> None:
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    target = tmp_path / "prometheus" / "rules" / rule
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    tests = sorted((tmp_path / "prometheus" / "tests").glob("*.yml"))
    result = subprocess.run([_tool("promtool"), "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=240)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


def _prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _eventually(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(server: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the server every second and evaluating the rules every second."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "mbostream",
                "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"], "labels": {"role": "server"}}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    process = Process(
        "prometheus",
        [
            _tool("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.running, process.log_tail()
            try:
                return "Ready" in _get(f"{base}/-/ready", timeout=2)
            except OSError:
                return False

        _eventually(ready, "Prometheus ready")
        yield base
    finally:
        process.stop()


def test_a_real_prometheus_scrapes_the_server_and_evaluates_the_rules(prometheus: str, server: ServeProcess) -> None:
    up = _eventually(lambda: [s for s in _prometheus_query(prometheus, 'up{job="mbostream"}') if s["value"][1] == "1"], "up == 1")
    assert up[0]["metric"]["role"] == "server"
    # A recording rule's series: the feed rate, from two scrapes of the looping replay.
    rate = _eventually(
        lambda: [s for s in _prometheus_query(prometheus, "mbostream:records_ingested:rate1m") if float(s["value"][1]) > 0],
        "a positive mbostream:records_ingested:rate1m",
    )
    assert rate[0]["metric"] == {
        "__name__": "mbostream:records_ingested:rate1m",
        "instance": f"127.0.0.1:{server.metrics_port}",
        "job": "mbostream",
        "role": "server",
    }
    # The availability SLI over RPCs made while Prometheus watches (before, no rate: 0/0 is NaN):
    # they end OK, CANCELLED or NOT_FOUND, none a server error.
    _exercise(server.address)
    errors = _eventually(
        lambda: [s for s in _prometheus_query(prometheus, "mbostream:rpc_errors:ratio_rate5m") if s["value"][1] != "NaN"],
        "a numeric error ratio",
    )
    assert float(errors[0]["value"][1]) == 0
    groups = json.loads(_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert set(_alert_names()) <= loaded
    unhealthy = [(rule["name"], rule.get("lastError")) for group in groups for rule in group["rules"] if rule["health"] not in ("ok", "unknown")]
    assert not unhealthy
    # A running, looping replay is not stalled and the server is ready: nothing of that fires.
    firing = {s["metric"]["alertname"] for s in _prometheus_query(prometheus, 'ALERTS{alertstate="firing"}')}
    assert not firing & {"MbostreamFeedStalled", "MbostreamNotReady", "MbostreamTargetDown"}


def _panel_queries() -> Iterator[tuple[str, str, str]]:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target.get("datasource", panel.get("datasource", {})).get("type") == "prometheus":
                    yield path.stem, panel["title"], target["expr"]


def _recorded() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}


def _defined_names() -> set[str]:
    """Every series name mbostream.metrics and the bus's metrics module define, as exported
    (counters with _total, histograms' parts)."""
    names = set()
    defined = [*vars(METRICS).values(), *(m for m in vars(bus_metrics).values() if isinstance(m, Counter | Gauge | Histogram))]
    for metric in defined:
        kind = type(metric).__name__
        base = metric._name
        if kind == "Counter":
            names.add(base + "_total")
        elif kind == "Histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        else:
            names.add(base)
    return names


def test_every_panel_query_reads_metrics_that_exist(scrape: str) -> None:
    """Each dashboard query's series names are in a live scrape of the server, Prometheus's own
    series, or a recording rule whose own names are; the bus roles' names and first-use labelled
    series only in mbostream.metrics (statically: no bus runs here)."""
    assert DASHBOARDS, "no dashboards: run observability/grafana/generate.py"
    scraped = _scraped_names(scrape)
    recorded = _recorded()
    defined = _defined_names()
    assert BUS_ROLE_METRICS | FIRST_USE_METRICS <= defined
    checked = 0
    for dashboard, title, expr in _panel_queries():
        names = metric_names(expr)
        assert names, f"{dashboard} / {title}: no metric in {expr!r}"
        for name in names:
            sources = [metric_names(recorded[name])] if name in recorded else [{name}]
            for source in sources:
                missing = {n for n in source if n not in scraped | PROMETHEUS_SERIES | BUS_ROLE_METRICS | FIRST_USE_METRICS}
                assert not missing, f"{dashboard} / {title}: {sorted(missing)} not in a live scrape ({expr!r})"
        checked += 1
    assert checked >= 20


def test_every_rule_reads_metrics_that_exist(scrape: str) -> None:
    scraped, recorded = _scraped_names(scrape), _recorded()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for name in metric_names(rule["expr"]):
                    known = name in scraped or name in recorded or name in PROMETHEUS_SERIES or name in BUS_ROLE_METRICS
                    assert known, f"{rule.get('alert') or rule.get('record')}: {name} is neither scraped nor recorded"
