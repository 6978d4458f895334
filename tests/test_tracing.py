"""Traces: off unless the OTEL_* environment asks; span ids in the JSON logs; and one trace that
crosses Envoy and the server, received by a real OpenTelemetry Collector (built by
scripts/install-otelcol with the official builder) and read back from its file exporter."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from influx.harness import Process
from opentelemetry.sdk.trace import TracerProvider
from server_harness import ServeProcess, free_port, repo

from mbostream import tracing
from mbostream.errors import ConfigError
from mbostream.logs import JsonFormatter
from mbostream_client import MarketDataClient
from mbostream_core.v1 import market_data_pb2 as pb
from mbostream_core.v1 import market_data_pb2_grpc

SPANS_TIMEOUT: Final = 45.0


def test_tracing_is_off_by_default_and_follows_the_otel_variables() -> None:
    assert not tracing.enabled_by({})
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.enabled_by({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        tracing.enabled_by({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.enabled_by({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert tracing.otlp_endpoint({}) is None
    assert tracing.otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == ("collector", 4317)
    assert tracing.otlp_endpoint({"OTEL_TRACES_EXPORTER": "otlp"}) == ("localhost", 4317)


def test_json_log_lines_carry_the_current_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")  # the real SDK, not installed globally
    formatter = JsonFormatter()

    def line() -> dict[str, Any]:
        record = logging.LogRecord("mbostream.test", logging.INFO, __file__, 1, "hello", (), None)
        out: dict[str, Any] = json.loads(formatter.format(record))
        return out

    with tracer.start_as_current_span("rpc") as span:
        inside = line()
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in line()


def _otelcol() -> str:
    """The collector scripts/install-otelcol built (it builds nothing when cached), or $MBOSTREAM_OTELCOL."""
    if os.environ.get("MBOSTREAM_OTELCOL"):
        return os.environ["MBOSTREAM_OTELCOL"]
    result = subprocess.run([str(repo() / "scripts" / "install-otelcol")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real OpenTelemetry Collector: OTLP/gRPC in on a free port, spans out to a JSON-lines file."""
    port = free_port()
    spans = tmp_path / "spans.jsonl"
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "exporters": {"file": {"path": str(spans), "flush_interval": "100ms"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
        },
    }
    (tmp_path / "otelcol.json").write_text(json.dumps(config))
    # A JSON file is YAML: the collector's file provider reads it as its config.
    process = Process("otelcol", [_otelcol(), f"--config=file:{tmp_path / 'otelcol.json'}"], tmp_path / "otelcol.log")
    process.start()
    try:
        deadline = time.monotonic() + 30
        while "Everything is ready" not in process.log_tail(100_000):
            assert process.running and time.monotonic() < deadline, process.log_tail()
            time.sleep(0.1)
        yield port, spans
    finally:
        process.stop()


def _spans(path: Path) -> list[dict[str, Any]]:
    """Every span the file exporter wrote, with its service's name."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        for resource in json.loads(line).get("resourceSpans", []):
            attributes = {a["key"]: a["value"].get("stringValue") for a in resource["resource"].get("attributes", [])}
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    out.append({**span, "service": attributes.get("service.name")})
    return out


def _trace(path: Path, trace_id: str, *, server_span: str) -> list[dict[str, Any]]:
    """The trace's spans once both Envoy's and the server's ``server_span`` are in (bounded wait)."""
    deadline = time.monotonic() + SPANS_TIMEOUT
    while True:
        spans = [s for s in _spans(path) if s["traceId"] == trace_id]
        services = {s["service"] for s in spans}
        if "mbostream-edge" in services and any(s["service"] == "mbostream" and s["name"] == server_span for s in spans):
            return spans
        if time.monotonic() > deadline:
            raise TimeoutError(f"no trace {trace_id} with spans of Envoy and {server_span} within {SPANS_TIMEOUT} s: {spans}")
        time.sleep(0.2)


def _attribute(span: dict[str, Any], key: str) -> Any:
    for attribute in span.get("attributes", []):
        if attribute["key"] == key:
            return next(iter(attribute["value"].values()))
    return None


def test_one_trace_crosses_envoy_and_the_server(collector: tuple[int, Path], generated_small: Path, tmp_path: Path) -> None:
    port, spans_file = collector
    run = ServeProcess(
        str(generated_small),
        "--rate",
        "20000",
        "--loop",
        "--edge-port",
        "0",
        command="run",
        log_path=tmp_path / "run.log",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    ).start()
    try:
        edge = run.url.removeprefix("http://").rstrip("/")
        client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
        stream_trace = secrets.token_hex(16)
        with grpc.insecure_channel(edge) as channel:
            stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
            # A client that traces its call (as the browser and the clients do) sends traceparent.
            stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=10, metadata=(("traceparent", f"00-{client_trace}-{client_span}-01"),))
            stream = stub.StreamBook(
                pb.StreamBookRequest(depth=3), timeout=30, metadata=(("traceparent", f"00-{stream_trace}-{secrets.token_hex(8)}-01"),)
            )
            for _ in itertools.islice(stream, 3):
                pass
            stream.cancel()
        # A browser on another allowed origin (the Vite dev server) may send traceparent with gRPC-Web.
        preflight = http.client.HTTPConnection(edge, timeout=10)
        preflight.request(
            "OPTIONS",
            "/mbostream.v1.MarketDataService/ListInstruments",
            headers={
                "Origin": run.url.rstrip("/"),
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-grpc-web,traceparent",
            },
        )
        allowed = preflight.getresponse().getheader("access-control-allow-headers", "")
        preflight.close()
        assert "traceparent" in allowed and "tracestate" in allowed, allowed
        unary = _trace(spans_file, client_trace, server_span="mbostream.v1.MarketDataService/ListInstruments")
        streamed = _trace(spans_file, stream_trace, server_span="mbostream.v1.MarketDataService/StreamBook")
    finally:
        run.stop()
    envoy = [s for s in unary if s["service"] == "mbostream-edge"]
    server = [s for s in unary if s["service"] == "mbostream"]
    # Envoy continued the client's trace; the server continued Envoy's span, not the client's.
    assert any(s.get("parentSpanId") == client_span for s in envoy), envoy
    assert len(server) == 1
    assert server[0]["parentSpanId"] in {s["spanId"] for s in envoy}
    assert server[0]["kind"] == 2  # SERVER
    assert _attribute(server[0], "rpc.grpc.status_code") == "0"
    # A stream's span covers it until it ends (here: cancelled by the client, CANCELLED = 1).
    book = next(s for s in streamed if s["service"] == "mbostream")
    assert _attribute(book, "rpc.grpc.status_code") == "1"
    assert book["parentSpanId"] in {s["spanId"] for s in streamed if s["service"] == "mbostream-edge"}
    # Health checks (Envoy's, every 2 s) are not traced.
    assert not [s for s in _spans(spans_file) if "grpc.health" in s["name"]]


def _python_client_traces(edge: str) -> tuple[str, tuple[str, str]]:
    """Two ListInstruments calls of the Python client through ``edge``: one with ``trace=True`` (the
    client starts the trace; its id), one inside a current OpenTelemetry span (the client continues
    it; the span's trace and span ids)."""
    tracer = TracerProvider().get_tracer("test")  # the real SDK, not installed globally

    async def calls() -> tuple[str, tuple[str, str]]:
        async with MarketDataClient(edge, trace=True, timeout=10) as client:
            await client.list_instruments()
            started = client.last_trace_id
            assert started is not None
            with tracer.start_as_current_span("caller") as span:
                await client.list_instruments()
            assert client.last_trace_id == started  # the caller's span was continued, not a new trace
        context = span.get_span_context()
        return started, (format(context.trace_id, "032x"), format(context.span_id, "016x"))

    return asyncio.run(asyncio.wait_for(calls(), 30))


def _go_client_trace(edge: str, out: Path) -> str:
    """One ListInstruments call of the Go client (WithTraceparent) through ``edge``: the trace id it logged."""
    binary = out / "tracedcall"
    subprocess.run(
        ["go", "build", "-buildvcs=false", "-o", str(binary), "./internal/tracedcall"],
        cwd=repo() / "clients" / "go", check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    result = subprocess.run([str(binary), edge], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    started = [json.loads(line) for line in result.stderr.splitlines() if '"trace started"' in line]
    assert len(started) == 1 and started[0]["method"].endswith("/ListInstruments"), result.stderr
    trace_id: str = started[0]["trace_id"]
    return trace_id


def test_the_python_and_go_clients_calls_are_traces_through_envoy_and_the_server(
    collector: tuple[int, Path], generated_small: Path, tmp_path: Path
) -> None:
    """The clients send traceparent: the trace a client started (Python ``trace=True``, Go
    ``WithTraceparent``) or continued (a current OpenTelemetry span) holds Envoy's and the server's spans."""
    port, spans_file = collector
    run = ServeProcess(
        str(generated_small), "--rate", "20000", "--loop", "--edge-port", "0", command="run", log_path=tmp_path / "run.log",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    ).start()  # fmt: skip
    try:
        edge = run.url.removeprefix("http://").rstrip("/")
        python_started, (python_continued, caller_span) = _python_client_traces(edge)
        go_started = _go_client_trace(edge, tmp_path)
        method = "mbostream.v1.MarketDataService/ListInstruments"
        traces = {name: _trace(spans_file, trace_id, server_span=method) for name, trace_id in
                  (("python", python_started), ("continued", python_continued), ("go", go_started))}  # fmt: skip
    finally:
        run.stop()
    assert len({python_started, python_continued, go_started}) == 3
    for name, spans in traces.items():
        envoy = {s["spanId"] for s in spans if s["service"] == "mbostream-edge"}
        server = [s for s in spans if s["service"] == "mbostream" and s["name"] == method]
        assert len(server) == 1 and server[0]["parentSpanId"] in envoy, (name, spans)
    # Envoy's span is a child of the caller's own span: the client sent that span's context.
    assert any(s.get("parentSpanId") == caller_span for s in traces["continued"] if s["service"] == "mbostream-edge")

def test_the_stacks_collector_config_is_valid_for_the_built_collector() -> None:
    """observability/otelcol/config.yaml (what compose and Kubernetes run) uses only components the
    collector built by scripts/install-otelcol has; a misspelt exporter fails the same check."""
    config = repo() / "observability" / "otelcol" / "config.yaml"
    result = subprocess.run([_otelcol(), "validate", f"--config=file:{config}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = config.read_text().replace("exporters: [debug, file]", "exporters: [debug, zipkin]")
    result = subprocess.run([_otelcol(), "validate", f"--config=yaml:{broken}"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'exporter "zipkin"' in result.stderr, result.stderr


def test_sampled_replay_steps_are_traced_from_the_replayer_through_the_bus_to_a_gateway(
    collector: tuple[int, Path], generated_small: Path, tmp_path: Path
) -> None:
    """A sampled replay step's PRODUCER span (the replayer, ended at the bus's ack) and the
    gateway's CONSUMER span applying that message are one trace: parent and child.

    The replay loops: a gateway that comes up after the replayer's first snapshot round (5 s;
    a loaded machine starts a process that slowly) cold-starts from the snapshots and applies
    none of the steps before them, so only steps published after it is live can be traced."""
    from nats_harness import nats_server

    port, spans_file = collector
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with nats_server(tmp_path) as nats:
        replay = ServeProcess(
            str(generated_small), "--nats", nats.url, "--no-store", "--rate", "50000", "--loop",
            command="replay", log_path=tmp_path / "replay.log", env={**otel, "OTEL_SERVICE_NAME": "mbostream-replay"},
        ).start()  # fmt: skip
        gateway = ServeProcess(
            "--nats", nats.url, command="gateway", log_path=tmp_path / "gateway.log",
            env={**otel, "OTEL_SERVICE_NAME": "mbostream-gateway"},
        ).start()  # fmt: skip
        try:
            deadline = time.monotonic() + SPANS_TIMEOUT
            while True:
                spans = _spans(spans_file)
                published = {s["spanId"]: s for s in spans if s["service"] == "mbostream-replay" and s["name"] == "mbostream.records publish"}
                applied = [s for s in spans if s["service"] == "mbostream-gateway" and s["name"] == "mbostream.records apply"]
                linked = [s for s in applied if s.get("parentSpanId") in published]
                if linked or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert linked, f"no gateway span under a replayer's publish span: {len(published)} published, {len(applied)} applied"
            child = linked[0]
            parent = published[child["parentSpanId"]]
            assert child["traceId"] == parent["traceId"]
            assert parent["kind"] in (4, "SPAN_KIND_PRODUCER") and child["kind"] in (5, "SPAN_KIND_CONSUMER")
            # The two spans are about the same replay step.
            assert _attribute(child, "mbostream.first_seq") == _attribute(parent, "mbostream.first_seq")
        finally:
            gateway.stop()
            replay.stop()
